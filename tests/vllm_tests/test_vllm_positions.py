"""Pure position logic of the vLLM plugin (no vLLM, no torch): runs encoding, position map, salts, probe.

These run in the default suite.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from specprefill.errors import PromptError
from specprefill.vllm_plugin import positions as pos
from specprefill.vllm_plugin.positions import PositionMap, PositionSpecError


def test_importing_the_plugin_imports_neither_vllm_nor_torch():
    import subprocess

    code = (
        "import sys, specprefill, specprefill.vllm_plugin, specprefill.vllm_plugin.remote, "
        "specprefill.vllm_plugin.worker, specprefill.backends.vllm; "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- runs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("positions", "runs"),
    [
        ([0], [0, 1]),
        ([7], [7, 1]),
        ([0, 1, 2, 10, 11], [0, 3, 10, 2]),
        ([3, 5, 7], [3, 1, 5, 1, 7, 1]),
        (list(range(32)) + list(range(64, 96)), [0, 32, 64, 32]),
        (np.array([4, 5, 6], dtype=np.int64), [4, 3]),
    ],
)
def test_encode_and_decode_runs(positions: Any, runs: list[int]):
    assert pos.encode_runs(positions) == runs
    assert pos.decode_runs(runs) == [int(p) for p in positions]


@pytest.mark.parametrize(
    ("positions", "match"),
    [
        ([], "empty"),
        ([-1, 2], "non-negative"),
        ([3, 3], "strictly increasing"),
        ([5, 2], "strictly"),
        ([1.5], "integer"),
    ],
)
def test_encode_runs_rejects_bad_positions(positions: Any, match: str):
    with pytest.raises(PositionSpecError, match=match):
        pos.encode_runs(positions)


@pytest.mark.parametrize(
    ("runs", "match"),
    [
        ([], "even"),
        ([0, 2, 5], "even"),
        ([0, 0], "length 0"),
        ([0, 4, 2, 1], "overlap"),
        ([5, 1, 0, 1], "overlap"),
        (["0", 1], "integer"),
        ([True, 1], "integer"),
        ("0,1", "flat list"),
    ],
)
def test_decode_runs_rejects_malformed_runs(runs: Any, match: str):
    with pytest.raises(PositionSpecError, match=match):
        pos.decode_runs(runs)


def test_position_spec_error_is_a_prompt_error():
    assert issubclass(PositionSpecError, PromptError) and issubclass(PositionSpecError, ValueError)


# --- the map ---------------------------------------------------------------------------------------------
def test_map_prompt_and_decode_positions():
    pmap = PositionMap.from_positions([0, 1, 2, 10, 11, 20], original_length=30)
    assert pmap.n_kept == 6 and pmap.delta == 24 and pmap.num_runs == 3
    assert pmap.kv_starts == (0, 3, 5)
    assert pmap.prompt_positions() == [0, 1, 2, 10, 11, 20]
    # KV index >= n_kept: generated tokens (or a resumed request's re-prefill) continue at N, N+1, ...
    assert [pmap.position(k) for k in range(6, 9)] == [30, 31, 32]
    assert pmap.positions(range(9)).tolist() == [0, 1, 2, 10, 11, 20, 30, 31, 32]
    assert pmap.positions(np.array([8, 0, 4])).tolist() == [32, 0, 11]
    with pytest.raises(PositionSpecError):
        pmap.position(-1)


def test_map_defaults_and_identity():
    assert PositionMap.from_positions([0, 1, 2]).original_length == 3
    assert PositionMap.from_positions([0, 1, 2]).is_identity
    assert not PositionMap.from_positions([0, 1, 2], 4).is_identity  # a dropped tail still shifts decoding
    assert not PositionMap.from_positions([1, 2]).is_identity
    with pytest.raises(PositionSpecError, match="smaller than the end"):
        PositionMap.from_positions([0, 5], original_length=5)


def test_numpy_and_scalar_mapping_agree_on_random_maps():
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 400))
        keep = np.flatnonzero(rng.random(n) < rng.uniform(0.05, 1.0))
        if keep.size == 0:
            keep = np.array([n - 1])
        pmap = PositionMap.from_positions(keep, n)
        assert pmap.prompt_positions() == keep.tolist()
        kv = np.arange(pmap.n_kept + 20)
        vec = pmap.positions(kv)
        assert vec.tolist() == [pmap.position(int(k)) for k in kv]
        assert vec[pmap.n_kept :].tolist() == list(range(n, n + 20))
        assert PositionMap.from_runs(pmap.runs(), n) == pmap


# --- extra_args wire format ------------------------------------------------------------------------------
def test_xargs_round_trip_and_flat_types():
    xargs = pos.xargs_for([0, 1, 2, 40, 41], 50)
    assert xargs == {pos.XARG_RUNS: [0, 3, 40, 2], pos.XARG_LENGTH: 50}
    # vllm_xargs allows only scalars and flat lists of scalars
    assert all(
        isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v)) for v in xargs.values()
    )
    pmap = pos.parse_xargs({**xargs, "other_plugin": "x"})
    assert pmap is not None and pmap.prompt_positions() == [0, 1, 2, 40, 41] and pmap.original_length == 50
    assert pos.parse_xargs({pos.XARG_RUNS: (0, 3), pos.XARG_LENGTH: 5}) == PositionMap.from_positions([0, 1, 2], 5)


@pytest.mark.parametrize("extra", [None, {}, {"kv_transfer_params": {"a": 1}}])
def test_requests_without_keys_are_untouched(extra: Any):
    assert pos.parse_xargs(extra) is None


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({pos.XARG_RUNS: [0, 2]}, "specprefill_orig_len"),
        ({pos.XARG_LENGTH: 9}, "specprefill_runs"),
        ({pos.XARG_RUNS: [0, 2, 1, 1], pos.XARG_LENGTH: 9}, "overlap"),
        ({pos.XARG_RUNS: [0, 2], pos.XARG_LENGTH: 1}, "smaller"),
        ({pos.XARG_RUNS: [0, 2], pos.XARG_LENGTH: "9"}, "integer"),
    ],
)
def test_malformed_xargs_raise(extra: dict[str, Any], match: str):
    with pytest.raises(PositionSpecError, match=match):
        pos.parse_xargs(extra)


# --- cache salt ------------------------------------------------------------------------------------------
def test_cache_salt_depends_on_positions_and_length_only():
    a = PositionMap.from_positions([0, 1, 5], 10)
    assert pos.cache_salt(a) == pos.cache_salt(PositionMap.from_positions([0, 1, 5], 10))  # deterministic
    others = [
        PositionMap.from_positions([0, 1, 6], 10),
        PositionMap.from_positions([0, 1, 5], 11),
        PositionMap.from_positions([0, 2, 5], 10),
    ]
    salts = {pos.cache_salt(a), *(pos.cache_salt(o) for o in others), pos.cache_salt(a, "tenant-1")}
    assert len(salts) == 5
    for salt in salts:
        assert salt.startswith(pos.SALT_PREFIX) and len(salt) <= 128
        assert not any(c in salt for c in "@/\\\0")


def test_request_extras():
    assert pos.request_extras(None, None, n_tokens=4) == ({}, None)
    assert pos.request_extras([0, 1, 2], 3, n_tokens=3, user_salt="u") == ({}, "u")
    extras, salt = pos.request_extras([0, 1, 9], 12, n_tokens=3)
    assert extras == {pos.XARG_RUNS: [0, 2, 9, 1], pos.XARG_LENGTH: 12}
    assert salt == PositionMap.from_positions([0, 1, 9], 12).salt()
    with pytest.raises(PositionSpecError, match="3 token ids but 2"):
        pos.request_extras([0, 1], 5, n_tokens=3)


# --- remote: request body and the behavioural probe -------------------------------------------------------
def test_positions_body():
    from specprefill.vllm_plugin.remote import positions_body

    assert positions_body([5, 6, 7], [0, 1, 2], 3) is None
    body = positions_body([5, 6, 7], [0, 4, 5], 9)
    assert body is not None
    assert body["vllm_xargs"] == {pos.XARG_RUNS: [0, 1, 4, 2], pos.XARG_LENGTH: 9}
    assert body["cache_salt"] == PositionMap.from_positions([0, 4, 5], 9).salt()


class _FakeCompletions:
    """Answers like a server: ``effect`` is added to the logprob when positions arrive in vllm_xargs."""

    def __init__(self, effect: float, noise: float = 0.0, fail: bool = False, logprobs: bool = True) -> None:
        self.effect, self.noise, self.fail, self.logprobs = effect, noise, fail, logprobs
        self.calls: list[dict[str, Any]] = []

    def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.fail:
            raise RuntimeError("400 unknown parameter vllm_xargs")
        value = -2.0 + self.noise * (len(self.calls) % 2)
        if "vllm_xargs" in kwargs.get("extra_body", {}):
            value += self.effect
        lp = SimpleNamespace(token_logprobs=[value], tokens=["x"]) if self.logprobs else None
        return SimpleNamespace(choices=[SimpleNamespace(logprobs=lp)])


class _FakeClient:
    def __init__(self, completions: _FakeCompletions) -> None:
        self.completions = completions
        self.options: list[dict[str, Any]] = []

    def with_options(self, **kwargs: Any) -> _FakeClient:
        self.options.append(kwargs)
        return self


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        (_FakeCompletions(effect=0.3), True),  # plugin: the moved token changes the answer
        (_FakeCompletions(effect=0.0), False),  # stock server: vllm_xargs ignored
        (_FakeCompletions(effect=0.01, noise=0.005), False),  # effect within 10x the run-to-run noise
        (_FakeCompletions(effect=0.3, fail=True), False),  # server rejects the fields
        (_FakeCompletions(effect=0.3, logprobs=False), False),  # no logprobs to compare
    ],
)
def test_probe_position_support(fake: _FakeCompletions, expected: bool):
    from specprefill.vllm_plugin.remote import PROBE_GAP, probe_position_support

    client = _FakeClient(fake)
    assert probe_position_support(client, "m", [11, 12, 13]) is expected
    assert client.options == [{"max_retries": 0}]
    assert fake.calls[0]["prompt"] == [11, 12] and fake.calls[0]["max_tokens"] == 1
    if not fake.fail:
        moved = fake.calls[-1]["extra_body"]
        assert moved["vllm_xargs"] == {pos.XARG_RUNS: [0, 1, PROBE_GAP, 1], pos.XARG_LENGTH: PROBE_GAP + 1}
        assert moved["cache_salt"].startswith(pos.SALT_PREFIX)
    assert probe_position_support(_FakeClient(_FakeCompletions(0.3)), "m", []) is False
