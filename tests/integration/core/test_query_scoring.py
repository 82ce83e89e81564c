"""Observation-window queries and query reductions through the real speculator (prune and windowed scoring)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig

pytestmark = [needs_model, pytest.mark.integration]

FACTS = " ".join(f"Crate {i} holds {i * 7 % 23} lanterns and sits in hall {i % 4}." for i in range(60))
PROMPT = FACTS + "\nQuestion: how many lanterns does crate 31 hold, and which hall is it in?"


def test_window_queries_count_the_last_token_once(speculator: Any) -> None:
    ids, _ = speculator.encode_with_specials(PROMPT)
    cfg = SpecPrefillConfig(min_prompt_tokens=0, observation_window=24, lookahead=4, query_reduction="max")
    scored = speculator.score(ids, cfg)
    assert scored.queries == 24 + len(scored.lookahead_token_ids)
    only_window = speculator.score(ids, cfg.with_overrides(lookahead=1))
    assert only_window.queries == 24 and only_window.lookahead_token_ids == []
    # a window longer than the prompt is cut to the prompt
    short = speculator.score(ids[:16], cfg.with_overrides(lookahead=1))
    assert short.queries == 16 and short.importance.shape == (16,)


def test_max_is_at_least_mean_and_mix_lies_between(speculator: Any) -> None:
    ids, _ = speculator.encode_with_specials(PROMPT)
    base = SpecPrefillConfig(min_prompt_tokens=0, observation_window=16, lookahead=1, query_reduction="mean")
    mean = speculator.score(ids, base).importance
    top = speculator.score(ids, base.with_overrides(query_reduction="max")).importance
    mix = speculator.score(ids, base.with_overrides(query_reduction="mix", query_mix=0.25)).importance
    assert np.all(top >= mean - 1e-6) and float((top - mean).max()) > 1e-3
    np.testing.assert_allclose(mix, 0.25 * top + 0.75 * mean, rtol=1e-4, atol=1e-6)


def test_windowed_scoring_with_observation_window(speculator: Any) -> None:
    cfg = SpecPrefillConfig(max_speculator_tokens=256, keep_rate=0.25, observation_window=32, query_reduction="max")
    result = speculator.prune(PROMPT, cfg)
    n = result.original_length
    assert result.stats.windows >= 3
    assert result.importance is not None and result.importance.shape == (n,)
    assert np.all(np.isfinite(result.importance)) and result.stats.pruned and not result.stats.fallback
    assert result.stats.lookahead_queries == 32 + len(result.lookahead_token_ids)
