"""Character spans <-> token offsets, and the kept text built from spans."""

from __future__ import annotations

import numpy as np
import pytest

from specprefill.spans import char_spans_to_token_mask, cut_spans, join_spans, kept_char_spans, merge_spans


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([], []),
        ([(3, 5)], [(3, 5)]),
        ([(5, 7), (1, 3)], [(1, 3), (5, 7)]),  # sorted
        ([(1, 4), (3, 6)], [(1, 6)]),  # overlap
        ([(1, 3), (3, 5)], [(1, 5)]),  # touching
        ([(1, 10), (2, 3)], [(1, 10)]),  # contained
        ([(2, 2), (4, 3)], []),  # empty and reversed spans dropped
        ([(0, 2), (2, 2), (5, 6)], [(0, 2), (5, 6)]),
    ],
)
def test_merge_spans(spans: list[tuple[int, int]], expected: list[tuple[int, int]]) -> None:
    assert merge_spans(spans) == expected


def test_char_spans_to_token_mask_overlap() -> None:
    #             "Hello"  " big"   " world"
    offsets = [(0, 5), (5, 9), (9, 15)]
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(6, 7)]), [False, True, False])
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(4, 6)]), [True, True, False])
    # a span that ends exactly where a token starts does not touch it
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(0, 5)]), [True, False, False])
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, []), [False, False, False])
    assert char_spans_to_token_mask([], [(0, 3)]).shape == (0,)


def test_char_spans_to_token_mask_zero_width_special_tokens() -> None:
    # BOS at (0, 0), text tokens, an EOS-like special at (15, 15)
    offsets = [(0, 0), (0, 5), (5, 9), (9, 15), (15, 15)]
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(0, 3)]), [True, True, False, False, False])
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(6, 15)]), [False, False, True, True, False])
    # a zero-width token strictly inside a span
    offsets = [(0, 3), (3, 3), (3, 6)]
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(2, 4)]), [True, True, True])
    np.testing.assert_array_equal(char_spans_to_token_mask(offsets, [(0, 3)]), [True, False, False])


def test_kept_char_spans_merges_runs() -> None:
    offsets = [(0, 0), (0, 5), (5, 9), (9, 15), (15, 20)]
    assert kept_char_spans(offsets, [0, 1, 2]) == [(0, 9)]
    assert kept_char_spans(offsets, [1, 3]) == [(0, 5), (9, 15)]
    assert kept_char_spans(offsets, [0]) == []  # zero-width only
    assert kept_char_spans(offsets, []) == []


def test_kept_char_spans_bridges_offsets_that_skip_white_space() -> None:
    # some tokenizers leave the space out of the offsets: "Hello big world" -> (0,5) (6,9) (10,15)
    offsets = [(0, 5), (6, 9), (10, 15)]
    assert kept_char_spans(offsets, [0, 1]) == [(0, 9)]
    assert kept_char_spans(offsets, [0, 2]) == [(0, 5), (10, 15)]
    text = "Hello big world"
    assert join_spans(text, kept_char_spans(offsets, [0, 1]), " … ") == "Hello big …"


def test_kept_char_spans_ignores_trailing_zero_width_special() -> None:
    # an EOS appended with offsets (0, 0) must not stretch the last run back to the start
    offsets = [(0, 5), (5, 9), (9, 15), (0, 0)]
    assert kept_char_spans(offsets, [2, 3]) == [(9, 15)]


def test_join_spans_markers() -> None:
    text = "0123456789"
    assert join_spans(text, [(0, 10)], " … ") == text
    assert join_spans(text, [(0, 3), (5, 7)], " … ") == "012 … 56 …"  # trailing drop: marker, no padding after
    assert join_spans(text, [(2, 4), (8, 10)], " … ") == "… 23 … 89"  # leading drop
    assert join_spans(text, [(0, 3), (5, 10)], "") == "01256789"
    assert join_spans(text, [(2, 4)], "") == "23"
    assert join_spans(text, [], " … ") == ""


def test_cut_spans() -> None:
    assert cut_spans([(0, 4), (6, 9), (12, 20)], (3, 14)) == [(0, 1), (3, 6), (9, 11)]
    assert cut_spans([(0, 2)], (5, 9)) == []
