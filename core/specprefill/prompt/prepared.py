"""What a prompt is, once: text, token ids or chat messages, and the prepared and scored forms of it.

:func:`prompt_kind` decides what a caller passed; :class:`PreparedPrompt` is the prompt as speculator tokens
with what must never be dropped, and its :attr:`~PreparedPrompt.kind` follows from what it holds;
:class:`ScoredPrompt` adds the speculator's importance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from specprefill.errors import EmptyPromptError, PromptError
from specprefill.result import Message
from specprefill.spans import Span

__all__ = ["PreparedPrompt", "Prompt", "PromptKind", "PromptOptions", "ScoredPrompt", "prompt_kind", "scrub_surrogates"]

Prompt = str | Sequence[int] | Sequence[Message]
"""What ``Speculator.prune`` accepts: text, token ids, or chat messages."""


class PromptOptions(TypedDict, total=False):
    """Keyword options of scoring and pruning a prompt, shared by every speculator (in process or remote)."""

    protected_spans: Iterable[Span]
    """Extra ``(start, end)`` character spans of the text (or rendered chat) never to drop."""
    segments: Iterable[int | Span]
    """Caller passages (character offsets or ``(start, end)`` spans) where the chunk grid restarts."""


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

    @property
    def kind(self) -> PromptKind:
        """What the prompt is: ``messages`` (a rendered chat), ``text``, or bare ``token_ids`` (no text)."""
        if self.messages is not None:
            return "messages"
        return "text" if self.text is not None else "token_ids"

    @property
    def n_tokens(self) -> int:
        """Prompt length N."""
        return len(self.input_ids)


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
    def fallback(self) -> bool:
        """True when the speculator failed and the full prompt is to be used."""
        return self.fallback_reason is not None


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
