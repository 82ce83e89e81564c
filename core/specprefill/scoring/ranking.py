"""The order chunks are taken in, and the best run of tokens of the last, partial chunk.

Best first with the coverage rule (:func:`ranked_chunks`), rank fusion of two scorings (:func:`fused_ranks`)
and :func:`best_run`. All functions are pure; :mod:`specprefill.scoring.select` uses them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["best_run", "fused_ranks", "ranked_chunks"]

FloatArray = npt.NDArray[np.float32]


def fused_ranks(primary: Sequence[float], secondary: Sequence[float], k: int) -> list[float]:
    """Reciprocal-rank fusion of two chunk scorings: ``1 / (k + rank in primary) + 1 / (k + rank in secondary)``.

    Ranks count from 1, best first, ties to the earlier chunk (as :func:`ranked_chunks`). A chunk whose
    secondary score is not positive (no question word in or near it) gets only the first term, so the second
    ranking promotes its matches and never reorders the rest. Pure.
    """
    if len(primary) != len(secondary):
        raise ValueError(f"{len(primary)} primary but {len(secondary)} secondary chunk scores")
    if k < 0:
        raise ValueError(f"fusion k must be >= 0, got {k}")
    fused = [0.0] * len(primary)
    for rank, i in enumerate(sorted(range(len(primary)), key=lambda i: (-primary[i], i))):
        fused[i] = 1.0 / (k + rank + 1)
    for rank, i in enumerate(sorted(range(len(secondary)), key=lambda i: (-secondary[i], i))):
        if secondary[i] > 0:
            fused[i] += 1.0 / (k + rank + 1)
    return fused


def ranked_chunks(
    scores: Sequence[float], bounds: Sequence[tuple[int, int]], coverage: float = 0.0, radius: int = 128
) -> Iterator[int]:
    """Chunk indices best first (ties: the earlier chunk), lazily, with the coverage rule.

    Each pick lowers every not yet picked chunk whose centre lies within ``radius`` tokens of the pick's
    centre by ``coverage`` times its absolute score, so a region that already gave several chunks yields to
    another high-scoring one (an MMR-like rule: 0 gives the plain ranking, 1 takes one chunk per region
    before any second one). Pure.
    """
    if coverage <= 0.0:
        yield from sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return
    value = np.asarray(scores, dtype=np.float64)
    centres = np.array([(s + e) / 2 for s, e in bounds], dtype=np.float64)
    alive = np.ones(len(value), dtype=np.bool_)
    for _ in range(len(value)):
        masked = np.where(alive, value, -np.inf)
        i = int(np.argmax(masked))
        if not alive[i]:  # only -inf left: the earliest remaining chunk
            i = int(np.flatnonzero(alive)[0])
        alive[i] = False
        yield i
        near = alive & (np.abs(centres - centres[i]) <= radius) & np.isfinite(value)
        value[near] -= coverage * np.abs(value[near])


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
