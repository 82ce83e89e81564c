"""Chunk scores that also see their neighbourhood (``SpecPrefillConfig.chunk_context``).

A small speculator often attends to the words a question names (``"saffron pear cake"``) and not to the
value that follows a few tokens later (``"175 degrees"``). With ``context > 0`` a chunk scores a blend of
its own score and the highest importance within ``context`` tokens on either side (``weight`` of the peak),
so a sentence right next to what the question points at ranks higher, while the chunk holding the peak
itself still ranks first. All functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["blend_context"]

FloatArray = npt.NDArray[np.float32]


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
