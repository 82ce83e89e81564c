"""SpecPrefillConfig: defaults, bounds, typed errors that name the field, immutability."""

from __future__ import annotations

import math
from typing import Any

import pytest

from specprefill import ConfigurationError, SpecPrefillConfig, SpecPrefillError


def test_defaults_are_the_paper_scoring_plus_window_max_sentence_grid_and_chunk_context() -> None:
    cfg = SpecPrefillConfig()
    assert cfg.keep_rate == 0.3
    assert cfg.chunk_size == 32
    assert cfg.lookahead == 4
    assert SpecPrefillConfig.paper().lookahead == 8
    assert cfg.pool_kernel == 13
    assert (cfg.observation_window, cfg.query_reduction, cfg.segment_by) == (32, "max", "sentences")
    assert (cfg.chunk_context, cfg.context_weight) == (8, 0.3)  # keeps both facts of the demo question
    assert (cfg.complete_tokens, cfg.lexical_weight) == (16, 0.5)  # sentence completion, question words
    assert cfg.max_kept_tokens is None
    assert cfg.protect_template is True
    assert cfg.protected_count_toward_budget is False
    assert cfg.fallback_on_error is True


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, SpecPrefillError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keep_rate", 0.0),
        ("keep_rate", -0.5),
        ("keep_rate", 1.5),
        ("keep_rate", math.nan),
        ("keep_rate", "lots"),
        ("chunk_size", 0),
        ("chunk_size", 1.5),
        ("lookahead", 0),
        ("lookahead", 65),
        ("pool_kernel", 0),
        ("pool_kernel", 2),
        ("pool_kernel", 12),
        ("max_kept_tokens", 0),
        ("min_prompt_tokens", -1),
        ("protect_system_tokens", -1),
        ("protect_question_tokens", -3),
        ("max_speculator_tokens", 10),
        ("window_query_tokens", 0),
        ("complete_next", "sometimes"),
        ("lexical_fusion", -1),
    ],
)
def test_out_of_bounds_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=field):
        SpecPrefillConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keep_rate", 1.0),
        ("keep_rate", 1e-6),
        ("pool_kernel", 1),
        ("chunk_size", 1),
        ("lookahead", 1),
        ("min_prompt_tokens", 0),
        ("protect_question_tokens", 0),
        ("protect_system_tokens", None),
    ],
)
def test_boundary_values_accepted(field: str, value: Any) -> None:
    assert getattr(SpecPrefillConfig(**{field: value}), field) == value


def test_even_pool_kernel_message_says_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"pool_kernel must be odd.*13"):
        SpecPrefillConfig(pool_kernel=4)


def test_extra_fields_forbidden() -> None:
    with pytest.raises(ConfigurationError, match="keeprate"):
        SpecPrefillConfig(keeprate=0.1)


def test_with_overrides_validates_and_copies() -> None:
    base = SpecPrefillConfig()
    changed = base.with_overrides(keep_rate=0.1, chunk_size=16)
    assert (changed.keep_rate, changed.chunk_size) == (0.1, 16)
    assert base.keep_rate == 0.3
    assert base.with_overrides() is base
    assert base.with_overrides(keep_rate=None) is base  # None means "not given"
    with pytest.raises(ConfigurationError, match="keep_rate"):
        base.with_overrides(keep_rate=0)
    with pytest.raises(ConfigurationError, match="keep_rate"):
        base.with_overrides(keep_rate=2.0)
    with pytest.raises(ConfigurationError, match="pool_kernel"):
        base.with_overrides(pool_kernel=8)
    with pytest.raises(ConfigurationError, match=r"unknown .*bogus"):
        base.with_overrides(bogus=1)


def test_immutable_with_typed_error() -> None:
    cfg = SpecPrefillConfig()
    with pytest.raises(ConfigurationError, match="with_overrides"):
        cfg.keep_rate = 0.5  # type: ignore[misc]
    assert cfg.keep_rate == 0.3
    assert cfg == SpecPrefillConfig() and hash(cfg) == hash(SpecPrefillConfig())


def test_model_validate_paths_raise_configuration_error() -> None:
    assert SpecPrefillConfig.model_validate({"keep_rate": 0.2}).keep_rate == 0.2
    assert SpecPrefillConfig.model_validate_json('{"chunk_size": 16}').chunk_size == 16
    with pytest.raises(ConfigurationError, match="keep_rate"):
        SpecPrefillConfig.model_validate({"keep_rate": 0})
    with pytest.raises(ConfigurationError, match="keep_rate"):
        SpecPrefillConfig.model_validate_json('{"keep_rate": 7}')
    with pytest.raises(ConfigurationError, match="JSON"):
        SpecPrefillConfig.model_validate_json("{not json")
    with pytest.raises(ConfigurationError):
        SpecPrefillConfig.model_validate(5)


def test_round_trip_through_dict_and_json() -> None:
    cfg = SpecPrefillConfig(keep_rate=0.15, max_kept_tokens=500, gap_marker="...")
    assert SpecPrefillConfig(**cfg.model_dump()) == cfg
    assert SpecPrefillConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_every_field_documented() -> None:
    for name, info in SpecPrefillConfig.model_fields.items():
        assert info.description, f"field {name} has no docstring"
        assert len(info.description) > 15, name
    assert SpecPrefillConfig.__doc__
    assert SpecPrefillConfig.with_overrides.__doc__


# --- query-aware scoring fields and the paper preset ----------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("observation_window", -1),
        ("observation_window", 4097),
        ("query_reduction", "median"),
        ("query_mix", -0.1),
        ("query_mix", 1.5),
        ("query_mix", math.nan),
    ],
)
def test_query_fields_out_of_bounds_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=field):
        SpecPrefillConfig(**{field: value})


def test_observation_window_must_fit_the_windowed_query_tail() -> None:
    with pytest.raises(ConfigurationError, match=r"observation_window .*window_query_tokens"):
        SpecPrefillConfig(observation_window=64, window_query_tokens=32)
    assert SpecPrefillConfig(observation_window=32, window_query_tokens=32).observation_window == 32


def test_paper_preset_is_the_full_lah_algorithm() -> None:
    paper = SpecPrefillConfig.paper()
    assert (paper.chunk_size, paper.lookahead, paper.pool_kernel) == (32, 8, 13)
    assert (paper.observation_window, paper.query_reduction) == (0, "mean")
    assert paper.segment_by == "none"
    assert SpecPrefillConfig(segment_by="sentences").paper().segment_by == "none"
    assert paper.keep_rate == SpecPrefillConfig().keep_rate


def test_paper_preset_takes_overrides_and_validates_them() -> None:
    cfg = SpecPrefillConfig.paper(keep_rate=0.1, observation_window=32)
    assert (cfg.keep_rate, cfg.observation_window, cfg.lookahead) == (0.1, 32, 8)
    with pytest.raises(ConfigurationError, match="lookahead"):
        SpecPrefillConfig.paper(lookahead=0)
    with pytest.raises(ConfigurationError, match="not_a_field"):
        SpecPrefillConfig.paper(not_a_field=1)
