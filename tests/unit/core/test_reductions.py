"""Query reductions are a table: a new one is one function and one registry entry, here in this file."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from specprefill import SpecPrefillConfig
from specprefill.errors import ConfigurationError
from specprefill.scoring import reduce
from specprefill.scoring.reduce import FloatArray, importance_from_attention, reduction_names, register_reduction


def median_of_queries(rows: FloatArray, mix: float) -> FloatArray:
    """A new reduction: the median over the queries."""
    return np.median(rows, axis=0).astype(np.float32)


@pytest.fixture(autouse=True)
def fresh_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(reduce, "_REDUCTIONS", dict(reduce._REDUCTIONS))  # registrations end with the test
    yield


def test_a_registered_reduction_is_a_config_value_and_scores() -> None:
    with pytest.raises(ConfigurationError, match="query_reduction must be one of"):
        SpecPrefillConfig(query_reduction="median")
    register_reduction("median", median_of_queries)
    assert "median" in reduction_names()
    assert SpecPrefillConfig(query_reduction="median").query_reduction == "median"
    probs = np.zeros((1, 1, 3, 4), dtype=np.float32)  # [layers, heads, queries, N]
    probs[0, 0, :, 0] = [1.0, 0.0, 0.0]
    probs[0, 0, :, 1] = [0.0, 1.0, 1.0]
    probs[0, 0, :, 3] = [0.0, 0.0, 0.0]
    probs[0, 0, 0, 2] = 0.0
    out = importance_from_attention(probs, 1, query_reduction="median")
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 0.0])


def test_names_are_taken_once_unless_replaced() -> None:
    with pytest.raises(ConfigurationError, match="exists"):
        register_reduction("max", median_of_queries)
    register_reduction("max", median_of_queries, replace=True)
    with pytest.raises(ConfigurationError, match="non-empty"):
        register_reduction(" ", median_of_queries)


def test_a_reduction_of_the_wrong_shape_is_refused() -> None:
    register_reduction("flat", lambda rows, mix: rows.ravel())
    with pytest.raises(ConfigurationError, match="returned shape"):
        reduce.reduce_queries(np.ones((2, 3), dtype=np.float32), "flat")
