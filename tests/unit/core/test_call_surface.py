"""The call surface: split_call_kwargs, GenerationParams validation, finish reasons and load_engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from specprefill import UnknownArgumentError, load_engine, split_call_kwargs
from specprefill.backends.base import MAX_SEED, GenerationParams, finish_reason
from specprefill.engine.factory import same_model
from specprefill.errors import BackendError, ConfigurationError


def test_split_separates_generation_and_config() -> None:
    generation, overrides = split_call_kwargs({"max_tokens": 7, "temperature": 0.5, "keep_rate": 0.2, "stop": "x"})
    assert generation == {"max_new_tokens": 7, "temperature": 0.5, "stop": "x"}
    assert overrides == {"keep_rate": 0.2}
    assert split_call_kwargs({}) == ({}, {})


def test_max_tokens_and_max_new_tokens_agree_or_raise() -> None:
    assert split_call_kwargs({"max_tokens": 3, "max_new_tokens": 3})[0] == {"max_new_tokens": 3}
    with pytest.raises(UnknownArgumentError, match="both max_tokens"):
        split_call_kwargs({"max_new_tokens": 3, "max_tokens": 4})


def test_unknown_argument_is_typed_and_lists_what_is_accepted() -> None:
    with pytest.raises(UnknownArgumentError, match=r"X got unexpected argument\(s\) \['tools'\]") as info:
        split_call_kwargs({"tools": [], "keep_rate": 0.5}, caller="X")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigurationError)
    assert "keep_rate" in str(info.value) and "max_tokens" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("seed", 2**70),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", True),
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.0),
        ("max_new_tokens", True),
        ("stop", [1]),
        ("stop", 5),
    ],
)
def test_generation_params_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        GenerationParams(**{field: value})  # type: ignore[arg-type]


def test_generation_params_accept_the_boundaries() -> None:
    params = GenerationParams(max_new_tokens=1, temperature=0, top_p=1, seed=MAX_SEED, stop=("\n",))
    assert params.seed == 2**64 - 1
    assert GenerationParams(seed=0, top_p=1e-9).top_p == 1e-9
    assert GenerationParams(stop=["a", "b"]).stop == ("a", "b") and GenerationParams(stop="x").stop == ("x",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("eos", "stop"),
        ("length", "length"),
        ("max_tokens", "length"),
        ("content_filter", "content_filter"),
    ],
)
def test_finish_reasons_normalise(raw: str, expected: str) -> None:
    assert finish_reason(raw, source="s") == expected


@pytest.mark.parametrize("raw", [None, "", "abort"])
def test_missing_or_aborted_finish_is_an_error(raw: str | None) -> None:
    with pytest.raises(BackendError, match=r"cut off|aborted"):
        finish_reason(raw, source="the server")


def test_same_model_is_alias_aware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path))
    assert same_model("smollm2-135m", "SmolLM2") and same_model("default", "smollm2-135m-instruct")
    assert not same_model("smollm2-135m", "gemma3-270m")
    copy = tmp_path / "smollm2-135m-c46dacd7f8"
    copy.mkdir()
    assert same_model("smollm2-135m", copy) and same_model(str(copy), "embedded")
    assert not same_model("gemma3-270m", copy)
    other = tmp_path.parent / "elsewhere-smollm2-135m"
    assert not same_model("smollm2-135m", other)
    assert same_model("org/model", "org/model") and not same_model("org/model", "org/other")
    assert same_model(copy, str(copy) + "/")


def test_load_engine_takes_a_ready_base() -> None:
    from fakes import FakeSpeculator, recording_backend

    base = recording_backend()
    engine = load_engine(FakeSpeculator(), base=base)
    assert engine.base is base and engine.speculator_name == "char-spec"
