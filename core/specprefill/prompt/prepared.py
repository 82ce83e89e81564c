"""Turning a prompt (text, token ids or chat messages) into speculator tokens with protection marks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import EmptyPromptError, PromptError
from specprefill.result import Message
from specprefill.scoring import select_chunks
from specprefill.spans import Span, char_spans_to_token_mask, cut_spans, join_spans, merge_spans

__all__ = [
    "PreparedPrompt",
    "Prompt",
    "PromptKind",
    "ScoredPrompt",
    "check_spans",
    "cut_messages",
    "locate_contents",
    "locate_contents_by_template",
    "message_text",
    "plain_chat",
    "prompt_kind",
    "protection_for_messages",
    "scrub_surrogates",
    "select_scored",
    "validate_messages",
]

Prompt = str | Sequence[int] | Sequence[Message]
"""What ``Speculator.prune`` accepts: text, token ids, or chat messages."""


PromptKind = Literal["text", "token_ids", "messages"]
"""The three kinds of prompt; :func:`prompt_kind` decides which one a prompt is, once."""


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as speculator tokens, with what must never be dropped."""

    input_ids: list[int]
    """All prompt token ids in the speculator's vocabulary."""
    protected: npt.NDArray[np.bool_]
    """``[N]`` mask of tokens that are never dropped."""
    text: str | None = None
    """The prompt as text (for messages: rendered with the chat template); None for token ids."""
    offsets: list[Span] | None = None
    """Character span of each token in ``text`` (None for token ids)."""
    messages: list[Message] | None = None
    """The validated chat messages (None unless the prompt was messages)."""
    content_spans: list[Span] | None = None
    """Character span of each message content in ``text``."""
    kind: PromptKind = "text"
    """What the caller passed."""


@dataclass(frozen=True)
class ScoredPrompt(PreparedPrompt):
    """A prepared prompt with the speculator's importance, before any selection.

    What :meth:`Speculator.score_prompt <specprefill.speculator.base.Speculator.score_prompt>` returns: feed it to
    :func:`~specprefill.scoring.select_chunks` (with ``segments``) or to ``Speculator.select`` to prune.
    """

    segments: list[int] | None = None
    """Token indices where the chunk grid restarts (None: the paper's grid from token 0)."""
    importance: npt.NDArray[np.float32] | None = None
    """``[N]`` token importance; None when the prompt was not scored (shorter than ``min_prompt_tokens``, or
    the speculator failed and fell back)."""
    speculator_seconds: float = 0.0
    """Wall time of tokenisation and scoring."""
    queries: int = 0
    """Queries that scored the prompt."""
    windows: int = 0
    """Speculator passes (more than 1 when a long prompt was scored in windows)."""
    lookahead_token_ids: list[int] = field(default_factory=list)
    """Tokens the speculator decoded during look-ahead."""
    fallback_reason: str | None = None
    """Why scoring failed and the whole prompt is to be kept (None: no failure)."""
    speculator: str = ""
    """Name of the speculator."""

    @property
    def n_tokens(self) -> int:
        """Prompt length N."""
        return len(self.input_ids)

    @property
    def fallback(self) -> bool:
        """True when the speculator failed and the full prompt is to be used."""
        return self.fallback_reason is not None


