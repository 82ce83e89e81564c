"""Server-side bounds on client position maps and the enforced cache salt (pure: no vLLM, no torch).

These run in the default suite.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from specprefill.errors import PromptError
from specprefill.vllm_plugin.guard import (
    PLAIN_SALT_PREFIX,
    PositionMapRejectedError,
    check_request_map,
    enforced_salt,
    strict_int,
)
from specprefill.vllm_plugin.positions import SALT_PREFIX, XARG_LENGTH, XARG_RUNS, PositionMap, cache_salt


def xargs(runs: Any, n: Any) -> dict[str, Any]:
    return {XARG_RUNS: runs, XARG_LENGTH: n, "other": 1}


def check(runs: Any, n: Any, *, prompt_len: int | None = 5, max_model_len: int | None = 100) -> PositionMap | None:
    return check_request_map(xargs(runs, n), prompt_len=prompt_len, max_model_len=max_model_len)


# --- accepted --------------------------------------------------------------------------------------------
def test_a_consistent_map_is_accepted() -> None:
    pmap = check([0, 3, 10, 2], 20)
    assert pmap is not None
    assert pmap.prompt_positions() == [0, 1, 2, 10, 11]
    assert pmap.original_length == 20


def test_tuples_and_numpy_integers_are_accepted() -> None:
    pmap = check((np.int64(2), np.int32(5)), np.int64(7))
    assert pmap is not None and pmap.runs() == [2, 5]


def test_boundaries_are_inclusive() -> None:
    assert check([0, 5], 100) is not None  # original length == max_model_len
    one = check([99, 1], 100, prompt_len=1)  # one run per prompt token at the last position
    assert one is not None and one.prompt_positions() == [99]
    assert check([0, 1, 2, 1, 4, 1, 6, 1, 8, 1], 9) is not None  # runs == prompt length


def test_no_keys_means_no_map() -> None:
    assert check_request_map(None, prompt_len=3, max_model_len=10) is None
    assert check_request_map({}, prompt_len=3, max_model_len=10) is None
    assert check_request_map({"unrelated": [1] * 10}, prompt_len=3, max_model_len=10) is None


def test_unknown_prompt_length_still_bounds_by_the_original_length() -> None:
    assert check([0, 3, 10, 2], 20, prompt_len=None) is not None
    with pytest.raises(PositionMapRejectedError, match="runs but the prompt has at most 4 tokens"):
        check([0, 1] * 5, 4, prompt_len=None)


# --- rejected --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("runs", "n", "rule"),
    [
        ([0, 1, 2, 1, 4, 1, 6, 1, 8, 1, 10, 1], 20, "6 runs but the prompt has at most 5"),
        ([0, 4], 20, "keeps 4 tokens but the prompt has 5"),
        ([0, 6], 20, "keeps 6 tokens but the prompt has 5"),
        ([0, 5], 101, "between 1 and max_model_len=100"),
        ([0, 5], 0, "between 1 and max_model_len"),
        ([0, 5], -1, "non-negative integer, got -1"),
        ([-1, 5], 20, "non-negative integer, got -1"),
        ([0, 5], float("nan"), "got NaN"),
        ([0.0, 5], 20, "got float"),
        ([0, 5], 5.0, "got float"),
        ([0, 5], True, "got bool"),
        ([False, 5], 20, "got bool"),
        ([0, "5"], 20, "got str"),
        ([0, None], 20, "got NoneType"),
        ("0,5", 20, "flat list of integers, got str"),
        ({"0": 5}, 20, "flat list of integers, got dict"),
        ([[0, 5]], 20, "pairs"),
        ([], 20, "pairs, got 0 items"),
        ([0, 2, 1, 3], 20, "inside or before the previous run"),
        ([0, 0, 3, 5], 20, "length 0"),
        ([0, 5], 3, "smaller than the end of the last kept run"),
        ([0, 5], 10**30, "between 1 and max_model_len"),
    ],
)
def test_hostile_maps_are_rejected_with_the_rule(runs: Any, n: Any, rule: str) -> None:
    with pytest.raises(PositionMapRejectedError, match=rule):
        check(runs, n)


def test_a_prompt_that_may_hold_generated_tokens_bounds_the_kept_count_from_above() -> None:
    """Workers see a preempted request again with its output appended to the prompt."""
    grown = check_request_map(xargs([0, 3, 10, 2], 20), prompt_len=7, max_model_len=100, prompt_may_grow=True)
    assert grown is not None and grown.n_kept == 5
    with pytest.raises(PositionMapRejectedError, match="keeps 5 tokens but the prompt has 4; it must be at most"):
        check_request_map(xargs([0, 3, 10, 2], 20), prompt_len=4, max_model_len=100, prompt_may_grow=True)
    with pytest.raises(PositionMapRejectedError, match="they must be equal"):
        check_request_map(xargs([0, 3, 10, 2], 20), prompt_len=7, max_model_len=100)


def test_one_key_without_the_other_is_rejected() -> None:
    with pytest.raises(PositionMapRejectedError, match="not 'specprefill_orig_len'"):
        check_request_map({XARG_RUNS: [0, 1]}, prompt_len=1, max_model_len=10)
    with pytest.raises(PositionMapRejectedError, match="not 'specprefill_runs'"):
        check_request_map({XARG_LENGTH: 1}, prompt_len=1, max_model_len=10)


def test_rejection_is_a_value_error_and_a_prompt_error() -> None:
    """ValueError: vLLM's OpenAI server turns it into a 400 reply; PromptError: the library's typed error."""
    with pytest.raises(ValueError) as info:
        check([0, 4], 20)
    assert isinstance(info.value, PromptError)


def test_a_huge_run_list_is_refused_before_any_item_is_read() -> None:
    class Poisoned(list[Any]):
        def __iter__(self) -> Any:
            raise AssertionError("items were read")

        def __getitem__(self, index: Any) -> Any:
            raise AssertionError("items were read")

    hostile = Poisoned([0, 1] * 5_000_000)  # 10^7 ints
    start = time.perf_counter()
    with pytest.raises(PositionMapRejectedError, match="5000000 runs"):
        check(hostile, 50, prompt_len=50, max_model_len=100)
    assert time.perf_counter() - start < 0.05


def test_the_error_does_not_echo_a_huge_value() -> None:
    with pytest.raises(PositionMapRejectedError) as info:
        check([0, 5], "9" * 100_000)
    assert len(str(info.value)) < 200


def test_strict_int_accepts_plain_integers_only() -> None:
    assert strict_int(3, "x") == 3
    assert strict_int(np.int16(3), "x") == 3
    for bad in (1.5, float("inf"), "3", b"3", None, True, [3]):
        with pytest.raises(PositionMapRejectedError):
            strict_int(bad, "x")


# --- enforced salt ---------------------------------------------------------------------------------------
PMAP = PositionMap.from_positions([0, 1, 2, 10, 11], 20)


def test_positioned_requests_get_the_derived_salt_whatever_the_client_sent() -> None:
    assert enforced_salt(PMAP, None) == cache_salt(PMAP)
    assert enforced_salt(PMAP, "") == cache_salt(PMAP)
    assert enforced_salt(PMAP, "tenant-a") == cache_salt(PMAP, "tenant-a")
    assert enforced_salt(PMAP, "tenant-a") != enforced_salt(PMAP, "tenant-b")  # tenant isolation kept
    other = PositionMap.from_positions([0, 1, 2, 11, 12], 20)
    assert enforced_salt(other, cache_salt(PMAP)) != cache_salt(PMAP)  # a stolen salt does not carry over


def test_plain_requests_keep_their_salt_unless_it_imitates_a_derived_one() -> None:
    assert enforced_salt(None, None) is None
    assert enforced_salt(None, "tenant-a") == "tenant-a"
    stolen = cache_salt(PMAP)
    moved = enforced_salt(None, stolen)
    assert moved is not None and moved != stolen and moved.startswith(PLAIN_SALT_PREFIX)
    assert enforced_salt(None, stolen) == moved  # deterministic: identical plain requests still share
    identity = PositionMap.from_positions([0, 1, 2], 3)
    assert enforced_salt(identity, stolen) == moved  # an identity map is a plain request


def test_plain_salts_never_equal_a_derived_salt() -> None:
    derived = {
        cache_salt(PositionMap.from_positions([0, k], k + 1), user) for k in range(1, 30) for user in (None, "u")
    }
    for salt in [None, "x", SALT_PREFIX, *derived]:
        assert enforced_salt(None, salt) not in derived
