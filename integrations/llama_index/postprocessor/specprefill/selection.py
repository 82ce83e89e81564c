"""Chunk selection over several passages: Speculative Prefill's step 6 with chunks aligned to each passage.

The paper cuts the prompt into 32-token chunks from token 0. With several retrieved passages in one
prompt, such a grid lets chunks straddle two passages or a passage and its (protected) header, and a
protected token's importance (attention sinks at headers, the question's own high scores) then lifts or
sinks the unprotected tokens it shares a chunk with. Here every passage starts its own chunk grid, and a
chunk's score is the mean importance of its *unprotected* tokens only. The budget is still global: the
top ``ceil(keep_rate * chunks)`` chunks over all passages are kept, so the question decides which passages
get the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from specprefill.errors import ConfigurationError
from specprefill.scoring import budget_chunks

__all__ = ["passage_chunks", "select_passage_chunks"]

Segment = tuple[int, int]
"""Half-open ``(start, end)`` token range."""


def passage_chunks(segments: Sequence[Segment], chunk_size: int) -> list[Segment]:
    """Chunk grid restarting at every segment: ``chunk_size`` tokens from each segment start, last one shorter.

    Args:
        segments: Token ranges of the passages, in order and not overlapping.
        chunk_size: Tokens per chunk.

    Returns:
        Half-open token ranges of the chunks, in order.

    Raises:
        ConfigurationError: ``chunk_size`` is below 1 or the segments overlap or are out of order.

    """
    if chunk_size < 1:
        raise ConfigurationError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks: list[Segment] = []
    last = 0
    for lo, hi in segments:
        if lo < last or hi < lo:
            raise ConfigurationError(f"segments must be ordered, non-overlapping ranges; got {list(segments)}")
        chunks.extend((s, min(s + chunk_size, hi)) for s in range(lo, hi, chunk_size))
        last = hi
    return chunks


def select_passage_chunks(
    importance: npt.ArrayLike,
    segments: Sequence[Segment],
    protected: npt.ArrayLike,
    *,
    keep_rate: float,
    chunk_size: int = 32,
    max_kept_tokens: int | None = None,
) -> npt.NDArray[np.bool_]:
    """Keep the most important passage chunks; return the kept-token mask (protected tokens included).

    Candidates are the chunks of :func:`passage_chunks` that hold at least one unprotected token; each is
    scored by the mean importance of its unprotected tokens (NaN counts as lowest). The best
    ``ceil(keep_rate * candidates)`` are kept (ties go to the earlier chunk). ``max_kept_tokens`` caps the
    kept unprotected tokens exactly: when the next chunk does not fit, its most important contiguous run of
    the remaining size is kept instead, so the text stays readable. Tokens outside every segment are kept
    only if protected.

    Args:
        importance: ``[N]`` token importance.
        segments: Token ranges of the passages.
        protected: ``[N]`` boolean mask of tokens that are always kept.
        keep_rate: Fraction of candidate chunks to keep, in (0, 1].
        chunk_size: Tokens per chunk.
        max_kept_tokens: Optional cap on kept unprotected tokens.

    Returns:
        ``[N]`` boolean mask of kept tokens.

    Raises:
        ConfigurationError: ``keep_rate`` is outside (0, 1], ``max_kept_tokens`` is negative, or the
            inputs have different lengths.

    """
    if not 0.0 < float(keep_rate) <= 1.0:
        raise ConfigurationError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    if max_kept_tokens is not None and max_kept_tokens < 0:
        raise ConfigurationError(f"max_kept_tokens must be >= 0, got {max_kept_tokens}")
    imp = np.asarray(importance, dtype=np.float32)
    keep = np.array(protected, dtype=np.bool_, copy=True)
    if imp.ndim != 1 or keep.shape != imp.shape:
        raise ConfigurationError(f"importance {imp.shape} and protected {keep.shape} must be 1-D of equal length")
    imp = np.where(np.isnan(imp), np.float32(-np.inf), imp)
    chunks = [(s, e) for s, e in passage_chunks(segments, chunk_size) if not keep[s:e].all()]
    if any(e > imp.shape[0] for _, e in chunks):
        raise ConfigurationError(f"a segment ends after the last token ({imp.shape[0]})")
    scores = [float(imp[s:e][~keep[s:e]].mean()) for s, e in chunks]
    order = sorted(range(len(chunks)), key=lambda i: (-scores[i], i))
    budget = max_kept_tokens
    for i in order[: budget_chunks(float(keep_rate), len(chunks))]:
        s, e = chunks[i]
        free = np.flatnonzero(~keep[s:e]) + s
        if budget is not None and len(free) > budget:
            if budget > 0:
                keep[_best_run(imp, free, budget)] = True
            break
        keep[free] = True
        if budget is not None:
            budget -= len(free)
    return keep


def _best_run(imp: npt.NDArray[np.float32], free: npt.NDArray[np.intp], length: int) -> npt.NDArray[np.intp]:
    """The ``length`` consecutive entries of ``free`` with the highest total importance (earliest on ties)."""
    values = np.maximum(imp[free].astype(np.float64), -1e30)  # -inf would make every window sum -inf
    sums = np.convolve(values, np.ones(length), mode="valid")
    start = int(np.argmax(sums))
    return free[start : start + length]
