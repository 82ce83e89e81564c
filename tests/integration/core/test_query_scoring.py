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


def test_demo_question_keeps_both_facts_at_the_default_keep_rate(speculator: Any) -> None:
    """``make demo``: the prompt ``specprefill ask`` builds, pruned with its config, keeps both answer facts.

    The sentence with "175 degrees" gets little attention from the 135M speculator itself; the default chunk
    context lifts it because it follows the saffron sentence the question points at, and sentence completion
    takes in the rest of the sentence a kept chunk ends in: without both it is dropped.
    """
    from pathlib import Path

    from specprefill.prompt.documents import ask_messages, load_documents, question_tail

    question = "How long is the saffron pear cake baked, and at what temperature?"
    docs = load_documents(Path(__file__).resolve().parents[3] / "examples" / "documents")
    config = SpecPrefillConfig()  # as `specprefill ask` without options
    scored = speculator.score_prompt(ask_messages(docs, question), config)
    # the question, and nothing of the documents before it, is protected (as `specprefill ask` protects it)
    question_part = question_tail(question).strip()
    protected_text = "".join(scored.text[s:e] for (s, e), p in zip(scored.offsets, scored.protected, strict=True) if p)
    assert question_part in protected_text and "[source:" not in protected_text
    assert config.keep_rate == 0.3
    kept = speculator.select(scored, config).text
    assert "48 minutes" in kept and "175 degrees" in kept
    assert "175 degrees" in speculator.select(scored, config, chunk_context=0).text  # completion alone
    assert "175 degrees" not in speculator.select(scored, config, chunk_context=0, complete_tokens=0).text
    assert scored.n_tokens > 5000 and len(speculator.select(scored, config).kept_indices) < 0.4 * scored.n_tokens


def test_a_registered_reduction_runs_in_the_model_path(speculator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The speculator's torch path reduces its queries through the same table as the reference."""
    from specprefill.scoring import reduce

    monkeypatch.setattr(reduce, "_REDUCTIONS", dict(reduce._REDUCTIONS))
    shapes: list[tuple[int, ...]] = []

    def recorded_max(rows: Any, mix: float) -> Any:
        shapes.append(rows.shape)
        return rows.max(axis=0)

    reduce.register_reduction("recorded_max", recorded_max)
    ids = speculator.encode("The key is under the blue stone by the door. Where is the key?")[0] * 4
    config = SpecPrefillConfig(lookahead=2, observation_window=4, retrieval_heads=0)
    plain = speculator.token_importance(ids, config.with_overrides(query_reduction="max"))
    got = speculator.token_importance(ids, config.with_overrides(query_reduction="recorded_max"))
    assert shapes == [(5, len(ids))]  # 4 window queries + 1 look-ahead query, each over every prompt token
    np.testing.assert_array_equal(got, plain)


def test_window_only_scoring_skips_the_layers_after_the_deepest_retrieval_head(
    speculator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With look-ahead 1 no logits are read, so the prefill stops after the profile's deepest layer; the
    importance is exactly what a full-depth pass gives."""
    import specprefill.speculator.hf as hf

    ids, _ = speculator.encode_with_specials(PROMPT)
    cfg = SpecPrefillConfig(min_prompt_tokens=0, lookahead=1)
    deepest = max(speculator.head_selection(cfg))
    layers = speculator.model.model.layers
    assert deepest < len(layers) - 1  # the packaged profile leaves deeper layers unused
    calls = [0] * len(layers)
    hooks = [
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        early = speculator.score(ids, cfg).importance
        ran_early = list(calls)
        speculator.score(ids, cfg.with_overrides(lookahead=2))  # the decode step needs logits: every layer runs
        ran_lookahead = [c - e for c, e in zip(calls, ran_early, strict=True)]
        real = hf.Recorder
        monkeypatch.setattr(hf, "Recorder", lambda *a, stop_early=False, **k: real(*a, **k))
        full = speculator.score(ids, cfg).importance
    finally:
        for hook in hooks:
            hook.remove()
    assert ran_early == [1] * (deepest + 1) + [0] * (len(layers) - deepest - 1)
    assert min(ran_lookahead) == 2  # prefill and one decode step
    np.testing.assert_array_equal(early, full)
