"""The chunk grid and chunk scores: contiguous chunks (restarting at segment starts) and what each scores.

A small speculator often attends to the words a question names (``"saffron pear cake"``) and not to the
value that follows a few tokens later (``"175 degrees"``). With ``SpecPrefillConfig.chunk_context > 0`` a
chunk scores a blend of its own score and the highest importance within that many tokens on either side
(:func:`blend_context`), so a sentence right next to what the question points at ranks higher, while the
chunk holding the peak itself still ranks first. Also here: a chunk's free mean, the chunk budget
(:func:`budget_chunks`) and the tokens that complete a kept chunk's sentence (:func:`completion_tokens`). All
functions are pure.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from specprefill.errors import ConfigurationError

__all__ = [
    "blend_context",
    "budget_chunks",
    "chunk_bounds",
    "chunk_scores",
    "completion_tokens",
    "free_mean",
    "protected_mask",
    "segment_edges",
]

FloatArray = npt.NDArray[np.float32]


def chunk_bounds(n_tokens: int, chunk_size: int, segments: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` token ranges of contiguous chunks.

    Without ``segments`` the grid starts at token 0 (the paper's grid); the last chunk may be shorter. With
    ``segments`` (token indices where segments start) the grid restarts at every segment start, so no chunk
    crosses a segment boundary and the last chunk of every segment may be shorter.
    """
    if chunk_size < 1:
        raise ConfigurationError(f"chunk_size must be >= 1, got {chunk_size}")
    if segments is None:
        return [(s, min(s + chunk_size, n_tokens)) for s in range(0, n_tokens, chunk_size)]
    edges = segment_edges(n_tokens, segments)
    return [(s, min(s + chunk_size, hi)) for lo, hi in itertools.pairwise(edges) for s in range(lo, hi, chunk_size)]


def segment_edges(n_tokens: int, segments: Sequence[int]) -> list[int]:
    """Sorted distinct segment edges ``[0, ..., n_tokens]`` from the token indices where segments start.

    Repeated starts (empty segments) collapse; starts at 0 or ``n_tokens`` add nothing.

    Raises:
        ConfigurationError: A start is not an integer in ``[0, n_tokens]``.

    """
    starts: set[int] = set()
    for value in segments:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= n_tokens:
            raise ConfigurationError(f"segment starts must be token indices in [0, {n_tokens}], got {value!r:.40}")
        starts.add(int(value))
    return sorted(starts | {0, n_tokens}) if n_tokens else [0]


def chunk_scores(importance: npt.ArrayLike, chunk_size: int) -> FloatArray:
    """Mean importance of each chunk (a short last chunk is averaged over its own length)."""
    imp = np.asarray(importance, dtype=np.float32)
    bounds = chunk_bounds(imp.shape[0], chunk_size)
    return np.array([imp[s:e].mean() for s, e in bounds], dtype=np.float32)


def protected_mask(n_tokens: int, protected: npt.ArrayLike | Iterable[int] = ()) -> npt.NDArray[np.bool_]:
    """Boolean mask of protected tokens from either a mask of length N or an iterable of token indices."""
    arr = protected if isinstance(protected, np.ndarray) else np.asarray(list(cast(Iterable[Any], protected)))
    if arr.dtype == np.bool_:
        if arr.shape != (n_tokens,):
            raise ConfigurationError(f"protected mask has shape {arr.shape}, expected ({n_tokens},)")
        return arr.copy()
    mask = np.zeros(n_tokens, dtype=np.bool_)
    if arr.size:
        idx = arr.astype(np.int64).ravel()
        if idx.min() < 0 or idx.max() >= n_tokens:
            raise ConfigurationError(
                f"protected token index out of range [0, {n_tokens}): min {idx.min()}, max {idx.max()}"
            )
        mask[idx] = True
    return mask


def blend_context(
    importance: FloatArray,
    bounds: Sequence[tuple[int, int]],
    own: Sequence[float],
    excluded: npt.NDArray[np.bool_],
    context: int,
    weight: float = 0.3,
) -> list[float]:
    """Each chunk's score: ``(1 - weight) * own + weight * (max importance within context tokens around it)``.

    Args:
        importance: ``[N]`` token importance (NaN already replaced by ``-inf``).
        bounds: Half-open ``(start, end)`` range of each chunk.
        own: Each chunk's own score (e.g. the mean importance of its unprotected tokens).
        excluded: ``[N]`` mask of tokens left out of the neighbourhood maximum (protected tokens).
        context: Tokens on each side of a chunk that count; 0 returns ``own`` unchanged.
        weight: Share of the neighbourhood peak in the blend, in (0, 1] (0.5: the midpoint).

    Returns:
        One score per chunk. A chunk whose own score or neighbourhood is not finite keeps its own score.

    Raises:
        ValueError: ``weight`` is outside (0, 1].

    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"context_weight must be in (0, 1], got {weight}")
    if context <= 0:
        return [float(v) for v in own]
    n = importance.shape[0]
    masked = np.where(excluded, np.float32(-np.inf), importance)
    out = []
    for (s, e), value in zip(bounds, own, strict=True):
        peak = float(masked[max(0, s - context) : min(n, e + context)].max(initial=-np.inf))
        both = math.isfinite(value) and math.isfinite(peak)
        out.append((1.0 - weight) * float(value) + weight * peak if both else float(value))
    return out


def completion_tokens(
    keep: npt.NDArray[np.bool_], edges: Sequence[int], start: int, end: int, limit: int, any_next: bool = True
) -> list[int]:
    """Not yet kept tokens that complete the chunk ``[start, end)``, nearest first, at most ``limit`` per side.

    After the chunk: the rest of its segment (sentence), or, when the chunk ends its segment, the start of the
    next one - after any segment with ``any_next``, else only after one of at most ``limit`` tokens (a heading,
    a label or a question line). Before it: the start of its segment when the chunk begins mid-segment.
    """
    j = bisect_right(edges, start) - 1
    lo, hi = edges[j], edges[min(j + 1, len(edges) - 1)]
    if end >= hi and j + 2 < len(edges) and (any_next or hi - lo <= limit):
        hi = edges[j + 2]
    after = [t for t in range(end, min(hi, end + limit)) if not keep[t]]
    before = [t for t in range(start - 1, max(lo, start - limit) - 1, -1) if not keep[t]]
    return after + before


def free_mean(values: FloatArray, excluded: npt.NDArray[np.bool_]) -> float:
    """Mean of the entries not ``excluded``; -inf when there are none or it is undefined (NaN from +inf and -inf)."""
    free = values[~excluded]
    if not free.size:
        return -math.inf
    with np.errstate(invalid="ignore"):
        mean = float(free.astype(np.float64).mean())
    return -math.inf if math.isnan(mean) else mean


def budget_chunks(keep_rate: float, n_chunks: int) -> int:
    """``ceil(keep_rate * n_chunks)``, at least one chunk when there is one, robust to float rounding.

    ``0.07 * 100`` is ``7.000000000000001`` in floating point; a plain ``ceil`` would keep 8 chunks.
    """
    if n_chunks <= 0:
        return 0
    return min(n_chunks, max(1, math.ceil(keep_rate * n_chunks - 1e-9)))
