"""Device-side position restoration in pure torch, and both runner hooks driven by fake runner objects.

No vLLM needed (torch only): a small simulator plays the scheduler (chunked prefill, mixed batches of pruned
and plain requests, preemption and resume, slot reuse, padding), and every step's restored positions are
compared with the pure-Python reference :meth:`PositionMap.positions`. These run in the default suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from specprefill.vllm_plugin import positions as pos
from specprefill.vllm_plugin.positions import PositionMap

torch = pytest.importorskip("torch")

from specprefill.vllm_plugin import mrv1, mrv2  # noqa: E402
from specprefill.vllm_plugin.torchmap import RunTable, restore_request  # noqa: E402


def expected(pmap: PositionMap | None, kv: np.ndarray) -> list[int]:
    return kv.tolist() if pmap is None else pmap.positions(kv).tolist()


# --- restore_request (V1 runner) ---------------------------------------------------------------------------
def test_restore_request_matches_reference_and_caches_tensors():
    pmap = PositionMap.from_positions([0, 1, 2, 40, 41, 90], 100)
    cache: dict[str, Any] = {}
    kv = torch.arange(0, 12)
    out = restore_request(kv, pmap, cache)
    assert out.dtype == torch.int64 and out.tolist() == expected(pmap, np.arange(12))
    first = cache["tensors"]
    restore_request(torch.tensor([3, 7]), pmap, cache)
    assert cache["tensors"] is first
    assert restore_request(torch.tensor([200]), pmap, max_position=150).tolist() == [150]


# --- RunTable (V2 runner): a scheduler simulator ------------------------------------------------------------
@dataclass
class _Req:
    slot: int
    prompt_len: int  # tokens vLLM sees (kept tokens)
    pmap: PositionMap | None
    computed: int = 0
    generated: int = 0


def _step(table: RunTable, batch: list[tuple[_Req, int]], pad_to: int | None = None) -> None:
    """One engine step: ``batch`` lists (request, tokens scheduled); checks every restored position."""
    counts = [n for _, n in batch]
    kv = np.concatenate([np.arange(r.computed, r.computed + n) for r, n in batch]).astype(np.int64)
    qsl = np.zeros(len(batch) + 1 + 3, dtype=np.int32)  # padded like a CUDA-graph batch
    qsl[1 : len(batch) + 1] = np.cumsum(counts)
    qsl[len(batch) + 1 :] = qsl[len(batch)]
    idx = torch.tensor([r.slot for r, _ in batch], dtype=torch.int64)
    out = table.restore_batch(torch.from_numpy(kv), idx, torch.from_numpy(qsl), len(batch))
    want: list[int] = []
    for r, n in batch:
        want += expected(r.pmap, np.arange(r.computed, r.computed + n))
        r.computed += n
    assert out.tolist() == want


def test_run_table_mixed_batches_chunked_prefill_preemption_and_slot_reuse():
    table = RunTable(num_slots=6, max_tokens=64, device="cpu")
    a = _Req(0, 70, PositionMap.from_positions(list(range(32)) + list(range(96, 128)) + list(range(300, 306)), 320))
    b = _Req(3, 20, None)  # plain request in the same batches
    c = _Req(5, 9, PositionMap.from_positions([2, 3, 4, 10, 11, 12, 13, 14, 50], 51))
    for r in (a, b, c):
        table.stage(r.slot, r.pmap)
    assert table.pending and not table.active
    table.commit()
    assert table.active and len(table) == 2 and table.get(3) is None

    _step(table, [(a, 30), (b, 20), (c, 9)])  # chunked prefill of a, whole prompts of b and c
    _step(table, [(a, 40), (b, 1), (c, 1)])  # a finishes its prompt (KV 30..69); b, c decode
    _step(table, [(a, 1), (b, 1), (c, 1)])  # all decode: a at N=320, c at 51 + 1
    assert a.computed == 71

    # preempt a: its slot is freed; on resume it re-prefills prompt + generated tokens (KV 0..70)
    table.stage(a.slot, None)
    table.commit()
    _step(table, [(b, 1)])
    a.slot, a.computed = 1, 0
    table.stage(a.slot, a.pmap)
    table.commit()
    _step(table, [(a, 64), (c, 1)])
    _step(table, [(a, 7), (b, 1)])  # the resumed generated token sits at KV 70 -> position 320
    assert table.restore(torch.tensor([70]), torch.tensor([1])).tolist() == [320]

    # slot reuse: c finishes, a plain request takes slot 5 and must get identity positions
    table.stage(c.slot, None)
    d = _Req(5, 12, None)
    table.stage(d.slot, None)
    table.commit()
    _step(table, [(d, 12), (a, 1)])
    assert len(table) == 1


def test_run_table_identity_when_empty_and_clamped():
    table = RunTable(num_slots=2, max_tokens=8, device="cpu", max_position=99)
    kv = torch.tensor([0, 1, 2, 5])
    assert table.restore_batch(kv, torch.tensor([0, 1]), torch.tensor([0, 2, 4], dtype=torch.int32), 2).tolist() == [
        0,
        1,
        2,
        5,
    ]
    table.stage(0, PositionMap.from_positions([0, 90], 95))
    table.stage(1, PositionMap.from_positions([0, 1], 2))  # identity: stored as nothing
    table.commit()
    assert len(table) == 1
    # KV 5 of slot 0 -> 95 + 3 = 98; KV 9 would be 102: clamped to the last valid position
    got = table.restore(torch.tensor([0, 1, 5, 9]), torch.tensor([0, 0, 0, 0])).tolist()
    assert got == [0, 90, 98, 99]
    # more tokens than the arange buffer still works
    many = torch.arange(20)
    assert table.restore_batch(many, torch.tensor([1]), torch.tensor([0, 20], dtype=torch.int32), 1).tolist() == list(
        range(20)
    )
    with pytest.raises(IndexError):
        table.stage(2, None)


# --- the V1 runner hook with a fake runner --------------------------------------------------------------------
def _config(max_model_len: int = 4096, **flags: Any) -> Any:
    return SimpleNamespace(
        model_config=SimpleNamespace(model="tiny", max_model_len=max_model_len, **flags),
        scheduler_config=SimpleNamespace(max_num_seqs=4, max_num_batched_tokens=32),
        speculative_config=None,
    )


def _new(req_id: str, pmap: PositionMap | None, max_tokens: int = 8) -> Any:
    extra = pmap.to_xargs() if pmap is not None else None
    return SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra, max_tokens=max_tokens))


def test_mrv1_rewrite_positions_only_touches_pruned_requests():
    pmap = PositionMap.from_positions([0, 1, 2, 10, 11], 20)
    runner = SimpleNamespace(vllm_config=_config(), input_batch=SimpleNamespace(req_ids=["plain", "pruned"]))
    # step 1: both prefill (KV indices as the runner computed them)
    runner.positions = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 99, 99])  # padded tail must stay
    out = SimpleNamespace(scheduled_new_reqs=[_new("plain", None), _new("pruned", pmap)], finished_req_ids=set())
    assert mrv1.rewrite_positions(runner, out, np.array([3, 5])) == 1
    assert runner.positions.tolist() == [0, 1, 2, 0, 1, 2, 10, 11, 99, 99]
    # step 2: decode; the batch order changed
    runner.input_batch.req_ids = ["pruned", "plain"]
    runner.positions = torch.tensor([5, 3])
    assert mrv1.rewrite_positions(runner, SimpleNamespace(scheduled_new_reqs=[], finished_req_ids=set()), [1, 1]) == 1
    assert runner.positions.tolist() == [20, 3]
    status = mrv1.runner_status(runner)
    assert status["pruned_requests"] == 1 and status["steps_rewritten"] == 2
    # finished: forgotten, and a batch without pruned requests costs nothing
    done = SimpleNamespace(scheduled_new_reqs=[], finished_req_ids={"pruned"})
    runner.input_batch.req_ids = ["plain"]
    runner.positions = torch.tensor([4])
    assert mrv1.rewrite_positions(runner, done, [1]) == 0
    assert runner.positions.tolist() == [4] and mrv1.runner_status(runner)["pruned_requests"] == 0


def test_mrv1_refuses_unsupported_models_and_bad_requests(caplog: pytest.LogCaptureFixture):
    pmap = PositionMap.from_positions([0, 5], 10)
    runner = SimpleNamespace(vllm_config=_config(uses_mrope=True), input_batch=SimpleNamespace(req_ids=["a"]))
    runner.positions = torch.tensor([0, 1])
    out = SimpleNamespace(scheduled_new_reqs=[_new("a", pmap)], finished_req_ids=set())
    assert mrv1.rewrite_positions(runner, out, [2]) == 0 and runner.positions.tolist() == [0, 1]
    assert mrv1.runner_status(runner)["reason"].endswith("M-RoPE (multi-dimensional positions)")

    runner = SimpleNamespace(vllm_config=_config(max_model_len=8), input_batch=SimpleNamespace(req_ids=["b", "c"]))
    runner.positions = torch.tensor([0, 1, 0, 1])
    bad = _new("c", None)
    bad.sampling_params.extra_args = {pos.XARG_RUNS: [0, 2, 1, 1], pos.XARG_LENGTH: 5}  # overlapping runs
    out = SimpleNamespace(scheduled_new_reqs=[_new("b", pmap), bad], finished_req_ids=set())
    assert mrv1.rewrite_positions(runner, out, [2, 2]) == 0  # too long for max_model_len=8, and malformed
    assert runner.positions.tolist() == [0, 1, 0, 1]
    assert "max_model_len=8" in caplog.text and "malformed" in caplog.text


# --- the V2 runner hook: the ModelState mixin over a fake base state -----------------------------------------
class _FakeState:
    def __init__(self, vllm_config: Any, model: Any, encoder_cache: Any, device: Any) -> None:
        self.calls: list[str] = []
        self.mrope = False

    def add_request(self, req_index: int, new_req_data: Any) -> None:
        self.calls.append(f"add {req_index}")

    def remove_request(self, req_id: str) -> None:
        self.calls.append(f"remove {req_id}")

    def apply_staged_writes(self) -> None:
        self.calls.append("apply")

    def prepare_inputs(self, input_batch: Any, req_states: Any) -> dict[str, Any]:
        return {"positions": "mrope"} if self.mrope else {}

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        return {"inputs_embeds": None}


def _batch(kv: list[int], slots: list[int], counts: list[int], padded: int) -> Any:
    qsl = np.zeros(len(counts) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum(counts)
    positions = torch.zeros(padded, dtype=torch.int64)
    positions[: len(kv)] = torch.tensor(kv)
    return SimpleNamespace(
        positions=positions,
        idx_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.from_numpy(qsl),
        num_reqs=len(counts),
        num_tokens=len(kv),
        num_tokens_after_padding=padded,
    )


def test_mrv2_model_state_supplies_restored_positions_from_a_persistent_buffer():
    cls = mrv2.state_class(_FakeState)
    assert mrv2.state_class(_FakeState) is cls and cls.__name__ == "SpecPrefill_FakeState"
    state = cls(_config(), None, None, "cpu")
    assert state.specprefill_supported
    pmap = PositionMap.from_positions([0, 1, 7, 8], 12)
    state.add_request(2, _new("pruned", pmap))
    state.add_request(0, _new("plain", None))
    state.apply_staged_writes()
    assert state.calls == ["add 2", "add 0", "apply"]

    dummy = state.prepare_dummy_inputs(2, 8)["positions"]
    # chunked prefill: the pruned request's first 3 kept tokens, the plain request's prompt of 4; padded to 8
    inputs = state.prepare_inputs(_batch([0, 1, 2, 0, 1, 2, 3], [2, 0], [3, 4], padded=8), None)
    positions = inputs["positions"]
    assert positions.data_ptr() == dummy.data_ptr()  # same buffer as CUDA-graph capture
    assert positions.tolist() == [0, 1, 7, 0, 1, 2, 3, 0]
    # next step: last kept token + plain decode, then decode of the pruned request continues at N=12
    assert state.prepare_inputs(_batch([3, 4], [2, 0], [1, 1], 2), None)["positions"].tolist() == [8, 4]
    assert state.prepare_inputs(_batch([4, 5], [2, 0], [1, 1], 2), None)["positions"].tolist() == [12, 5]
    status = mrv2.runner_status(SimpleNamespace(model_state=state))
    assert status["active"] and status["pruned_requests"] == 1 and status["steps_rewritten"] == 3

    # removal without a following apply_staged_writes (no new requests that step) still takes effect
    state.remove_request("pruned")
    assert state.prepare_inputs(_batch([5], [2], [1], 1), None)["positions"].tolist() == [5]
    assert mrv2.runner_status(SimpleNamespace(model_state=state))["pruned_requests"] == 0


def test_mrv2_model_state_leaves_mrope_positions_and_refuses_unsupported_models():
    cls = mrv2.state_class(_FakeState)
    state = cls(_config(), None, None, "cpu")
    state.mrope = True
    assert state.prepare_inputs(_batch([0], [0], [1], 1), None) == {"positions": "mrope"}
    window = SimpleNamespace(get_sliding_window=lambda: 512)
    config = _config()
    config.model_config.get_sliding_window = window.get_sliding_window
    refused = cls(config, None, None, "cpu")
    assert not refused.specprefill_supported and "sliding-window" in refused.specprefill_reason
    refused.add_request(0, _new("x", PositionMap.from_positions([0, 5], 9)))
    refused.apply_staged_writes()
    assert refused.prepare_inputs(_batch([0, 1], [0], [2], 2), None)["positions"].tolist() == [0, 1]
    assert not mrv2.runner_status(SimpleNamespace(model_state=refused))["active"]
