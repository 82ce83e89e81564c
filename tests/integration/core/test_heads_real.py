"""Retrieval heads with the packaged speculator: the shipped profile, head-restricted scoring, calibration, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig, cli
from specprefill.cli import options
from specprefill.speculator.calibrate import calibrate_heads
from specprefill.speculator.heads import HeadProfile

pytestmark = [needs_model, pytest.mark.integration]

FACTS = " ".join(f"Crate {i} holds {i * 7 % 23} lanterns and sits in hall {i % 4}." for i in range(40))
PROMPT = FACTS + "\n\nQuestion: how many lanterns does crate 31 hold?"


def test_the_packaged_profile_selects_sixteen_heads(speculator: Any) -> None:
    assert speculator.head_profile is not None and speculator.attention_shape == (30, 9)
    chosen = speculator.head_selection(SpecPrefillConfig())
    assert chosen is not None and sum(len(h) for h in chosen.values()) == 16
    assert speculator.head_selection(SpecPrefillConfig(retrieval_heads=0)) is None
    assert speculator.head_selection(SpecPrefillConfig.paper()) is None


def test_scoring_with_fewer_heads_never_exceeds_all_heads(speculator: Any) -> None:
    # a max over a subset of the same rows is at most the max over all of them, token by token
    ids, _ = speculator.encode_with_specials(PROMPT)
    config = SpecPrefillConfig(min_prompt_tokens=0, lookahead=4, observation_window=8)
    every = speculator.score(ids, config.with_overrides(retrieval_heads=0)).importance
    best = speculator.score(ids, config).importance
    one = speculator.score(ids, config.with_overrides(retrieval_heads=1)).importance
    assert every.shape == best.shape == one.shape == (len(ids),)
    assert np.all(one <= best + 1e-6) and np.all(best <= every + 1e-6)
    assert float((every - best).max()) > 1e-3  # the restriction changes the scores


def test_head_scores_match_the_importance_of_one_head(speculator: Any) -> None:
    ids, _ = speculator.encode_with_specials(PROMPT)
    config = SpecPrefillConfig(min_prompt_tokens=0, lookahead=3, observation_window=4)
    table = speculator.head_scores(ids, config)
    assert table.shape == (30, 9, len(ids))
    layer, head = next((layer, heads[0]) for layer, heads in speculator.head_profile.top(1).items())
    saved = speculator.head_profile
    try:
        speculator.head_profile = HeadProfile("one", tuple(
            tuple(1.0 if (i, j) == (layer, head) else 0.0 for j in range(9)) for i in range(30)
        ))  # fmt: skip
        alone = speculator.score(ids, config.with_overrides(retrieval_heads=1)).importance
    finally:
        speculator.head_profile = saved
    np.testing.assert_allclose(alone, table[layer, head], rtol=1e-4, atol=1e-6)


def test_calibration_scores_every_head(speculator: Any) -> None:
    done: list[int] = []
    profile = calibrate_heads(speculator, samples=2, seed=5, progress=lambda i, n: done.append(i))
    assert done == [1, 2] and profile.model == "smollm2-135m" and (profile.layers, profile.heads) == (30, 9)
    scores = np.asarray(profile.scores)
    assert scores.min() >= 0 and scores.max() <= 1 and (scores >= 0.5).any()  # some head finds the answers


def test_heads_command_writes_a_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, speculator: Any
) -> None:
    monkeypatch.setattr(options, "load_speculator", lambda name, verbose: speculator)
    out = tmp_path / "profile.json"
    assert cli.main(["heads", "--samples", "1", "--out", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "30 layers x 9 heads" in printed and printed.count(", L") == 2
    assert HeadProfile.from_json(out.read_text(encoding="utf-8")).samples == 1


def test_window_queries_come_from_the_final_paragraph_of_the_last_message(speculator: Any) -> None:
    from specprefill.prompt.segments import final_paragraph_tokens

    messages = [
        {"role": "system", "content": "Answer from the notes."},
        {"role": "user", "content": FACTS + "\n\nHow many lanterns does crate 31 hold?"},
    ]
    config = SpecPrefillConfig(min_prompt_tokens=0, lookahead=4)
    prepared = speculator.prepare(messages, config=config)
    tail = final_paragraph_tokens(prepared.text, prepared.offsets, prepared.content_spans)
    assert tail is not None and 1 < tail < config.observation_window  # the question and the template after it
    r = speculator.prune(messages, config)
    assert r.stats.lookahead_queries == tail + len(r.lookahead_token_ids)
    plain = speculator.prune(messages, config.with_overrides(window_in_final_paragraph=False))
    assert plain.stats.lookahead_queries == config.observation_window + len(plain.lookahead_token_ids)