def select_scored(
    scored: ScoredPrompt, config: SpecPrefillConfig, *, budget_protected: bool = False
) -> npt.NDArray[np.int64]:
    """Kept token indices: :func:`~specprefill.scoring.select_chunks` with ``config``'s settings.

    Uses the keep rate, chunk size and token cap of ``config``, and ``scored``'s protected tokens and chunk
    grid; ``budget_protected`` is ``protected_count_toward_budget``. An unscored prompt keeps every token.
    """
    if scored.importance is None:
        return np.arange(scored.n_tokens, dtype=np.int64)
    return select_chunks(
        scored.importance,
        keep_rate=config.keep_rate,
        chunk_size=config.chunk_size,
        protected=scored.protected,
        max_kept_tokens=config.max_kept_tokens,
        protected_count_toward_budget=budget_protected,
        segments=scored.segments,
        chunk_context=config.chunk_context,
        context_weight=config.context_weight,
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(text: str) -> str:
    """Replace lone UTF-16 surrogates (which no tokenizer can encode) with U+FFFD.

    Such strings come from ``json.loads`` of a broken escape (backslash-u-d800) or from
    ``errors="surrogateescape"`` decoding. The replacement keeps the length, so character offsets into the
    original stay valid.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def prompt_kind(prompt: object) -> tuple[PromptKind, str | list[Any]]:
    """Decide what a prompt is, once: text, token ids, or chat messages.

    Args:
        prompt: What the caller passed.

    Returns:
        The kind and the prompt itself (a string, or the items as a list; an iterator is read once).

    Raises:
        EmptyPromptError: An empty list.
        PromptError: Bytes, a single message dict, or something that is not a sequence.

    """
    if isinstance(prompt, str):
        return "text", prompt
    if isinstance(prompt, (bytes, bytearray)):
        raise PromptError("the prompt is bytes; decode it first, e.g. data.decode('utf-8', errors='replace')")
    if isinstance(prompt, dict):
        raise PromptError("got a single message dict; pass a list of messages: [{'role': ..., 'content': ...}]")
    if not isinstance(prompt, Iterable):
        raise PromptError(
            f"the prompt must be text, a list of token ids or a list of messages, got {type(prompt).__name__}"
        )
    try:
        items = list(prompt)
    except TypeError as exc:
        raise PromptError(f"the prompt cannot be read as a sequence: {exc}") from exc
    if not items:
        raise EmptyPromptError("the prompt is empty; pass text, token ids or messages")
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in items):
        return "token_ids", items
    return "messages", items


def message_text(message: Message) -> str:
    """The text of a message's content (a string, or a list of ``{"type": "text", "text": ...}`` parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise PromptError(
                    f"unsupported message content part {part!r}: only text parts can be pruned; "
                    "send images and other parts to the base model directly"
                )
        return "".join(parts)
    raise PromptError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def validate_messages(messages: Sequence[Any]) -> list[Message]:
    """Check chat messages and return them as plain dicts with string content.

    Raises:
        EmptyPromptError: No messages, or every message is empty.
        PromptError: A message is not a ``{"role", "content"}`` mapping.

    """
    if len(messages) == 0:
        raise EmptyPromptError("the message list is empty; pass at least one {'role': 'user', 'content': ...}")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PromptError(f"message {i} must be a dict with a string 'role' and a 'content', got {m!r:.80}")
        out.append({**m, "role": scrub_surrogates(m["role"]), "content": scrub_surrogates(message_text(m))})
    if not any(m["content"].strip() for m in out):
        raise EmptyPromptError("every message is empty; give the model something to read")
    return out


def locate_contents(rendered: str, contents: Sequence[str]) -> list[Span]:
    """Find each message content, in order, inside the chat-template rendering.

    Templates sometimes strip white space around contents, so a stripped match is tried too. A content
    that cannot be found gets the empty span ``(p, p)`` at the cursor (it is then treated as template).
    """
    spans: list[Span] = []
    cursor = 0
    for content in contents:
        for candidate in (content, content.strip()):
            pos = rendered.find(candidate, cursor) if candidate else -1
            if pos >= 0:
                spans.append((pos, pos + len(candidate)))
                cursor = pos + len(candidate)
                break
        else:
            spans.append((cursor, cursor))
    return spans


def locate_contents_by_template(
    rendered: str, messages: Sequence[Message], render: Callable[[list[Message]], str]
) -> list[Span]:
    """Exact content spans, found by rendering the chat again with a unique placeholder per content.

    The placeholder rendering gives the template text around every content, so a content that also occurs
    in the template (``"user"``, words of a default system prompt) is not mistaken for it. Falls back to
    :func:`locate_contents` when the template treats placeholders differently from the real contents.
    """
    contents = [str(m["content"]) for m in messages]
    sentinels = [f"\ue000specprefill{i}\ue001" for i in range(len(messages))]
    try:
        skeleton = render([{**m, "content": tag} for m, tag in zip(messages, sentinels, strict=True)])
    except Exception:  # any template failure: fall back to searching the rendering
        skeleton = ""
    spans = _match_skeleton(rendered, contents, skeleton, sentinels) if skeleton else None
    return spans if spans is not None else locate_contents(rendered, contents)


