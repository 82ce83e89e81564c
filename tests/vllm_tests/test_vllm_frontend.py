"""The front-end hook over a fake input processor (no vLLM): checks before work, salt enforcement, install.

These run in the default suite.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest

from specprefill.vllm_plugin import frontend
from specprefill.vllm_plugin.common import VLLMPluginError
from specprefill.vllm_plugin.guard import PLAIN_SALT_PREFIX, PositionMapRejectedError
from specprefill.vllm_plugin.positions import XARG_LENGTH, XARG_RUNS, PositionMap, cache_salt

PMAP = PositionMap.from_positions([0, 1, 2, 10, 11], 20)


class FakeProcessor:
    """Stands in for vLLM's InputProcessor: tokenises text prompts as one token per word."""

    def __init__(self, max_model_len: int = 64) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.calls: list[str] = []

    def process_inputs(self, request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(request_id)
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else list(range(len(str(prompt).split())))
        salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        return SimpleNamespace(request_id=request_id, prompt_token_ids=ids, cache_salt=salt, params=params)


def params(extra: Any) -> Any:
    return SimpleNamespace(extra_args=extra)


def run(processor: FakeProcessor, prompt: Any, extra: Any, request_id: str = "r") -> Any:
    return frontend.guard_request(
        processor, prompt, params(extra), lambda: processor.process_inputs(request_id, prompt, params(extra))
    )


def test_a_valid_map_gets_the_derived_salt_even_over_a_client_salt() -> None:
    proc = FakeProcessor()
    req = run(proc, {"prompt_token_ids": [5, 6, 7, 8, 9], "cache_salt": "tenant"}, PMAP.to_xargs())
    assert req.cache_salt == cache_salt(PMAP, "tenant")
    req = run(proc, {"prompt_token_ids": [5, 6, 7, 8, 9]}, PMAP.to_xargs())
    assert req.cache_salt == cache_salt(PMAP)


def test_a_hostile_map_is_refused_before_the_processor_runs() -> None:
    proc = FakeProcessor()
    hostile = {XARG_RUNS: [0, 1] * 5_000_000, XARG_LENGTH: 20}
    with pytest.raises(PositionMapRejectedError, match="5000000 runs"):
        run(proc, {"prompt_token_ids": [1, 2, 3]}, hostile)
    for bad in ({XARG_RUNS: [0, 3], XARG_LENGTH: float("nan")}, {XARG_RUNS: [0, 3], XARG_LENGTH: 65}):
        with pytest.raises(PositionMapRejectedError):
            run(proc, {"prompt_token_ids": [1, 2, 3]}, bad)
    with pytest.raises(ValueError, match="keeps 5 tokens but the prompt has 3"):  # ValueError -> HTTP 400
        run(proc, {"prompt_token_ids": [1, 2, 3]}, PMAP.to_xargs())
    assert proc.calls == []


def test_a_text_prompt_is_checked_again_once_tokenised() -> None:
    proc = FakeProcessor()
    assert run(proc, "one two three four five", PMAP.to_xargs()).cache_salt == cache_salt(PMAP)
    with pytest.raises(PositionMapRejectedError, match="keeps 5 tokens but the prompt has 2"):
        run(proc, "one two", PMAP.to_xargs())


def test_plain_requests_cannot_borrow_a_derived_salt() -> None:
    proc = FakeProcessor()
    stolen = cache_salt(PMAP)
    req = run(proc, {"prompt_token_ids": [5, 6, 7, 8, 9], "cache_salt": stolen}, None)
    assert req.cache_salt.startswith(PLAIN_SALT_PREFIX) and req.cache_salt != stolen
    assert run(proc, {"prompt_token_ids": [5], "cache_salt": "tenant"}, {"other": 1}).cache_salt == "tenant"
    assert run(proc, {"prompt_token_ids": [5]}, None).cache_salt is None


def test_older_tuple_results_are_handled() -> None:
    proc = FakeProcessor()
    request = SimpleNamespace(prompt_token_ids=[1, 2, 3, 4, 5], cache_salt=None)
    result = frontend.guard_request(
        proc, {"prompt_token_ids": [1] * 5}, params(PMAP.to_xargs()), lambda: ("p", request)
    )
    assert result == ("p", request) and request.cache_salt == cache_salt(PMAP)


def test_install_wraps_process_inputs_once_and_uninstall_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    class Processor(FakeProcessor):
        pass

    module = types.ModuleType("vllm.v1.engine.input_processor")
    module.InputProcessor = Processor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.input_processor", module)
    original = Processor.process_inputs
    frontend.install()
    frontend.install()  # idempotent
    try:
        assert frontend.installed()
        assert Processor.process_inputs.__wrapped__ is original  # type: ignore[attr-defined]
        proc = Processor()
        req = proc.process_inputs("a", {"prompt_token_ids": [1, 2, 3, 4, 5]}, params(PMAP.to_xargs()))
        assert req.cache_salt == cache_salt(PMAP)
        with pytest.raises(PositionMapRejectedError):
            proc.process_inputs("b", {"prompt_token_ids": [1]}, params(PMAP.to_xargs()))
        assert proc.calls == ["a"]
    finally:
        frontend.uninstall()
    assert Processor.process_inputs is original
    assert not frontend.installed()


def test_a_missing_hook_point_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name, _ in frontend.HOOK_POINTS:
        monkeypatch.setitem(sys.modules, module_name, types.ModuleType(module_name))
    with pytest.raises(VLLMPluginError, match="process_inputs is missing"):
        frontend.install()
    assert not frontend.installed()


def test_with_vllm_a_rejection_is_also_vllms_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """AsyncLLM.generate turns a plain ValueError into an HTTP 500; VLLMValidationError becomes a 400."""

    class VLLMValidationError(ValueError):
        def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
            super().__init__(message)
            self.parameter = parameter

    fake = types.ModuleType("vllm.exceptions")
    fake.VLLMValidationError = VLLMValidationError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.exceptions", fake)
    monkeypatch.setattr(frontend, "_client_error_class", frontend._client_error_class.__wrapped__)
    with pytest.raises(VLLMValidationError) as info:
        run(FakeProcessor(), {"prompt_token_ids": [1, 2, 3]}, PMAP.to_xargs())
    assert isinstance(info.value, PositionMapRejectedError)
    assert info.value.parameter == "vllm_xargs" and "keeps 5 tokens" in str(info.value)


def test_without_vllm_the_plain_rejection_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm.exceptions", None)  # import fails
    monkeypatch.setattr(frontend, "_client_error_class", frontend._client_error_class.__wrapped__)
    with pytest.raises(PositionMapRejectedError) as info:
        run(FakeProcessor(), {"prompt_token_ids": [1, 2, 3]}, PMAP.to_xargs())
    assert type(info.value) is PositionMapRejectedError
