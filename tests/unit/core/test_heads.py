"""Retrieval-head profiles: selection, JSON, lookup, calibration prompts, and the final-paragraph window."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from specprefill import ConfigurationError, SpecPrefillConfig
from specprefill.prompt.prepared import PreparedPrompt
from specprefill.prompt.segments import final_paragraph_tokens, scoring_config
from specprefill.speculator.calibrate import calibration_samples
from specprefill.speculator.heads import (
    PACKAGED_PROFILES,
    HeadProfile,
    find_profile,
    format_top,
    profile_files,
    profile_path,
    save_profile,
)

PROFILE = HeadProfile("tiny", ((0.1, 0.0, 0.5), (0.5, 0.2, 0.0)), samples=3, seed=1)


def test_explicit_exports() -> None:
    import specprefill.speculator.calibrate
    import specprefill.speculator.heads

    assert specprefill.speculator.heads.__all__ == [
        "PACKAGED_PROFILES",
        "HeadProfile",
        "find_profile",
        "format_top",
        "profile_files",
        "profile_path",
        "save_profile",
    ]
    assert specprefill.speculator.calibrate.__all__ == [
        "CALIBRATION_LOOKAHEAD",
        "CalibrationSample",
        "calibrate_heads",
        "calibration_samples",
    ]


def test_top_picks_the_best_heads_grouped_by_layer() -> None:
    assert PROFILE.layers == 2 and PROFILE.heads == 3
    assert PROFILE.top(1) == {0: (2,)}  # tie 0.5 / 0.5: the lower layer first
    assert PROFILE.top(2) == {0: (2,), 1: (0,)}
    assert PROFILE.top(3) == {0: (2,), 1: (0, 1)}
    assert PROFILE.top(4) == {0: (0, 2), 1: (0, 1)}
    assert PROFILE.top(99) == PROFILE.top(4)  # zero-score heads never come back
    assert PROFILE.top(0) == {}
    assert format_top(PROFILE, 2) == "L0.H2 0.50, L1.H0 0.50"


def test_profile_json_round_trip_and_bad_documents() -> None:
    again = HeadProfile.from_json(PROFILE.to_json())
    assert again == PROFILE
    with pytest.raises(ConfigurationError, match="not a head profile"):
        HeadProfile.from_json('{"model": "x"}')
    with pytest.raises(ConfigurationError, match="not a head profile"):
        HeadProfile.from_json("not json")
    with pytest.raises(ConfigurationError, match=r"\[layers\]\[heads\]"):
        HeadProfile("x", ((0.1, 0.2), (0.3,)))
    with pytest.raises(ConfigurationError, match=r"\[layers\]\[heads\]"):
        HeadProfile("x", ())
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigurationError, match=r"in \[0, 1\]"):
            HeadProfile("x", ((0.1, bad),))
    with pytest.raises(ConfigurationError, match="not a head profile"):
        HeadProfile.from_json('{"model": "x", "scores": [[0.1, NaN]]}')


def test_find_profile_prefers_the_cache_and_skips_other_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path))
    assert find_profile("tiny", 2, 3) is None and profile_files("tiny") == []
    path = save_profile(PROFILE)
    assert profile_files("tiny") == [path]
    assert path == profile_path("tiny") == tmp_path / "heads" / "tiny.json"
    assert find_profile("tiny", 2, 3) == PROFILE
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        assert find_profile("tiny", 30, 9) is None
    assert "2 layers x 3 heads" in caplog.text
    assert profile_path("org/model name") == tmp_path / "heads" / "org-model-name.json"
    path.write_text("{}", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        assert find_profile("tiny", 2, 3) is None
    assert "ignoring head profile" in caplog.text


def test_the_packaged_default_speculator_has_a_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path))  # no cached profile shadows the packaged one
    body = json.loads((PACKAGED_PROFILES / "smollm2-135m.json").read_text(encoding="utf-8"))
    assert profile_files("smollm2-135m") == [PACKAGED_PROFILES / "smollm2-135m.json"]
    profile = find_profile("smollm2-135m", 30, 9)
    assert profile is not None and profile.samples == body["samples"] >= 32
    scores = np.asarray(profile.scores)
    assert scores.shape == (30, 9) and scores.min() >= 0 and scores.max() <= 1
    assert sum(len(h) for h in profile.top(16).values()) == 16


def test_calibration_samples_are_deterministic_and_hold_their_answer_once() -> None:
    first = calibration_samples(5, seed=3)
    assert first == calibration_samples(5, seed=3) and first != calibration_samples(5, seed=4)
    for sample in first:
        text = "\n\n".join(sample.passages)
        assert len(sample.passages) >= 4 and text.count(sample.answer) == 1
        name = " ".join(sample.answer.split()[:2])
        assert name in sample.question and text.count(name + " ") == 1


def test_config_retrieval_heads_defaults_and_bounds() -> None:
    assert SpecPrefillConfig().retrieval_heads == 16 and SpecPrefillConfig.paper().retrieval_heads == 0
    assert SpecPrefillConfig().window_in_final_paragraph and not SpecPrefillConfig.paper().window_in_final_paragraph
    with pytest.raises(ConfigurationError, match="retrieval_heads"):
        SpecPrefillConfig(retrieval_heads=-1)


# --- the observation window's final paragraph ---------------------------------------------------------------
TEXT = "ab cd\n\nef gh"
OFFSETS = [(0, 2), (2, 5), (5, 7), (7, 9), (9, 12)]


def test_final_paragraph_tokens() -> None:
    assert final_paragraph_tokens(TEXT, OFFSETS) == 2  # "ef", " gh"
    assert final_paragraph_tokens("abc", [(0, 3)]) is None  # no blank line
    assert final_paragraph_tokens(TEXT, OFFSETS, content_spans=[(0, 5)]) is None  # only inside the last message
    assert final_paragraph_tokens(TEXT, OFFSETS, content_spans=[(0, 12)]) == 2
    assert final_paragraph_tokens(None, None) is None


@pytest.mark.parametrize(
    ("window", "enabled", "expected"), [(32, True, 2), (2, True, 2), (1, True, 1), (0, True, 0), (32, False, 32)]
)
def test_scoring_config_cuts_the_window_to_the_final_paragraph(window: int, enabled: bool, expected: int) -> None:
    prepared = PreparedPrompt(list(range(5)), np.zeros(5, dtype=np.bool_), text=TEXT, offsets=OFFSETS)
    config = SpecPrefillConfig(observation_window=window, window_in_final_paragraph=enabled)
    assert scoring_config(prepared, config).observation_window == expected
    ids_only = PreparedPrompt(list(range(5)), np.zeros(5, dtype=np.bool_))
    assert scoring_config(ids_only, config) == config
