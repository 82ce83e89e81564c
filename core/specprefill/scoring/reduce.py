"""Steps 4-5: smoothing every attention row, then the max over layers and heads and a reduction over queries.

The query reductions are a table: a reduction is one function from ``[queries, N]`` per-query importance to
``[N]`` and one :func:`register_reduction` call; ``SpecPrefillConfig.query_reduction`` accepts every
registered name, and both the NumPy reference (:func:`importance_from_attention`) and the speculator's torch
path (:mod:`specprefill.speculator.capture`) reduce through :func:`reduce_queries`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from specprefill.errors import ConfigurationError

__all__ = [
    "QueryReduction",
    "avg_pool1d",
    "importance_from_attention",
    "reduce_queries",
    "reduction_names",
    "register_reduction",
]

FloatArray = npt.NDArray[np.float32]

QueryReduction = Callable[[FloatArray, float], FloatArray]
"""A query reduction: ``[queries, N]`` float32 per-query importance and ``SpecPrefillConfig.query_mix`` (the
reductions' one parameter; most ignore it) to ``[N]`` float32."""


def _mean(rows: FloatArray, mix: float) -> FloatArray:
    """The paper's reduction: the mean over the queries."""
    return np.asarray(rows.mean(axis=0), dtype=np.float32)


def _max(rows: FloatArray, mix: float) -> FloatArray:
    """The highest score any query gives a token."""
    return np.asarray(rows.max(axis=0), dtype=np.float32)


def _mix(rows: FloatArray, mix: float) -> FloatArray:
    """``mix * max + (1 - mix) * mean``."""
    if not 0.0 <= mix <= 1.0:
        raise ConfigurationError(f"query_mix must be in [0, 1], got {mix}")
    return np.asarray(mix * rows.max(axis=0) + (1.0 - mix) * rows.mean(axis=0), dtype=np.float32)


_REDUCTIONS: dict[str, QueryReduction] = {"mean": _mean, "max": _max, "mix": _mix}


def register_reduction(name: str, reduction: QueryReduction, *, replace: bool = False) -> QueryReduction:
    """Add a query reduction under ``name`` (then ``SpecPrefillConfig(query_reduction=name)`` uses it).

    Args:
        name: The name configs refer to.
        reduction: ``[queries, N]`` importance and ``query_mix`` to ``[N]`` (see :data:`QueryReduction`).
        replace: Allow replacing a reduction registered under the same name.

    Returns:
        ``reduction`` (so this works as a decorator through :func:`functools.partial`).

    Raises:
        ConfigurationError: ``name`` is empty or taken and ``replace`` is False.

    """
    if not name or not name.strip():
        raise ConfigurationError("a query reduction needs a non-empty name")
    if name in _REDUCTIONS and not replace:
        raise ConfigurationError(f"a query reduction named {name!r} exists; pass replace=True to replace it")
    _REDUCTIONS[name] = reduction
    return reduction


def reduction_names() -> tuple[str, ...]:
    """The registered query reductions, sorted."""
    return tuple(sorted(_REDUCTIONS))


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
    """Combine ``[queries, N]`` per-query importance into ``[N]`` with a registered reduction.

    Built in: ``"mean"`` (the paper's), ``"max"`` and ``"mix"`` (``mix * max + (1 - mix) * mean``); see
    :func:`register_reduction`. Shared by the reference and the speculator's torch path (which passes the
    final ``[Q, N]`` running max as NumPy).

    Raises:
        ConfigurationError: ``reduction`` is not registered, or the reduction refuses ``mix``.

    """
    rows = np.asarray(per_query, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"expected [queries, N] importance, got shape {rows.shape}")
    chosen = _REDUCTIONS.get(reduction)
    if chosen is None:
        raise ConfigurationError(f"query_reduction must be one of {list(reduction_names())}, got {reduction!r}")
    out = np.asarray(chosen(rows, mix), dtype=np.float32)
    if out.shape != rows.shape[1:]:
        raise ConfigurationError(f"query reduction {reduction!r} returned shape {out.shape}, expected {rows.shape[1:]}")
    return out


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigurationError(f"pool kernel must be a positive odd number, got {kernel}")
