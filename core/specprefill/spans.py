"""Character spans and token offsets: protected spans in, kept text out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "Span",
    "char_spans_to_token_mask",
    "cut_spans",
    "index_runs",
    "join_runs",
    "join_spans",
    "kept_char_spans",
    "merge_spans",
]

Span = tuple[int, int]
"""Half-open ``(start, end)`` character range."""


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sort spans and merge those that overlap or touch; empty spans are dropped."""
    out: list[Span] = []
    for s, e in sorted((int(s), int(e)) for s, e in spans if e > s):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def char_spans_to_token_mask(offsets: Sequence[Span], spans: Iterable[Span]) -> npt.NDArray[np.bool_]:
    """Mark every token whose character range overlaps one of ``spans``.

    Zero-width tokens (special tokens with offset ``(p, p)``) count as inside a span that strictly
    contains ``p`` or starts at it.
    """
    n = len(offsets)
    mask = np.zeros(n, dtype=np.bool_)
    merged = merge_spans(spans)
    if not merged or n == 0:
        return mask
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    ends = np.array([o[1] for o in offsets], dtype=np.int64)
    for s, e in merged:
        overlap = (starts < e) & (ends > s)
        point = (starts == ends) & (starts >= s) & (starts < e)
        mask |= overlap | point
    return mask


def kept_char_spans(offsets: Sequence[Span], kept_indices: Iterable[int]) -> list[Span]:
    """Character spans covered by the kept tokens, merged and in order.

    Each run of consecutive kept tokens becomes one span from its first character to its last, so a
    tokenizer whose offsets leave out the white space between tokens does not get a gap inside a run.
    Zero-width tokens (added special tokens) add no characters.
    """
    spans: list[Span] = []
    run: Span | None = None
    prev: int | None = None
    for i in sorted({int(k) for k in kept_indices}):
        if prev is not None and i != prev + 1 and run is not None:
            spans.append(run)
            run = None
        prev = i
        s, e = offsets[i]
        if e > s:
            run = (s, e) if run is None else (min(run[0], s), max(run[1], e))
    if run is not None:
        spans.append(run)
    return merge_spans(spans)


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Half-open ranges of consecutive values in a sorted index array."""
    out: list[tuple[int, int]] = []
    for i in indices:
        i = int(i)
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def join_spans(text: str, spans: Sequence[Span], marker: str) -> str:
    """Concatenate ``text[s:e]`` for each merged span, with ``marker`` where text between them was dropped.

    A marker also stands at the start or end when text was dropped there.
    """
    return join_runs(len(text), spans, lambda s, e: text[s:e], marker)


def join_runs(length: int, runs: Sequence[Span], piece: Callable[[int, int], str], marker: str) -> str:
    """Concatenate ``piece(s, e)`` for each sorted, disjoint run of ``[0, length)``, with ``marker`` in the gaps.

    A gap at the start or end gets the marker without its outer padding; no runs give ``""``.
    """
    if not runs:
        return ""
    pieces: list[str] = []
    cursor = 0
    for s, e in runs:
        if s > cursor:
            pieces.append(marker)
        pieces.append(piece(s, e))
        cursor = e
    if cursor < length:
        pieces.append(marker)
    return _trim_edges(pieces, marker) if marker else "".join(pieces)


def cut_spans(spans: Sequence[Span], window: Span) -> list[Span]:
    """Parts of ``spans`` that fall inside ``window``, shifted so the window starts at 0."""
    ws, we = window
    out: list[Span] = []
    for s, e in spans:
        lo, hi = max(s, ws), min(e, we)
        if hi > lo:
            out.append((lo - ws, hi - ws))
    return out


def _trim_edges(pieces: list[str], marker: str) -> str:
    # Leading/trailing markers keep their visible part but not the padding around it.
    if pieces and pieces[0] == marker:
        pieces[0] = marker.lstrip()
    if pieces and pieces[-1] == marker:
        pieces[-1] = marker.rstrip()
    return "".join(pieces)
