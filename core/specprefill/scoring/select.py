"""Pure functions for steps 4-6 of Speculative Prefill: smoothing, reduction, chunking and selection.

Everything here works on NumPy arrays and has no model in it, so it is tested on tiny literal inputs.
The speculator computes the same reductions layer by layer in torch (see ``specprefill.speculator.hf``); these
functions are the reference it is checked against.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from specprefill.errors import ConfigurationError
from specprefill.scoring.chunks import blend_context

__all__ = [
    "avg_pool1d",
    "best_run",
    "budget_chunks",
    "chunk_bounds",
    "chunk_scores",
    "fill_chunks",
    "importance_from_attention",
    "protected_mask",
    "reduce_queries",
    "segment_edges",
    "select_chunks",
]

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]


def avg_pool1d(rows: npt.ArrayLike, kernel: int) -> FloatArray:
    """Average-pool the last axis with stride 1 and zero padding ``kernel // 2``.

    Matches ``torch.nn.functional.avg_pool1d(x, kernel, 1, kernel // 2)`` with the default
    ``count_include_pad=True``: every output is the window sum divided by ``kernel``, so the first and
    last ``kernel // 2`` positions are diluted by the zero padding.

    Args:
        rows: Array whose last axis is pooled.
        kernel: Odd window length (1 returns the input unchanged).

    Returns:
        float32 array of the same shape.

    """
    x = np.asarray(rows, dtype=np.float32)
    _check_kernel(kernel)
    if kernel == 1 or x.shape[-1] == 0:
        return x.copy()
    pad = kernel // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad + 1, pad)])
    csum = np.cumsum(padded, axis=-1, dtype=np.float64)
    window = csum[..., kernel:] - csum[..., :-kernel]
    return (window / kernel).astype(np.float32)


def importance_from_attention(
    probs: npt.ArrayLike,
    pool_kernel: int = 13,
    *,
    window_queries: int = 0,
    query_reduction: str = "mean",
    query_mix: float = 0.5,
) -> FloatArray:
    """Token importance from attention probabilities (steps 4-5).

    The first ``window_queries`` query rows are observation-window queries: the queries of the last
    ``window_queries`` prompt tokens, in order, so row ``i`` sits at prompt position
    ``N - window_queries + i``. Causality: such a query may only attend keys at or before its position, so
    later keys are masked out and the row is renormalised over the rest (exactly a softmax with ``-inf``
    at the masked keys). The remaining rows (look-ahead queries) see all N prompt keys.

    Args:
        probs: ``[layers, heads, queries, N]`` attention probabilities of each query over the N prompt keys.
        pool_kernel: Kernel of the smoothing applied to every row before reducing.
        window_queries: How many leading query rows are observation-window queries (0: none).
        query_reduction: ``"mean"``, ``"max"`` or ``"mix"`` over the queries.
        query_mix: Weight of the max in ``"mix"``: ``query_mix * max + (1 - query_mix) * mean``.

    Returns:
        ``[N]`` float32: max over layers and heads of the pooled rows, then the query reduction.

    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 4:
        raise ValueError(f"expected [layers, heads, queries, N] probabilities, got shape {p.shape}")
    n_queries, n = p.shape[2], p.shape[3]
    if not 0 <= window_queries <= min(n_queries, n):
        raise ValueError(f"window_queries must be in [0, {min(n_queries, n)}], got {window_queries}")
    if window_queries:
        positions = np.full(n_queries, n, dtype=np.int64)
        positions[:window_queries] = np.arange(n - window_queries, n)
        masked = np.where(np.arange(n)[None, :] > positions[:, None], np.float32(0), p).astype(np.float64)
        p = (masked / masked.sum(axis=-1, keepdims=True)).astype(np.float32)
    per_query = avg_pool1d(p, pool_kernel).max(axis=(0, 1))
    return reduce_queries(per_query, query_reduction, query_mix)


def reduce_queries(per_query: npt.ArrayLike, reduction: str = "mean", mix: float = 0.5) -> FloatArray:
    """Combine ``[queries, N]`` per-query importance into ``[N]`` (``"mean"``, ``"max"`` or ``"mix"``).

    ``"mix"`` is ``mix * max + (1 - mix) * mean``. Shared by the reference and the speculator's torch path
    (which passes the final ``[Q, N]`` running max as NumPy).
    """
    rows = np.asarray(per_query, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"expected [queries, N] importance, got shape {rows.shape}")
    if reduction == "mean":
        out = rows.mean(axis=0)
    elif reduction == "max":
        out = rows.max(axis=0)
    elif reduction == "mix":
        if not 0.0 <= mix <= 1.0:
            raise ConfigurationError(f"query_mix must be in [0, 1], got {mix}")
        out = mix * rows.max(axis=0) + (1.0 - mix) * rows.mean(axis=0)
    else:
        raise ConfigurationError(f"query_reduction must be 'mean', 'max' or 'mix', got {reduction!r}")
    return np.asarray(out, dtype=np.float32)


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


def select_chunks(
    importance: npt.ArrayLike,
    *,
    keep_rate: float,
    chunk_size: int = 32,
    protected: npt.ArrayLike | Iterable[int] = (),
    max_kept_tokens: int | None = None,
    protected_count_toward_budget: bool = False,
    segments: Sequence[int] | None = None,
    chunk_context: int = 0,
    context_weight: float = 0.3,
) -> IndexArray:
    """Pick the most important chunks (step 6) and return the kept token indices, sorted ascending.

    **Paper grid** (``segments=None``): chunks of ``chunk_size`` from token 0. The budget is
    ``ceil(keep_rate * n)`` chunks, where ``n`` counts the chunks that hold at least one unprotected token;
    a chunk scores the mean importance of all its tokens. Protected tokens are always kept; by default they
    do not use the budget. With ``protected_count_toward_budget`` the budget is ``ceil(keep_rate * all
    chunks)`` minus the chunks that are wholly protected, and ``max_kept_tokens`` includes the protected
    tokens. ``max_kept_tokens`` caps the unprotected tokens taken from chosen chunks; when the next chunk
    does not fit, its most important tokens fill what is left, so the cap is met exactly.

    **Segment grid** (``segments`` given, even an empty list):

    1. The grid restarts at every segment start (:func:`chunk_bounds`); a segment's last chunk may be short.
    2. Candidates are the chunks holding at least one unprotected token; each scores the mean importance of
       its **unprotected** tokens (protected neighbours such as headers or the question neither lift nor
       sink it). Wholly protected chunks are kept and are not candidates.
    3. The budget is ``B = ceil(keep_rate * U)`` **tokens**, ``U`` the unprotected tokens (at least one when
       ``U > 0``), lowered to ``max_kept_tokens`` when that is smaller. With
       ``protected_count_toward_budget`` it is ``ceil(keep_rate * N)`` minus the protected tokens, and the
       cap is ``max_kept_tokens`` minus the protected tokens.
    4. Chunks are taken best first and all their unprotected tokens kept while they fit. The **last,
       partial chunk** (the first whose unprotected tokens exceed what is left of ``B``) keeps only its
       most important *contiguous run* of exactly the remaining size (:func:`best_run` over its
       unprotected tokens in order), and selection stops. So exactly ``min(B, U)`` unprotected tokens are
       kept, and ``max_kept_tokens`` is met exactly.

    With ``chunk_context > 0`` a chunk's score in either grid is ``(1 - context_weight) * score +
    context_weight * peak``, the peak being the highest unprotected importance within ``chunk_context``
    tokens around it (:func:`specprefill.scoring.chunks.blend_context`). Ties go to the earlier chunk in both grids; NaN
    importance ranks lowest.

    Args:
        importance: ``[N]`` token importance.
        keep_rate: Fraction of chunks (paper grid) or unprotected tokens (segment grid) to keep, in (0, 1].
        chunk_size: Tokens per chunk.
        protected: Token indices (or a boolean mask) that are always kept.
        max_kept_tokens: Optional absolute cap on kept tokens.
        protected_count_toward_budget: Whether protected tokens use up the budget.
        segments: Token indices where segments start (None: the paper's grid from token 0).
        chunk_context: Tokens on each side of a chunk whose importance also counts (0: the paper's score).
        context_weight: Share of that neighbourhood peak in the chunk's score, in (0, 1].

    Returns:
        int64 array of kept token indices, strictly increasing.

    """
    rate = _check_budget(keep_rate, max_kept_tokens)
    imp = np.asarray(importance, dtype=np.float32)
    if imp.ndim != 1:
        raise ValueError(f"importance must be 1-D, got shape {imp.shape}")
    # A NaN score (e.g. an overflowing half-precision speculator) must not scramble the ranking.
    imp = np.where(np.isnan(imp), np.float32(-np.inf), imp)
    n = imp.shape[0]
    keep = protected_mask(n, protected)
    if segments is not None:
        return _select_segmented(
            imp, keep, chunk_bounds(n, chunk_size, segments), rate, max_kept_tokens, protected_count_toward_budget,
            chunk_context, context_weight,
        )  # fmt: skip
    bounds = chunk_bounds(n, chunk_size)
    candidates = [i for i, (s, e) in enumerate(bounds) if not keep[s:e].all()]
    if protected_count_toward_budget:
        chunk_budget = budget_chunks(rate, len(bounds)) - (len(bounds) - len(candidates))
        token_budget = None if max_kept_tokens is None else max_kept_tokens - int(keep.sum())
    else:
        chunk_budget = budget_chunks(rate, len(candidates))
        token_budget = max_kept_tokens
    means = chunk_scores(imp, chunk_size)
    means = np.where(np.isnan(means), np.float32(-np.inf), means)  # a chunk holding both +inf and -inf
    scores = blend_context(imp, bounds, [float(v) for v in means], keep, chunk_context, context_weight)
    order = sorted(candidates, key=lambda i: (-scores[i], i))
    for i in order[: max(chunk_budget, 0)]:
        s, e = bounds[i]
        free = np.flatnonzero(~keep[s:e]) + s
        if token_budget is not None and len(free) > token_budget:
            if token_budget > 0:
                best = free[np.argsort(-imp[free], kind="stable")[:token_budget]]
                keep[best] = True
            break
        keep[free] = True
        if token_budget is not None:
            token_budget -= len(free)
    return np.flatnonzero(keep).astype(np.int64)


def _select_segmented(
    imp: FloatArray,
    keep: npt.NDArray[np.bool_],
    bounds: list[tuple[int, int]],
    rate: float,
    max_kept_tokens: int | None,
    protected_count_toward_budget: bool,
    chunk_context: int,
    context_weight: float,
) -> IndexArray:
    n_protected = int(keep.sum())
    if protected_count_toward_budget:
        budget = budget_chunks(rate, imp.shape[0]) - n_protected
        cap = None if max_kept_tokens is None else max_kept_tokens - n_protected
    else:
        budget = budget_chunks(rate, imp.shape[0] - n_protected)
        cap = max_kept_tokens
    budget = budget if cap is None else min(budget, cap)
    fill_chunks(imp, keep, bounds, budget, chunk_context=chunk_context, context_weight=context_weight)
    return np.flatnonzero(keep).astype(np.int64)


def fill_chunks(
    importance: npt.ArrayLike,
    keep: npt.NDArray[np.bool_],
    bounds: Sequence[tuple[int, int]],
    budget: int,
    *,
    protected: npt.NDArray[np.bool_] | None = None,
    chunk_context: int = 0,
    context_weight: float = 0.3,
) -> int:
    """Add the best chunks' not yet kept tokens to ``keep`` (in place) until ``budget`` tokens are added.

    Chunks rank by the mean importance of their unprotected tokens (``protected`` defaults to ``keep`` as
    it is on entry; NaN ranks lowest; ties go to the earlier chunk). A chunk whose new tokens exceed what is
    left of the budget adds only its best contiguous run of that size (:func:`best_run`), and filling stops.

    Args:
        importance: ``[N]`` token importance.
        keep: ``[N]`` mask of kept tokens, changed in place.
        bounds: Half-open chunk ranges to choose from (e.g. :func:`chunk_bounds` with segments).
        budget: Tokens to add (nothing when <= 0).
        protected: ``[N]`` mask of tokens left out of the chunk scores.
        chunk_context: Tokens on each side of a chunk whose importance also counts (see :func:`select_chunks`).
        context_weight: Share of that neighbourhood peak in a chunk's score.

    Returns:
        Tokens added: ``min(budget, not yet kept tokens in bounds)``.

    """
    imp = np.asarray(importance, dtype=np.float32)
    imp = np.where(np.isnan(imp), np.float32(-np.inf), imp)
    excluded = keep.copy() if protected is None else protected
    candidates = [(s, e) for s, e in bounds if not keep[s:e].all()]
    own = [_free_mean(imp[s:e], excluded[s:e]) for s, e in candidates]
    scores = blend_context(imp, candidates, own, excluded, chunk_context, context_weight)
    added = 0
    for i in sorted(range(len(candidates)), key=lambda i: (-scores[i], i)):
        if added >= budget:
            break
        s, e = candidates[i]
        free = np.flatnonzero(~keep[s:e]) + s
        if len(free) > budget - added:
            free = best_run(imp, free, budget - added)
        keep[free] = True
        added += len(free)
    return added


def _free_mean(values: FloatArray, protected: npt.NDArray[np.bool_]) -> float:
    """Mean of the unprotected entries; -inf when there are none or it is undefined (NaN from +inf and -inf)."""
    free = values[~protected]
    if not free.size:
        return -math.inf
    with np.errstate(invalid="ignore"):
        mean = float(free.astype(np.float64).mean())
    return -math.inf if math.isnan(mean) else mean


def best_run(imp: FloatArray, free: npt.NDArray[np.intp], length: int) -> npt.NDArray[np.intp]:
    """The ``length`` consecutive entries of ``free`` with the highest total importance (earliest on ties).

    ``-inf`` (a NaN score) counts as a very low finite value so that every window keeps a comparable sum.
    """
    if length >= len(free):
        return free
    values = np.maximum(imp[free].astype(np.float64), -1e30)
    sums = np.convolve(values, np.ones(length), mode="valid")
    start = int(np.argmax(sums))
    return free[start : start + length]


def _check_budget(keep_rate: object, max_kept_tokens: int | None) -> float:
    try:
        rate = float(keep_rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"keep_rate must be a number in (0, 1], got {keep_rate!r}") from None
    if not 0.0 < rate <= 1.0:  # also rejects NaN
        raise ConfigurationError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    if max_kept_tokens is not None and max_kept_tokens < 0:
        raise ConfigurationError(f"max_kept_tokens must be >= 0, got {max_kept_tokens}")
    return rate


def budget_chunks(keep_rate: float, n_chunks: int) -> int:
    """``ceil(keep_rate * n_chunks)``, at least one chunk when there is one, robust to float rounding.

    ``0.07 * 100`` is ``7.000000000000001`` in floating point; a plain ``ceil`` would keep 8 chunks.
    """
    if n_chunks <= 0:
        return 0
    return min(n_chunks, max(1, math.ceil(keep_rate * n_chunks - 1e-9)))


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigurationError(f"pool kernel must be a positive odd number, got {kernel}")