def _match_skeleton(
    rendered: str, contents: Sequence[str], skeleton: str, sentinels: Sequence[str]
) -> list[Span] | None:
    pieces: list[str] = []
    rest = skeleton
    for tag in sentinels:
        if skeleton.count(tag) != 1 or tag not in rest:
            return None
        head, rest = rest.split(tag, 1)
        pieces.append(head)
    pieces.append(rest)
    spans: list[Span] = []
    cursor = 0
    for i, content in enumerate(contents):
        if not rendered.startswith(pieces[i], cursor):
            return None
        cursor += len(pieces[i])
        for candidate in (content, content.strip(), content.lstrip(), content.rstrip()):
            end = cursor + len(candidate)
            if rendered.startswith(candidate, cursor) and rendered.startswith(pieces[i + 1], end):
                spans.append((cursor, end))
                cursor = end
                break
        else:
            return None
    return spans if rendered[cursor:] == pieces[-1] else None


def check_spans(spans: Iterable[object]) -> list[Span]:
    """Validate caller-given ``(start, end)`` character spans.

    Raises:
        PromptError: A span is not a pair of integers.

    """
    out: list[Span] = []
    try:
        items = list(spans)
    except TypeError:
        raise PromptError(f"protected_spans must be a list of (start, end) pairs, got {spans!r:.80}") from None
    for span in items:
        if (
            not isinstance(span, (tuple, list))
            or len(span) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in span)
        ):
            raise PromptError(f"each protected span must be a (start, end) pair of ints, got {span!r:.80}")
        out.append((int(span[0]), int(span[1])))
    return out


def protection_for_messages(
    offsets: Sequence[Span],
    text_length: int,
    messages: Sequence[Message],
    content_spans: Sequence[Span],
    config: SpecPrefillConfig,
) -> npt.NDArray[np.bool_]:
    """Protected-token mask for a rendered chat: template tokens, system prompt, and the final question."""
    n = len(offsets)
    protected = np.zeros(n, dtype=np.bool_)
    if config.protect_template:
        template = _complement(content_spans, text_length)
        protected |= char_spans_to_token_mask(offsets, template)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    for i, (m, span) in enumerate(zip(messages, content_spans, strict=True)):
        tokens = np.flatnonzero(char_spans_to_token_mask(offsets, [span]))
        if m["role"] in ("system", "developer"):
            limit = config.protect_system_tokens
            protected[tokens if limit is None else tokens[:limit]] = True
        elif i == last_user:
            limit = config.protect_question_tokens
            if limit is None:
                protected[tokens] = True
            elif limit > 0:
                protected[tokens[-limit:]] = True
    return protected


def _complement(spans: Sequence[Span], length: int) -> list[Span]:
    out: list[Span] = []
    cursor = 0
    for s, e in merge_spans(spans):
        if s > cursor:
            out.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < length:
        out.append((cursor, length))
    return out


def plain_chat(messages: Sequence[Message]) -> str:
    """A neutral chat layout for models without a chat template: ``Role: content`` blocks, then ``Assistant:``."""
    blocks = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:"])


def cut_messages(
    messages: list[Message], content_spans: list[Span], kept: list[Span], text: str, marker: str
) -> list[Message]:
    """Each message with its content cut down to the kept spans of the rendered ``text`` (joined with ``marker``).

    A message whose content was not found in the rendering (empty window) is passed on unpruned.
    """
    out: list[Message] = []
    for m, window in zip(messages, content_spans, strict=True):
        if window[0] == window[1]:
            # not found in the rendering (the template rewrote or dropped it): pass it on unpruned
            out.append(dict(m))
            continue
        content = text[window[0] : window[1]]
        local = cut_spans(kept, window)
        new = content if local == [(0, len(content))] else join_spans(content, local, marker)
        out.append({**m, "content": new})
    return out
