"""Passage-aligned chunk selection on tiny literal arrays."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index.postprocessor.specprefill.selection import passage_chunks, select_passage_chunks
from specprefill.errors import ConfigurationError


def _kept(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


def test_chunk_grid_restarts_at_every_passage() -> None:
    assert passage_chunks([(2, 7), (9, 12)], 2) == [(2, 4), (4, 6), (6, 7), (9, 11), (11, 12)]
    assert passage_chunks([], 4) == []
    assert passage_chunks([(0, 0), (0, 3)], 4) == [(0, 3)]


@pytest.mark.parametrize(("segments", "size"), [([(0, 4), (3, 6)], 2), ([(4, 6), (0, 2)], 2), ([(0, 4)], 0)])
def test_chunk_grid_rejects_bad_input(segments: list[tuple[int, int]], size: int) -> None:
    with pytest.raises(ConfigurationError):
        passage_chunks(segments, size)


def test_best_chunks_win_across_passages() -> None:
    #               header  | passage A     | sep | passage B
    imp = np.array([9, 9,     0, 0, 1, 1, 0,  9,    5, 5, 0, 0], dtype=np.float32)
    protected = np.array([1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    keep = select_passage_chunks(imp, [(2, 7), (8, 12)], protected, keep_rate=0.4, chunk_size=2)
    # 5 candidate chunks -> ceil(0.4 * 5) = 2: B[8:10] (5.0) then A[4:6] (1.0); protected always kept
    assert _kept(keep) == [0, 1, 4, 5, 7, 8, 9]


def test_protected_tokens_do_not_lift_their_chunk() -> None:
    """A chunk's score is the mean of its unprotected tokens: the protected 100 does not count."""
    imp = np.array([100, 0, 2, 2], dtype=np.float32)
    protected = np.array([1, 0, 0, 0], dtype=bool)
    keep = select_passage_chunks(imp, [(0, 4)], protected, keep_rate=0.5, chunk_size=2)
    assert _kept(keep) == [0, 2, 3]


def test_fully_protected_chunks_are_not_candidates_and_ties_go_first() -> None:
    imp = np.zeros(6, dtype=np.float32)
    protected = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    keep = select_passage_chunks(imp, [(0, 6)], protected, keep_rate=0.5, chunk_size=2)
    assert _kept(keep) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("cap", "expected"),
    [(0, []), (1, [3]), (2, [2, 3]), (3, [1, 2, 3]), (4, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 5])],
)
def test_token_cap_is_exact_and_keeps_a_contiguous_run(cap: int, expected: list[int]) -> None:
    imp = np.array([0, 3, 4, 5, 0, 1], dtype=np.float32)
    keep = select_passage_chunks(imp, [(0, 6)], np.zeros(6, dtype=bool), keep_rate=1.0, chunk_size=4,
                                 max_kept_tokens=cap)
    assert _kept(keep) == expected


def test_nan_scores_rank_last_and_tokens_outside_segments_stay_dropped() -> None:
    imp = np.array([np.nan, np.nan, 1, 1, 7, 7], dtype=np.float32)
    keep = select_passage_chunks(imp, [(0, 4)], np.zeros(6, dtype=bool), keep_rate=0.5, chunk_size=2)
    assert _kept(keep) == [2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [{"keep_rate": 0.0}, {"keep_rate": 1.01}, {"keep_rate": 0.5, "max_kept_tokens": -1}],
)
def test_bad_budgets_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        select_passage_chunks(np.zeros(4), [(0, 4)], np.zeros(4, dtype=bool), **kwargs)  # type: ignore[arg-type]


def test_shapes_must_match() -> None:
    with pytest.raises(ConfigurationError):
        select_passage_chunks(np.zeros(4), [(0, 4)], np.zeros(3, dtype=bool), keep_rate=0.5)
    with pytest.raises(ConfigurationError):
        select_passage_chunks(np.zeros(4), [(0, 8)], np.zeros(4, dtype=bool), keep_rate=0.5)
