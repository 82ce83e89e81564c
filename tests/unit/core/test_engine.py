"""SpecPrefillEngine: request building, fallbacks, stats, streaming and async.

Unit tests over the shared fakes (no model, no sockets); the real model runs in
tests/integration/core/test_engine_real.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fakes import FakeSpeculator, recording_backend
from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseRequest, GenerationParams
from specprefill.engine import EngineChunk, EngineResult, EngineStats, SpecPrefillEngine
from specprefill.errors import ConfigurationError, EmptyPromptError, ModelLoadError, SpeculatorError
from specprefill.speculator.base import Speculator

PROMPT = "".join(f"line {i:03d}: filler text that does not matter much.\n" for i in range(12)) + "Question?"
CONFIG = SpecPrefillConfig(keep_rate=0.25, chunk_size=16, min_prompt_tokens=0, lookahead=1)


def engine(spec: Speculator | str | None = None, same: bool = True, **cfg: Any) -> SpecPrefillEngine:
    config = CONFIG.with_overrides(**cfg) if cfg else CONFIG
    return SpecPrefillEngine(spec if spec is not None else FakeSpeculator(), recording_backend(same), config)


# --- request building ---------------------------------------------------------------------------------------
def test_same_tokenizer_sends_kept_ids_at_original_positions():
    eng = engine()
    result = eng.generate(PROMPT, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    n = len(PROMPT)
    kept = result.prune.kept_indices.tolist()
    assert request.token_ids == [ord(PROMPT[i]) for i in kept]
    assert request.position_ids == kept and request.original_length == n
    assert kept[-1] == n - 1 and len(kept) < n  # the fake scores the end highest
    assert result.text == "ok!" and result.finish_reason == "length"
    s = result.stats
    assert s.positions == "original" and s.pruned and not s.fallback
    assert s.tokens_in == n and s.tokens_kept == len(kept) and s.keep_ratio == pytest.approx(len(kept) / n)
    assert s.base_prompt_tokens == len(kept) and s.completion_tokens == 3
    # from entering the engine to the first token: scoring, hand-over and the base's 0.25 s prefill
    assert s.speculator_seconds + 0.25 <= s.ttft_seconds
    assert 0 <= s.queue_seconds <= s.ttft_seconds - s.speculator_seconds - 0.25
    assert s.base_prefill_seconds == 0.25 and s.base_seconds == 0.5
    assert s.total_seconds >= s.speculator_seconds
    assert s.speculator == "char-spec" and s.base_model == "fake-base"


def test_other_tokenizer_sends_kept_text():
    eng = engine(same=False)
    result = eng.generate(PROMPT, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    assert request.token_ids is None and request.messages is None
    assert request.text == result.prune.text and "Question?" in request.text and len(request.text) < len(PROMPT)
    assert result.stats.positions == "compacted"


def test_other_tokenizer_sends_pruned_messages():
    eng = engine(same=False, protect_question_tokens=None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    result = eng.generate(messages, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    assert request.messages == result.prune.messages
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[0]["content"] == "Be brief."


def test_token_id_prompt_to_other_tokenizer_goes_as_decoded_text():
    eng = engine(same=False)
    ids = [ord(c) for c in PROMPT]
    result = eng.generate(ids, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    assert request.token_ids is None and request.text == result.prune.text


def test_short_prompt_goes_whole_with_full_positions():
    eng = engine(min_prompt_tokens=10_000)
    result = eng.generate(PROMPT, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    assert request.token_ids == [ord(c) for c in PROMPT] and request.position_ids == list(range(len(PROMPT)))
    assert result.stats.positions == "full" and not result.stats.pruned and not result.stats.fallback
    assert eng.speculator.calls == 0  # type: ignore[attr-defined]


def test_short_prompt_other_tokenizer_goes_as_original_text():
    eng = engine(same=False, min_prompt_tokens=10_000)
    result = eng.generate(PROMPT, max_new_tokens=5)
    assert eng.base.requests[0] == BaseRequest(text=PROMPT)  # type: ignore[attr-defined]
    assert result.stats.positions == "full" and result.output.positions == "full"


def test_generation_params_and_overrides_pass_through():
    eng = engine()
    eng.generate(PROMPT, max_new_tokens=7, temperature=0.5, top_p=0.9, stop="END", seed=3)
    assert eng.base.params[0] == GenerationParams(7, 0.5, 0.9, ("END",), 3)  # type: ignore[attr-defined]
    eng.generate(PROMPT, stop=["a", "b"])
    assert eng.base.params[1].stop == ("a", "b")  # type: ignore[attr-defined]
    small = eng.generate(PROMPT, keep_rate=0.1).stats.tokens_kept
    large = eng.generate(PROMPT, keep_rate=0.9).stats.tokens_kept
    assert small < large
    assert eng.config == CONFIG  # overrides do not stick
    with pytest.raises(ConfigurationError):
        eng.generate(PROMPT, keep_rate=0)
    with pytest.raises(ConfigurationError):
        eng.generate(PROMPT, no_such_field=1)
    with pytest.raises(ConfigurationError):
        eng.generate(PROMPT, max_new_tokens=0)


def test_prune_only():
    eng = engine()
    result = eng.prune(PROMPT, keep_rate=0.5)
    assert result.stats.pruned and eng.base.requests == []  # type: ignore[attr-defined]


def test_empty_prompt_is_an_error_not_a_fallback():
    with pytest.raises(EmptyPromptError):
        engine().generate("   ")


def test_constructor_checks_types():
    with pytest.raises(ConfigurationError):
        SpecPrefillEngine(FakeSpeculator(), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SpecPrefillEngine(42, recording_backend())  # type: ignore[arg-type]


# --- fallbacks ----------------------------------------------------------------------------------------------
def test_scoring_failure_sends_the_full_prompt(caplog: pytest.LogCaptureFixture):
    eng = engine(FakeSpeculator(fail=RuntimeError("out of memory")))
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        result = eng.generate(PROMPT, max_new_tokens=5)
    request = eng.base.requests[0]  # type: ignore[attr-defined]
    assert request.token_ids == [ord(c) for c in PROMPT]
    assert request.position_ids == list(range(len(PROMPT))) and request.original_length == len(PROMPT)
    s = result.stats
    assert s.fallback and not s.pruned and s.positions == "full"
    assert "out of memory" in (s.fallback_reason or "")
    assert s.tokens_kept == s.tokens_in == len(PROMPT) and s.keep_ratio == 1.0
    assert any(r.levelno == logging.WARNING and "full" in r.getMessage() for r in caplog.records)
    assert any(r.name == "specprefill.engine" for r in caplog.records)


def test_scoring_failure_other_tokenizer_sends_original_messages():
    eng = engine(FakeSpeculator(fail=RuntimeError("boom")), same=False)
    messages = [{"role": "user", "content": PROMPT}]
    result = eng.generate(messages)
    assert eng.base.requests[0] == BaseRequest(messages=messages)  # type: ignore[attr-defined]
    assert result.stats.fallback and result.stats.positions == "full"


def test_scoring_failure_without_fallback_raises():
    eng = engine(FakeSpeculator(fail=RuntimeError("boom")), fallback_on_error=False)
    with pytest.raises(SpeculatorError, match="boom"):
        eng.generate(PROMPT)
    assert eng.base.requests == []  # type: ignore[attr-defined]


def test_speculator_that_cannot_load_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import specprefill.speculator.loading

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ModelLoadError("weights not installed")

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", broken)
    eng = SpecPrefillEngine("missing-model", recording_backend(same=True), CONFIG)
    assert eng.speculator_name == "missing-model"
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        result = eng.generate(PROMPT, max_new_tokens=5)
    assert eng.base.requests[0] == BaseRequest(text=PROMPT)  # type: ignore[attr-defined]
    s = result.stats
    assert (
        s.fallback and not s.pruned and s.positions == "full" and "weights not installed" in (s.fallback_reason or "")
    )
    assert s.speculator == "missing-model"
    assert s.tokens_in == s.base_prompt_tokens == len(PROMPT)
    assert result.prune.stats.fallback and result.prune.original_length == len(PROMPT)
    assert any("unavailable" in r.getMessage() for r in caplog.records)

    strict = SpecPrefillEngine("missing-model", recording_backend(), CONFIG.with_overrides(fallback_on_error=False))
    with pytest.raises(ModelLoadError):
        strict.generate(PROMPT)


def test_named_speculator_loads_lazily_once(monkeypatch: pytest.MonkeyPatch):
    import specprefill.speculator.loading

    loads: list[str] = []

    def fake_load(name: str, **kwargs: Any) -> Speculator:
        loads.append(name)
        return FakeSpeculator()

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", fake_load)
    eng = SpecPrefillEngine("some-model", recording_backend(), CONFIG)
    assert loads == []
    eng.generate(PROMPT)
    eng.generate(PROMPT)
    assert loads == ["some-model"]
    assert eng.speculator_name == "char-spec"


# --- streaming and async ------------------------------------------------------------------------------------
def test_stream_assembles_chunks_and_ends_with_the_result():
    eng = engine()
    chunks = list(eng.stream(PROMPT, max_new_tokens=5))
    assert [c.text for c in chunks] == ["o", "k", "!"]
    assert all(c.result is None for c in chunks[:-1])
    result = chunks[-1].result
    assert isinstance(result, EngineResult)
    assert "".join(c.text for c in chunks) == result.text == "ok!"
    assert result.stats.positions == "original" and result.stats.pruned


async def test_agenerate_uses_aprune_and_agenerate():
    spec = FakeSpeculator()
    eng = engine(spec)
    result = await eng.agenerate(PROMPT, max_new_tokens=4)
    assert result.text == "ok!" and result.stats.pruned and spec.calls == 1
    assert eng.base.requests[0].position_ids == result.prune.kept_indices.tolist()  # type: ignore[attr-defined]


async def test_astream_and_async_fallback(caplog: pytest.LogCaptureFixture):
    eng = engine()
    chunks = [c async for c in eng.astream(PROMPT)]
    assert "".join(c.text for c in chunks) == "ok!" and chunks[-1].result is not None
    failing = engine(FakeSpeculator(fail=ValueError("bad")))
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        result = await failing.agenerate(PROMPT)
    assert result.stats.fallback and result.stats.positions == "full"


def test_stats_to_dict_has_every_field():
    result = engine().generate(PROMPT)
    data = result.stats.to_dict()
    assert set(data) == {
        "tokens_in", "tokens_kept", "keep_ratio", "base_prompt_tokens", "completion_tokens",
        "speculator_seconds", "base_prefill_seconds", "base_seconds", "ttft_seconds", "queue_seconds",
        "total_seconds",
        "positions", "pruned", "fallback", "fallback_reason", "speculator", "base_model",
    }  # fmt: skip
    assert isinstance(result.stats, EngineStats)
    with pytest.raises(AttributeError):
        result.stats.pruned = False  # type: ignore[misc]
    assert EngineChunk("x").result is None


def test_public_names():
    import specprefill
    import specprefill.backends
    import specprefill.engine

    assert specprefill.SpecPrefillEngine is SpecPrefillEngine
    assert specprefill.EngineResult is EngineResult and specprefill.EngineStats is EngineStats
    assert specprefill.GenerationParams is GenerationParams
    assert set(specprefill.engine.__all__) == {"EngineChunk", "EngineResult", "EngineStats", "SpecPrefillEngine"}
    for name in specprefill.backends.__all__:
        assert getattr(specprefill.backends, name) is not None


def test_import_specprefill_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, specprefill, specprefill.engine, specprefill.backends;"
        "print(sorted(m for m in ('torch', 'transformers', 'openai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
