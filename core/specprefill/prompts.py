"""Turning a prompt (text, token ids or chat messages) into speculator tokens with protection marks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import EmptyPromptError, PromptError
from specprefill.result import Message
from specprefill.spans import Span, char_spans_to_token_mask, merge_spans

__all__ = [
    "PreparedPrompt",
    "Prompt",
    "check_spans",
    "locate_contents",
    "locate_contents_by_template",
    "message_text",
    "plain_chat",
    "protection_for_messages",
    "scrub_surrogates",
    "validate_messages",
]

Prompt = str | Sequence[int] | Sequence[Message]
"""What ``Speculator.prune`` accepts: text, token ids, or chat messages."""


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as speculator tokens, with what must never be dropped."""

    input_ids: list[int]
    protected: npt.NDArray[np.bool_]
    text: str | None = None
    offsets: list[Span] | None = None
    messages: list[Message] | None = None
    content_spans: list[Span] | None = None


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
