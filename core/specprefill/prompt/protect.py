"""What is never dropped: caller spans, and for chat prompts the template, system prompts and the question.

:func:`question_tokens` is the one place that decides which tokens of a chat prompt are its question, for
every caller: ``Speculator.prune`` on messages, the CLI's ``ask`` and ``prune --question`` prompts
(:mod:`specprefill.prompt.documents`), both integrations and the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.segments import final_paragraph_start, token_starts
from specprefill.result import Message
from specprefill.spans import Span, char_spans_to_token_mask, merge_spans

__all__ = ["check_spans", "protection_for_messages", "question_tokens"]


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


def question_tokens(offsets: Sequence[Span], text: str, content_span: Span, limit: int | None) -> npt.NDArray[np.int64]:
    r"""Token indices of a chat prompt's question, given its last user message's content span in ``text``.

    The question is the final paragraph of that message (after its last blank line; the whole message when
    it has none), as every question prompt specprefill builds puts it (``...\n\nQuestion: ...``), capped to
    its last ``limit`` tokens (``SpecPrefillConfig.protect_question_tokens``). ``limit=None`` is the whole
    message, ``0`` nothing.
    """
    tokens = np.flatnonzero(char_spans_to_token_mask(offsets, [content_span])).astype(np.int64)
    if limit is None:
        return tokens
    start = final_paragraph_start(text, *content_span)
    if start is not None:
        first = token_starts(offsets, [start])[0]
        tokens = tokens[tokens >= first]
    return tokens[-limit:] if limit > 0 else tokens[:0]


def protection_for_messages(
    offsets: Sequence[Span],
    text: str,
    messages: Sequence[Message],
    content_spans: Sequence[Span],
    config: SpecPrefillConfig,
) -> npt.NDArray[np.bool_]:
    """Protected-token mask for a rendered chat: template tokens, system prompts, and the question.

    Args:
        offsets: Character span of each token in ``text``.
        text: The chat rendered with its template.
        messages: The validated messages.
        content_spans: Character span of each message content in ``text``.
        config: ``protect_template``, ``protect_system_tokens`` and ``protect_question_tokens``.

    Returns:
        ``[N]`` mask of the tokens that are never dropped (:func:`question_tokens` decides the question's).

    """
    protected = np.zeros(len(offsets), dtype=np.bool_)
    if config.protect_template:
        protected |= char_spans_to_token_mask(offsets, _complement(content_spans, len(text)))
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    for i, (m, span) in enumerate(zip(messages, content_spans, strict=True)):
        if m["role"] in ("system", "developer"):
            tokens = np.flatnonzero(char_spans_to_token_mask(offsets, [span]))
            limit = config.protect_system_tokens
            protected[tokens if limit is None else tokens[:limit]] = True
        elif i == last_user:
            protected[question_tokens(offsets, text, span, config.protect_question_tokens)] = True
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
