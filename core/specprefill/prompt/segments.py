"""Where the chunk grid restarts: segment boundaries from messages, paragraphs, sentences or caller passages.

Boundaries are found as character positions in the prompt text and mapped to the token indices where
segments start, for :func:`specprefill.scoring.select_chunks` (``segments=``). All functions are pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.prepared import PreparedPrompt
from specprefill.spans import Span

__all__ = [
    "SegmentBy",
    "boundary_chars",
    "check_segments",
    "final_paragraph_start",
    "final_paragraph_tokens",
    "scoring_config",
    "segment_starts",
    "segment_starts_of",
    "token_starts",
    "window_config",
]

SegmentBy = Literal["none", "messages", "paragraphs", "sentences"]
"""Levels of ``SpecPrefillConfig.segment_by``; each level includes the coarser ones."""

_PARAGRAPH = re.compile(r"\n(?:[^\S\n]*\n)+")
"""Blank lines (possibly holding spaces): a paragraph starts right after the last, indentation included. (Ending the
boundary after the indentation put it inside the first word's token when the tokenizer joins that word to the
space before it, " DPKG" in a manual page; the word then stayed behind in the previous segment.)"""

_SENTENCE = re.compile(r"(?:[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+)\n*")
"""A sentence end: ``.``/``!``/``?`` (plus closing quotes or brackets) before white space, or CJK ``。！？``
(no space needed), with the line breaks right after it. The next sentence starts where the match ends, so a
line break stays with the sentence it ends. A single line break alone ends nothing: documents are often
hard-wrapped, and a sentence cut at its line end would need two chunks (blank lines still end paragraphs)."""


def boundary_chars(text: str, level: SegmentBy, content_spans: Sequence[Span] = ()) -> list[int]:
    """Character positions in ``text`` where a new segment starts, for one ``segment_by`` level.

    - ``"none"``: none.
    - ``"messages"``: the start and end of every message content (``content_spans``; empty for text).
    - ``"paragraphs"``: also the first character after every blank line.
    - ``"sentences"``: also the character after every sentence end (see the module's ``_SENTENCE``; a
      single line break is no sentence end).

    Args:
        text: The prompt text (for chat prompts: the template rendering).
        level: How finely to segment.
        content_spans: Character span of each message content in ``text``.

    Returns:
        Sorted distinct positions in ``(0, len(text))``.

    """
    if level == "none":
        return []
    found = {p for span in content_spans for p in span}
    if level in ("paragraphs", "sentences"):
        found.update(m.end() for m in _PARAGRAPH.finditer(text))
    if level == "sentences":
        found.update(m.end() for m in _SENTENCE.finditer(text))
    return sorted(p for p in found if 0 < p < len(text))


def token_starts(offsets: Sequence[Span], positions: Iterable[int]) -> list[int]:
    r"""Map character positions to the token indices where segments start.

    A position maps to the first token that starts at or after it, so a token straddling the position
    (e.g. ``".\\n"``) stays in the earlier segment. Positions after the last token map to ``len(offsets)``.

    Args:
        offsets: ``(start, end)`` character span of every token, in token order.
        positions: Character positions.

    Returns:
        Sorted distinct token indices in ``[0, len(offsets)]``.

    """
    starts = np.maximum.accumulate(np.array([s for s, _ in offsets], dtype=np.int64)) if offsets else np.zeros(0)
    return sorted({int(np.searchsorted(starts, p, side="left")) for p in positions})


def final_paragraph_start(text: str, lo: int = 0, hi: int | None = None) -> int | None:
    r"""Where the final paragraph of ``text[lo:hi]`` starts: after its last blank line (None: it has none).

    Trailing white space is not a paragraph, so ``"a\n\nb\n\n"`` ends with the paragraph ``"b"``.
    """
    hi = len(text) if hi is None else hi
    end = lo + len(text[lo:hi].rstrip())
    cut = text.rfind("\n\n", lo, end)
    return None if cut < 0 else cut + 2


def final_paragraph_tokens(
    text: str | None, offsets: Sequence[Span] | None, content_spans: Sequence[Span] | None = None
) -> int | None:
    """Tokens from the start of the prompt's final paragraph to the end (None: the prompt has no blank line).

    The final paragraph starts after the last blank line (two line breaks in a row) of the text, or, in a
    rendered chat, of the last message's content (:func:`final_paragraph_start`); the chat template after
    that content counts too. It is usually the question, which is where the observation window's queries
    should come from.
    """
    if not text or not offsets:
        return None
    start = final_paragraph_start(text, *(content_spans[-1] if content_spans else (0, len(text))))
    if start is None:
        return None
    return len(offsets) - token_starts(offsets, [start])[0]


def check_segments(segments: Iterable[object]) -> list[int]:
    """Caller passages as character positions: each item is a position or a ``(start, end)`` span.

    A span contributes both its ends, so the passage gets its own chunk grid.

    Raises:
        PromptError: An item is neither an integer nor a pair of integers.

    """
    try:
        items = list(segments)
    except TypeError:
        raise PromptError(
            f"segments must be a list of character offsets or (start, end) spans, got {segments!r:.80}"
        ) from None
    out: list[int] = []
    for item in items:
        values = item if isinstance(item, (tuple, list)) and len(item) == 2 else (item,)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in values):
            raise PromptError(f"each segment must be a character offset >= 0 or a (start, end) pair, got {item!r:.80}")
        out.extend(int(v) for v in values)  # type: ignore[arg-type]
    return sorted(set(out))


def segment_starts(
    offsets: Sequence[Span] | None,
    text: str | None,
    level: SegmentBy,
    *,
    content_spans: Sequence[Span] = (),
    extra: Sequence[int] = (),
) -> list[int] | None:
    """Token indices where segments start, or None for the paper's grid (no level and no caller passages).

    Args:
        offsets: Token offsets into ``text`` (None for a token-id prompt: no boundaries can be found).
        text: The prompt text.
        level: ``SpecPrefillConfig.segment_by``.
        content_spans: Character span of each message content (chat prompts).
        extra: Caller-given boundary positions (:func:`check_segments`).

    Returns:
        Sorted token indices (possibly empty), or None.

    Raises:
        PromptError: Caller passages were given for a prompt without text.

    """
    if level == "none" and not extra:
        return None
    if offsets is None or text is None:
        if extra:
            raise PromptError("segments are character offsets and need a text or message prompt")
        return []
    return token_starts(offsets, [*boundary_chars(text, level, content_spans), *extra])


def scoring_config(prepared: PreparedPrompt, config: SpecPrefillConfig) -> SpecPrefillConfig:
    """``config`` with the observation window cut to the prompt's final paragraph (``window_in_final_paragraph``)."""
    return window_config(config, prepared.text, prepared.offsets, prepared.content_spans)


def window_config(
    config: SpecPrefillConfig,
    text: str | None,
    offsets: Sequence[Span] | None,
    content_spans: Sequence[Span] | None = None,
) -> SpecPrefillConfig:
    """:func:`scoring_config` for a prompt given as its text, token offsets and message content spans."""
    if not config.window_in_final_paragraph or config.observation_window == 0:
        return config
    tail = final_paragraph_tokens(text, offsets, content_spans)
    if tail is None or tail >= config.observation_window:
        return config
    return config.with_overrides(observation_window=max(tail, 1))


def segment_starts_of(prepared: PreparedPrompt, config: SpecPrefillConfig, extra: Sequence[int]) -> list[int] | None:
    """Token indices where the prompt's segments start (:func:`~specprefill.prompt.segments.segment_starts`)."""
    return segment_starts(
        prepared.offsets,
        prepared.text,
        config.segment_by,
        content_spans=prepared.content_spans or (),
        extra=extra,
    )
