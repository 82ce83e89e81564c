"""Steps 4-6 as pure functions, checked against hand-computed values on tiny literal arrays."""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Literal

import numpy as np
import pytest

from specprefill import (
    ConfigurationError,
    SpecPrefillConfig,
    SpeculatorError,
    avg_pool1d,
    chunk_scores,
    importance_from_attention,
    select_chunks,
)
from specprefill.scoring import budget_chunks, chunk_bounds, protected_mask, reduce_queries, segment_edges

HAS_TORCH = importlib.util.find_spec("torch") is not None


# --- avg_pool1d ---------------------------------------------------------------------------------------
def test_avg_pool_kernel3_hand_computed() -> None:
    # zero padding of 1 on each side, every window divided by 3 (count_include_pad=True)
    out = avg_pool1d([1.0, 2.0, 3.0, 4.0], 3)
    np.testing.assert_allclose(out, [(0 + 1 + 2) / 3, (1 + 2 + 3) / 3, (2 + 3 + 4) / 3, (3 + 4 + 0) / 3])
    assert out.dtype == np.float32


def test_avg_pool_kernel5_hand_computed() -> None:
    out = avg_pool1d([5.0, 0.0, 0.0, 0.0, 0.0, 0.0], 5)
    np.testing.assert_allclose(out, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def test_avg_pool_kernel1_is_identity_copy() -> None:
    x = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)
    out = avg_pool1d(x, 1)
    np.testing.assert_array_equal(out, x)
    out[0, 0] = 9.0
    assert x[0, 0] == 0.5  # a copy, not a view


def test_avg_pool_shorter_than_kernel() -> None:
    # N=2 < kernel=5: every window covers the whole row plus padding
    np.testing.assert_allclose(avg_pool1d([3.0, 6.0], 5), [9 / 5, 9 / 5])
    np.testing.assert_allclose(avg_pool1d([7.0], 13), [7 / 13])


def test_avg_pool_empty_and_batched_shape() -> None:
    assert avg_pool1d(np.zeros((2, 3, 0)), 3).shape == (2, 3, 0)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = avg_pool1d(x, 3)
    assert out.shape == x.shape
    np.testing.assert_allclose(out[1, 2], avg_pool1d(x[1, 2], 3))


@pytest.mark.parametrize("kernel", [0, -1, 2, 4, 14])
def test_avg_pool_rejects_bad_kernel(kernel: int) -> None:
    with pytest.raises(ConfigurationError, match="kernel"):
        avg_pool1d([1.0, 2.0, 3.0], kernel)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize(("n", "kernel"), [(1, 13), (7, 13), (13, 13), (50, 13), (200, 3), (31, 1), (64, 31)])
def test_avg_pool_matches_torch(n: int, kernel: int) -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812

    rng = np.random.default_rng(n * 100 + kernel)
    x = rng.random((4, 3, n), dtype=np.float32)
    ref = F.avg_pool1d(torch.from_numpy(x).reshape(12, 1, n), kernel, stride=1, padding=kernel // 2)
    np.testing.assert_allclose(avg_pool1d(x, kernel), ref.reshape(4, 3, n).numpy(), rtol=1e-5, atol=1e-7)


# --- importance_from_attention --------------------------------------------------------------------------
def test_importance_max_over_layers_heads_then_mean_over_queries() -> None:
    # [L=2, H=2, Q=2, N=3], kernel 1 (no smoothing) so the reduction order is visible
    probs = np.array(
        [
            [[[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], [[0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]],
            [[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]], [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]],
        ]
    )
    # max over (L, H) per query: q0 -> [0.8, 0.5, 0.7]; q1 -> [0.6, 0.8, 0.6]; mean -> [0.7, 0.65, 0.65]
    out = importance_from_attention(probs, pool_kernel=1)
    np.testing.assert_allclose(out, [0.7, 0.65, 0.65], rtol=1e-6)
    assert out.dtype == np.float32 and out.shape == (3,)


def test_importance_pools_before_max() -> None:
    # Two heads peak at neighbouring tokens. Pool-then-max keeps each peak's spread separately;
    # max-then-pool merges the two peaks first and gives a different (larger) value between them.
    probs = np.zeros((1, 2, 1, 5))
    probs[0, 0, 0, 1] = 1.0
    probs[0, 1, 0, 3] = 1.0
    pooled_first = importance_from_attention(probs, pool_kernel=3)
    np.testing.assert_allclose(pooled_first, [1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    max_first = avg_pool1d(probs.max(axis=(0, 1)), 3).mean(axis=0)
    np.testing.assert_allclose(max_first, [1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    assert not np.allclose(pooled_first, max_first)


def test_importance_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="layers, heads, queries, N"):
        importance_from_attention(np.zeros((2, 3, 4)))


def _two_query_probs() -> np.ndarray:
    # [L=1, H=2, Q=2, N=3], kernel 1: max over heads gives q0 -> [0.6, 0.3, 0.4], q1 -> [0.2, 0.7, 0.6]
    return np.array([[[[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]], [[0.3, 0.3, 0.4], [0.1, 0.7, 0.2]]]])


@pytest.mark.parametrize(
    ("reduction", "mix", "expected"),
    [
        ("mean", 0.5, [0.4, 0.5, 0.5]),
        ("max", 0.5, [0.6, 0.7, 0.6]),
        ("mix", 0.5, [0.5, 0.6, 0.55]),
        ("mix", 0.25, [0.45, 0.55, 0.525]),
        ("mix", 0.0, [0.4, 0.5, 0.5]),
        ("mix", 1.0, [0.6, 0.7, 0.6]),
    ],
)
def test_importance_query_reductions(reduction: str, mix: float, expected: list[float]) -> None:
    out = importance_from_attention(_two_query_probs(), 1, query_reduction=reduction, query_mix=mix)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32


def test_reduce_queries_rejects_unknown_reduction_and_bad_mix() -> None:
    with pytest.raises(ConfigurationError, match="must be one of \\['max', 'mean', 'mix'\\]"):
        reduce_queries(np.ones((2, 3)), "median")
    with pytest.raises(ConfigurationError, match="query_mix"):
        reduce_queries(np.ones((2, 3)), "mix", 1.5)
    with pytest.raises(ValueError, match="queries, N"):
        reduce_queries(np.ones(3))


def test_window_queries_are_causally_masked_and_renormalised() -> None:
    # N=4 keys, Q=3 queries: two window queries (prompt positions 2 and 3) and one look-ahead query.
    # All rows uniform: the query at position 2 may not see key 3, so its row becomes [1/3, 1/3, 1/3, 0];
    # the last prompt token (position 3) and the look-ahead query see every key.
    probs = np.full((1, 1, 3, 4), 0.25)
    out = importance_from_attention(probs, 1, window_queries=2, query_reduction="mean")
    np.testing.assert_allclose(out, [(1 / 3 + 0.5) / 3] * 3 + [0.5 / 3], rtol=1e-6)
    unmasked = importance_from_attention(probs, 1, window_queries=0)
    np.testing.assert_allclose(unmasked, [0.25] * 4, rtol=1e-6)
    # mass on a future key is dropped, not moved: a row that puts everything before p is unchanged
    causal = np.array([[[[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]]])
    np.testing.assert_allclose(
        importance_from_attention(causal, 1, window_queries=2, query_reduction="max"), [0.5, 0.5, 0.3, 0.4]
    )


def test_window_queries_out_of_range() -> None:
    with pytest.raises(ValueError, match="window_queries"):
        importance_from_attention(np.full((1, 1, 2, 4), 0.25), 1, window_queries=3)
    with pytest.raises(ValueError, match="window_queries"):
        importance_from_attention(np.full((1, 1, 5, 4), 0.25), 1, window_queries=5)


def _recorded(window: int, heads: int = 4, kv_heads: int = 2, n_queries: int = 8, n: int = 10, dim: int = 8) -> Any:
    """A recorder holding one random layer, and the reference ``[1, H, Q, N]`` probabilities of it."""
    import torch

    from specprefill.speculator.capture import Recorder

    rng = np.random.default_rng(window)
    q = torch.from_numpy(rng.normal(size=(heads, n_queries, dim)).astype(np.float32))
    k = torch.from_numpy(rng.normal(size=(kv_heads, n, dim)).astype(np.float32))
    recorder = Recorder(total_length=n)
    recorder.queries[0], recorder.keys[0] = [q[None]], k[None]
    recorder.scaling[0], recorder.softcap[0] = dim**-0.5, None
    k_full = k.repeat_interleave(heads // kv_heads, dim=0)
    return recorder, torch.softmax(q @ k_full.transpose(1, 2) * dim**-0.5, dim=-1).numpy()[None]


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("window", [0, 1, 3, 6])
def test_torch_layer_scores_match_reference_mask(window: int) -> None:
    # hf's per-layer path masks logits before the softmax; the reference masks and renormalises
    # unmasked probabilities. They must agree, and with window > 1 the mask must change the result.
    from specprefill.speculator.capture import prompt_importance

    recorder, probs = _recorded(window)
    for reduction in ("mean", "max"):
        config = SpecPrefillConfig(pool_kernel=3, query_reduction=reduction)
        got = prompt_importance(recorder, 10, config, window)
        ref = importance_from_attention(probs, 3, window_queries=window, query_reduction=reduction)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
        unmasked = importance_from_attention(probs, 3, query_reduction=reduction)
        assert np.allclose(got, unmasked, atol=1e-6) == (window <= 1)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("chosen", [(0,), (1, 3), (0, 1), (2,), (0, 1, 2, 3)])
def test_torch_head_subset_matches_reference_on_those_heads(chosen: tuple[int, ...]) -> None:
    # heads 0,1 share KV head 0 and heads 2,3 KV head 1: any subset scores like the reference on it alone
    from specprefill.speculator.capture import head_scores, prompt_importance

    recorder, probs = _recorded(3)
    config = SpecPrefillConfig(pool_kernel=3, query_reduction="max")
    got = prompt_importance(recorder, 10, config, 3, heads={0: chosen})
    ref = importance_from_attention(probs[:, list(chosen)], 3, window_queries=3, query_reduction="max")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    table = head_scores(recorder, 10, config, n_layers=2, window_queries=3)
    assert table.shape == (2, 4, 10) and not table[1].any()  # layer 1 was not recorded
    for h in chosen:
        one = importance_from_attention(probs[:, [h]], 3, window_queries=3, query_reduction="max")
        np.testing.assert_allclose(table[0, h], one, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_torch_head_subset_rejects_out_of_range_heads_and_skips_unlisted_layers() -> None:
    from specprefill.speculator.capture import prompt_importance

    recorder, _ = _recorded(0)
    with pytest.raises(SpeculatorError, match=r"outside 0\.\.3"):
        prompt_importance(recorder, 10, SpecPrefillConfig(), 0, heads={0: (4,)})
    with pytest.raises(SpeculatorError, match="no attention layer"):
        prompt_importance(recorder, 10, SpecPrefillConfig(), 0, heads={5: (0,)})


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_single_query_decode_attention_matches_sdpa(mask_kind: str) -> None:
    # The look-ahead steps on CPU use grouped matmuls instead of sdpa; the output must be sdpa's.
    import torch
    import torch.nn.functional as F  # noqa: N812

    from specprefill.speculator.decode_attention import single_query_attention

    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, n, dim = 6, 2, 37, 8
    q = torch.randn(2, heads, 1, dim, generator=gen)
    k = torch.randn(2, kv_heads, n, dim, generator=gen)
    v = torch.randn(2, kv_heads, n, dim, generator=gen)
    visible = torch.ones(2, 1, 1, n, dtype=torch.bool)
    visible[1, ..., :5] = False  # left padding of the second row
    mask = {"none": None, "bool": visible, "float": torch.where(visible, 0.0, float("-inf"))}[mask_kind]
    got, weights = single_query_attention(None, q, k, v, mask, 0.3)
    k_full, v_full = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    ref = F.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert weights is None and got.shape == (2, 1, heads, dim)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    if mask_kind != "none":  # the mask matters: row 1 differs from attending to every key
        unmasked = F.scaled_dot_product_attention(q, k_full, v_full, scale=0.3).transpose(1, 2)
        assert not torch.allclose(got[1], unmasked[1], atol=1e-4)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_decode_fast_path_only_for_plain_cpu_single_queries() -> None:
    import torch

    from specprefill.speculator.decode_attention import plain_cpu_decode

    one, many = torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 3, 4)
    assert plain_cpu_decode(one, {"scaling": 0.5, "dropout": 0.0, "sliding_window": None})
    assert not plain_cpu_decode(many, {})
    assert not plain_cpu_decode(one, {"softcap": 30.0})
    assert not plain_cpu_decode(one, {"sliding_window": 512})


# --- chunks ---------------------------------------------------------------------------------------------
def test_chunk_bounds_and_partial_last_chunk_mean() -> None:
    assert chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_bounds(6, 3) == [(0, 3), (3, 6)]
    assert chunk_bounds(0, 3) == []
    np.testing.assert_allclose(chunk_scores([1, 2, 3, 4, 5, 6, 10], 3), [2.0, 5.0, 10.0])
    np.testing.assert_allclose(chunk_scores([1, 2, 3, 5], 3), [2.0, 5.0])  # last chunk: mean over 1 token
    with pytest.raises(ConfigurationError):
        chunk_bounds(5, 0)


def test_budget_chunks_is_ceil_without_float_noise() -> None:
    assert 0.07 * 100 > 7  # the float product is 7.000000000000001
    assert budget_chunks(0.07, 100) == 7
    assert budget_chunks(0.14, 50) == 7
    assert budget_chunks(0.3, 10) == 3
    assert budget_chunks(0.31, 10) == 4
    assert budget_chunks(1e-12, 5) == 1
    assert budget_chunks(1.0, 5) == 5
    assert budget_chunks(0.5, 0) == 0


def test_protected_mask_from_indices_or_mask() -> None:
    np.testing.assert_array_equal(protected_mask(4, [0, 2]), [True, False, True, False])
    np.testing.assert_array_equal(protected_mask(3, np.array([False, True, False])), [False, True, False])
    assert not protected_mask(3, ()).any()
    with pytest.raises(ConfigurationError, match="out of range"):
        protected_mask(3, [3])
    with pytest.raises(ConfigurationError, match="out of range"):
        protected_mask(3, [-1])
    with pytest.raises(ConfigurationError, match="shape"):
        protected_mask(3, np.array([True, False]))


# --- select_chunks -------------------------------------------------------------------------------------
def _imp(*chunk_values: float, chunk: int = 2) -> np.ndarray:
    """Importance where every token of chunk i has value chunk_values[i]."""
    return np.repeat(np.array(chunk_values, dtype=np.float32), chunk)


def test_select_single_token() -> None:
    out = select_chunks([0.5], keep_rate=0.1)
    np.testing.assert_array_equal(out, [0])
    assert out.dtype == np.int64


def test_select_empty() -> None:
    out = select_chunks([], keep_rate=0.5)
    assert out.dtype == np.int64 and out.size == 0


def test_select_fewer_tokens_than_one_chunk() -> None:
    np.testing.assert_array_equal(select_chunks([0.1, 0.2, 0.3], keep_rate=0.2, chunk_size=32), [0, 1, 2])


def test_select_exact_multiple_of_chunk() -> None:
    imp = _imp(0.1, 0.9, 0.3, 0.8)  # 4 chunks of 2, top 2 = chunks 1 and 3
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.5, chunk_size=2), [2, 3, 6, 7])


def test_select_partial_last_chunk_by_mean() -> None:
    imp = np.array([0.1, 0.1, 0.2, 0.2, 0.9], dtype=np.float32)  # last chunk is one token of 0.9
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.3, chunk_size=2), [4])


def test_select_keep_rate_one_keeps_all() -> None:
    np.testing.assert_array_equal(
        select_chunks(np.random.default_rng(0).random(37), keep_rate=1.0, chunk_size=4), np.arange(37)
    )


def test_select_tiny_keep_rate_keeps_exactly_one_chunk() -> None:
    imp = _imp(0.1, 0.2, 0.9, 0.3, chunk=3)
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=1e-9, chunk_size=3), [6, 7, 8])


def test_select_uses_ceil() -> None:
    imp = _imp(0.1, 0.2, 0.9, 0.3, 0.5)  # 5 chunks, 0.3 * 5 = 1.5 -> 2 chunks
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.3, chunk_size=2), [4, 5, 8, 9])


def test_select_float_noise_does_not_add_a_chunk() -> None:
    imp = np.linspace(1.0, 0.0, 100, dtype=np.float32)  # 100 chunks of 1 token
    assert len(select_chunks(imp, keep_rate=0.07, chunk_size=1)) == 7


def test_select_ties_go_to_earlier_chunk() -> None:
    imp = _imp(0.5, 0.5, 0.5, 0.5)
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.5, chunk_size=2), [0, 1, 2, 3])
    imp = _imp(0.1, 0.7, 0.3, 0.7)
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.25, chunk_size=2), [2, 3])


def test_select_protected_larger_than_budget() -> None:
    # 6 chunks of 2; chunks 0, 1, 2 wholly protected. keep_rate 0.34 of the 3 candidates -> 2 chunks.
    imp = _imp(0.0, 0.0, 0.0, 0.9, 0.1, 0.8)
    out = select_chunks(imp, keep_rate=0.34, chunk_size=2, protected=range(6))
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 5, 6, 7, 10, 11])


def test_select_protected_toward_budget_on_and_off() -> None:
    imp = _imp(0.0, 0.9, 0.1, 0.8)  # 4 chunks of 2; chunk 0 wholly protected
    off = select_chunks(imp, keep_rate=0.5, chunk_size=2, protected=[0, 1])
    # off: budget = ceil(0.5 * 3 candidates) = 2 chunks besides the protected one
    np.testing.assert_array_equal(off, [0, 1, 2, 3, 6, 7])
    on = select_chunks(imp, keep_rate=0.5, chunk_size=2, protected=[0, 1], protected_count_toward_budget=True)
    # on: budget = ceil(0.5 * 4 chunks) - 1 wholly protected chunk = 1
    np.testing.assert_array_equal(on, [0, 1, 2, 3])


def test_select_protected_toward_budget_caps_tokens_with_protected() -> None:
    imp = _imp(0.0, 0.9, 0.1, 0.8)
    out = select_chunks(
        imp, keep_rate=1.0, chunk_size=2, protected=[0, 1], max_kept_tokens=3, protected_count_toward_budget=True
    )
    assert len(out) == 3 and {0, 1} <= set(out.tolist())


def test_select_partially_protected_chunk_is_a_candidate() -> None:
    imp = np.array([0.9, 0.9, 0.1, 0.1], dtype=np.float32)
    out = select_chunks(imp, keep_rate=0.5, chunk_size=2, protected=[3])
    # candidates: chunk 0 and chunk 1 (token 2 unprotected); budget 1 -> chunk 0 plus protected token 3
    np.testing.assert_array_equal(out, [0, 1, 3])


def test_select_max_kept_tokens_smaller_than_one_chunk() -> None:
    imp = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.95, 0.6], dtype=np.float32)  # chunks of 4
    out = select_chunks(imp, keep_rate=1.0, chunk_size=4, max_kept_tokens=2)
    np.testing.assert_array_equal(out, [4, 6])  # the two most important tokens of the best chunk


def test_select_max_kept_tokens_several_chunks() -> None:
    imp = np.concatenate([np.full(4, 0.1), np.full(4, 0.9), [0.5, 0.7, 0.6, 0.5], np.full(4, 0.2)])
    out = select_chunks(imp.astype(np.float32), keep_rate=1.0, chunk_size=4, max_kept_tokens=6)
    # best chunk (4..8) whole, then the two best tokens of the next chunk (9, 10)
    np.testing.assert_array_equal(out, [4, 5, 6, 7, 9, 10])
    out = select_chunks(imp.astype(np.float32), keep_rate=1.0, chunk_size=4, max_kept_tokens=8)
    np.testing.assert_array_equal(out, [4, 5, 6, 7, 8, 9, 10, 11])


def test_select_max_kept_tokens_does_not_raise_keep_rate_budget() -> None:
    imp = _imp(0.1, 0.9, 0.3, 0.8)
    out = select_chunks(imp, keep_rate=0.25, chunk_size=2, max_kept_tokens=100)
    np.testing.assert_array_equal(out, [2, 3])


def test_select_max_kept_zero_keeps_only_protected() -> None:
    out = select_chunks(_imp(0.1, 0.9), keep_rate=1.0, chunk_size=2, protected=[0], max_kept_tokens=0)
    np.testing.assert_array_equal(out, [0])


def test_select_nan_importance_ranks_last() -> None:
    imp = np.array([np.nan, np.nan, 0.1, 0.1, 0.2, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(select_chunks(imp, keep_rate=0.3, chunk_size=2), [2, 3])


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.0001, 2, math.nan, math.inf, "x", None])
def test_select_rejects_bad_keep_rate(rate: object) -> None:
    with pytest.raises(ConfigurationError, match="keep_rate"):
        select_chunks([0.1, 0.2], keep_rate=rate)  # type: ignore[arg-type]


def test_select_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigurationError, match="max_kept_tokens"):
        select_chunks([0.1], keep_rate=0.5, max_kept_tokens=-1)
    with pytest.raises(ValueError, match="1-D"):
        select_chunks([[0.1]], keep_rate=0.5)
    with pytest.raises(ConfigurationError, match="chunk_size"):
        select_chunks([0.1], keep_rate=0.5, chunk_size=0)


def test_select_invariants_random() -> None:
    """Property-style check over seeded random inputs (hypothesis is not a dependency)."""
    rng = np.random.default_rng(20250211)
    for _ in range(400):
        n = int(rng.integers(0, 300))
        chunk = int(rng.choice([1, 2, 3, 7, 32]))
        rate = float(rng.choice([1e-6, 0.1, 0.25, 0.3, 0.5, 0.99, 1.0, rng.uniform(0.01, 1.0)]))
        imp = rng.random(n, dtype=np.float32)
        if n and rng.random() < 0.3:
            imp[rng.integers(0, n, size=3)] = 0.5  # ties
        protected = np.flatnonzero(rng.random(n) < float(rng.choice([0.0, 0.05, 0.5])))
        cap = None if rng.random() < 0.5 else int(rng.integers(0, 200))
        toward = bool(rng.random() < 0.3)

        out = select_chunks(
            imp,
            keep_rate=rate,
            chunk_size=chunk,
            protected=protected,
            max_kept_tokens=cap,
            protected_count_toward_budget=toward,
        )

        assert out.dtype == np.int64
        assert np.all(np.diff(out) > 0), "strictly increasing"
        assert out.size == 0 or (out[0] >= 0 and out[-1] < n)
        kept = set(out.tolist())
        assert set(protected.tolist()) <= kept, "protected tokens are always kept"

        bounds = chunk_bounds(n, chunk)
        pmask = protected_mask(n, protected)
        candidates = [i for i, (s, e) in enumerate(bounds) if not pmask[s:e].all()]
        chosen = [i for i in candidates if any(j in kept and not pmask[j] for j in range(*bounds[i]))]
        unprotected_kept = len(kept) - len(protected)
        if toward:
            budget = max(0, math.ceil(rate * len(bounds) - 1e-9) - (len(bounds) - len(candidates)))
            token_cap = None if cap is None else max(0, cap - len(protected))
        else:
            budget = max(1, math.ceil(rate * len(candidates) - 1e-9)) if candidates else 0
            token_cap = cap
        if token_cap is None:
            assert len(chosen) == min(budget, len(candidates))
            # chosen chunks are kept whole
            for i in chosen:
                assert set(range(*bounds[i])) <= kept
            # and no unchosen candidate scores strictly higher than a chosen one
            scores = chunk_scores(imp, chunk)
            if chosen and len(chosen) < len(candidates):
                worst_chosen = min(scores[i] for i in chosen)
                best_left = max(scores[i] for i in candidates if i not in chosen)
                assert best_left <= worst_chosen
        else:
            assert len(chosen) <= min(budget, len(candidates))
            assert unprotected_kept <= token_cap
            whole = sum(e - s - int(pmask[s:e].sum()) for i, (s, e) in enumerate(bounds) if i in candidates)
            assert unprotected_kept == min(token_cap, whole) or len(chosen) == budget


# --- select_chunks with segments (the segment grid) ------------------------------------------------------
def _seg(importance: list[float], segments: list[int], **kwargs: object) -> list[int]:
    kwargs.setdefault("keep_rate", 1.0)
    kwargs.setdefault("chunk_size", 2)
    return select_chunks(np.asarray(importance, dtype=np.float32), segments=segments, **kwargs).tolist()  # type: ignore[arg-type]


def test_segment_grid_restarts_at_every_segment_start() -> None:
    assert chunk_bounds(7, 3, [2]) == [(0, 2), (2, 5), (5, 7)]
    assert chunk_bounds(7, 3, [2, 2, 0, 7]) == [(0, 2), (2, 5), (5, 7)]  # repeats and edges add nothing
    assert chunk_bounds(5, 2, []) == chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_bounds(0, 2, []) == []
    assert segment_edges(6, [4, 1, 4]) == [0, 1, 4, 6]
    for bad in ([7], [-1], [1.5], [True]):
        with pytest.raises(ConfigurationError, match="segment"):
            chunk_bounds(6, 2, bad)  # type: ignore[arg-type]


def test_segments_none_is_the_paper_grid_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 5, 33, 100):
        imp = rng.random(n, dtype=np.float32)
        prot = rng.random(n) < 0.2
        for rate in (0.1, 0.3, 1.0):
            a = select_chunks(imp, keep_rate=rate, chunk_size=4, protected=prot, max_kept_tokens=17)
            b = select_chunks(imp, keep_rate=rate, chunk_size=4, protected=prot, max_kept_tokens=17, segments=None)
            np.testing.assert_array_equal(a, b)


def test_segment_chunks_never_cross_a_boundary() -> None:
    # paper grid with chunk 2: chunk (2, 4) would join token 2 (segment A) with token 3 (segment B)
    imp = [0, 0, 9, 1, 0, 0]
    assert select_chunks(imp, keep_rate=0.1, chunk_size=2).tolist() == [2, 3]
    assert _seg(imp, [3], keep_rate=0.1) == [2]  # budget ceil(0.1 * 6) = 1 token: chunk (2, 3) alone
    # budget 2: chunk (2, 3), then (3, 5) (mean 0.5) has 2 tokens for 1 left: its best run of 1 is token 3
    assert _seg(imp, [3], keep_rate=0.2) == [2, 3]


def test_segment_budget_counts_unprotected_tokens_and_last_chunk_is_cut_to_its_best_run() -> None:
    imp = [5, 5, 5, 1, 3, 3, 3, 0, 0, 0]
    # U = 10, budget ceil(0.5 * 10) = 5; chunk (0, 3) = 5.0 takes 3, chunk (3, 6) mean 2.33 has 3 > 2 left:
    # its best contiguous run of 2 is (4, 6) (3 + 3 > 1 + 3)
    assert _seg(imp, [3, 6], keep_rate=0.5, chunk_size=3) == [0, 1, 2, 4, 5]
    protected = [False] * 10
    protected[9] = True
    assert _seg(imp, [3, 6], keep_rate=0.5, chunk_size=3, protected=np.array(protected)) == [0, 1, 2, 4, 5, 9]


def test_segment_score_ignores_protected_tokens() -> None:
    imp = [100, 0, 2, 2]
    assert _seg(imp, [], keep_rate=0.5, protected=[0]) == [0, 2, 3]  # U = 3 -> 2 tokens; chunk (0, 2) scores 0


def test_segment_max_kept_tokens_is_exact_and_keeps_a_run() -> None:
    imp = [0, 3, 4, 5, 0, 1]
    for cap, expected in [(1, [3]), (2, [2, 3]), (3, [1, 2, 3]), (4, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 5])]:
        assert _seg(imp, [], chunk_size=4, max_kept_tokens=cap) == expected
    assert _seg(imp, [], chunk_size=4, max_kept_tokens=0, protected=[4]) == [4]


def test_segment_protected_count_toward_budget() -> None:
    imp = [0, 0, 1, 1, 2, 2, 3, 3]
    # N = 8, keep 0.5 -> 4 tokens, 2 of them protected: 2 left for the best chunk (6, 8)
    assert _seg(imp, [4], keep_rate=0.5, protected=[0, 1], protected_count_toward_budget=True) == [0, 1, 6, 7]
    # not counted: 6 unprotected -> 3 tokens: chunk (6, 8), then the best run of 1 of chunk (4, 6)
    assert _seg(imp, [4], keep_rate=0.5, protected=[0, 1]) == [0, 1, 4, 6, 7]
    # the cap includes the protected tokens: 3 - 2 = 1 token, the earlier of the tied pair (6, 7)
    assert _seg(imp, [4], max_kept_tokens=3, protected=[0, 1], protected_count_toward_budget=True) == [0, 1, 6]
    # more protected tokens than budget: only the protected stay
    assert _seg(imp, [4], keep_rate=0.25, protected=[0, 1, 2], protected_count_toward_budget=True) == [0, 1, 2]


@pytest.mark.parametrize(
    ("imp", "segments", "kwargs", "expected"),
    [
        ([1, 2, 3], [0, 0, 3, 3], {"keep_rate": 0.3}, [2]),  # empty segments: one real segment; 1 token
        ([1, 2, 3, 9], [1, 2, 3], {"keep_rate": 0.25}, [3]),  # segments shorter than a chunk: one token each
        ([1, 2, 3, 4], [2], {"keep_rate": 1.0}, [0, 1, 2, 3]),  # keep_rate 1 keeps everything
        ([1, 2, 3, 4], [2], {"keep_rate": 0.1, "protected": [0, 1, 2, 3]}, [0, 1, 2, 3]),  # all protected
        ([], [], {"keep_rate": 0.5}, []),  # empty prompt
        ([7], [1], {"keep_rate": 0.01}, [0]),  # one token: at least one is kept
    ],
)
def test_segment_boundary_cases(
    imp: list[float], segments: list[int], kwargs: dict[str, object], expected: list[int]
) -> None:
    assert _seg(imp, segments, **kwargs) == expected


def test_segment_nan_ranks_last_and_mixed_infinities_do_not_break_ranking() -> None:
    imp = [np.nan, np.nan, 1, 1, 0.5, 0.5]
    assert _seg(imp, [2, 4], keep_rate=0.3) == [2, 3]
    imp2 = [np.inf, -np.inf, 0.1, 0.1]
    assert _seg(imp2, [], keep_rate=0.5) == [2, 3]  # (inf + -inf) / 2 is NaN: that chunk ranks last


def test_segment_ties_go_to_the_earlier_chunk() -> None:
    assert _seg([1, 1, 1, 1, 1, 1], [3], keep_rate=0.5, chunk_size=3) == [0, 1, 2]


def test_segment_invariants_random() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(0, 60))
        imp = rng.random(n, dtype=np.float32)
        prot = rng.random(n) < 0.3
        segs = sorted(rng.integers(0, n + 1, size=int(rng.integers(0, 6))).tolist())
        rate = float(rng.choice([0.05, 0.2, 0.5, 1.0]))
        cap = None if rng.random() < 0.5 else int(rng.integers(0, 30))
        kept = select_chunks(
            imp, keep_rate=rate, chunk_size=int(rng.integers(1, 9)), protected=prot, max_kept_tokens=cap, segments=segs
        )
        mask = np.zeros(n, dtype=bool)
        mask[kept] = True
        assert np.all(np.diff(kept) > 0) and kept.dtype == np.int64
        assert mask[prot].all()
        free = int((~prot).sum())
        target = budget_chunks(rate, free)
        if cap is not None:
            target = min(target, cap)
        assert int((mask & ~prot).sum()) == min(target, free)


# --- chunk_context: a chunk's score also sees its neighbourhood -------------------------------------------
def test_blend_context_weights_own_score_and_neighbourhood_peak() -> None:
    from specprefill.scoring.chunks import blend_context

    imp = np.array([0.0, 0.0, 0.0, 0.0, 8.0, 0.0], dtype=np.float32)
    bounds = [(0, 2), (2, 4), (4, 6)]
    own = [0.0, 0.0, 4.0]
    none = np.zeros(6, dtype=np.bool_)
    assert blend_context(imp, bounds, own, none, 0) == own  # 0: the chunk's own score
    assert blend_context(imp, bounds, own, none, 1, 0.5) == [0.0, 4.0, 6.0]  # (0 + 8) / 2; the peak's chunk stays first
    assert blend_context(imp, bounds, own, none, 3, 0.5) == [4.0, 4.0, 6.0]
    assert blend_context(imp, bounds, own, none, 1) == pytest.approx([0.0, 2.4, 5.2])  # default 0.3: 0.7 own + 0.3 peak
    assert blend_context(imp, bounds, own, none, 1, 1.0) == [0.0, 8.0, 8.0]  # weight 1: the peak alone
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="context_weight"):
            blend_context(imp, bounds, own, none, 1, bad)
    excluded = np.array([0, 0, 0, 0, 1, 0], dtype=np.bool_)  # a protected peak lifts nobody
    assert blend_context(imp, bounds, own, excluded, 3, 0.5) == [0.0, 0.0, 2.0]
    # a chunk without a finite own score or neighbourhood keeps its own score
    assert blend_context(imp, bounds, [-math.inf, 0.0, 4.0], np.ones(6, dtype=np.bool_), 2) == [-math.inf, 0.0, 4.0]


@pytest.mark.parametrize("segments", [None, []])
def test_chunk_context_keeps_the_neighbour_of_a_peak(segments: list[int] | None) -> None:
    # chunks of 2: [0,1] [2,3] [4,5] [6,7]; the peak is token 4, the chunk before it holds the answer
    imp = np.array([0.3, 0.3, 0.0, 0.1, 1.0, 0.5, 0.2, 0.2], dtype=np.float32)
    plain = select_chunks(imp, keep_rate=0.5, chunk_size=2, segments=segments)
    near = select_chunks(imp, keep_rate=0.5, chunk_size=2, segments=segments, chunk_context=1, context_weight=0.5)
    light = select_chunks(imp, keep_rate=0.5, chunk_size=2, segments=segments, chunk_context=1, context_weight=0.1)
    assert plain.tolist() == [0, 1, 4, 5]
    assert near.tolist() == [2, 3, 4, 5]  # (0.05 + 1.0) / 2 beats (0.3 + 0.3) / 2 and (0.2 + 0.5) / 2
    assert light.tolist() == [0, 1, 4, 5]  # 0.9 * 0.05 + 0.1 * 1.0 = 0.145 loses to 0.9 * 0.3 + 0.1 * 0.3 = 0.3


def test_chunk_context_field_bounds_and_paper_preset() -> None:
    from specprefill import SpecPrefillConfig

    assert SpecPrefillConfig.paper(chunk_context=4).chunk_context == 4
    assert SpecPrefillConfig.paper().chunk_context == 0
    with pytest.raises(ConfigurationError, match="chunk_context"):
        SpecPrefillConfig(chunk_context=-1)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigurationError, match="context_weight"):
            SpecPrefillConfig(context_weight=bad)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_recorder_stops_the_forward_after_its_deepest_layer() -> None:
    import torch

    from specprefill.speculator.capture import LayersDone, Recorder, prefill

    class _Layer:
        def __init__(self, index: int) -> None:
            self.layer_idx = index

    q, k = torch.zeros(1, 2, 4, 8), torch.zeros(1, 1, 4, 8)
    ran: list[int] = []

    def model(recorder: Recorder, layers: int) -> str:
        for i in range(layers):
            ran.append(i)
            recorder.record(_Layer(i), q, k, {})
        return "logits"

    early = Recorder(total_length=4, layers=[3, 1], stop_early=True)
    assert early.stop_after == 3
    with pytest.raises(LayersDone):
        model(early, 6)
    assert ran == [0, 1, 2, 3] and sorted(early.queries) == [1, 3]
    ran.clear()
    assert prefill(lambda: model(early, 6)) is None and ran == [0, 1, 2, 3]
    # without a layer list, or without stop_early, every layer runs and the forward returns
    for recorder in (Recorder(total_length=4, stop_early=True), Recorder(total_length=4, layers=[1])):
        ran.clear()
        assert recorder.stop_after is None
        assert prefill(lambda recorder=recorder: model(recorder, 6)) == "logits" and ran == list(range(6))


# --- coverage and sentence completion ---------------------------------------------------------------------
def test_ranked_chunks_without_coverage_is_the_plain_ranking() -> None:
    from specprefill.scoring import ranked_chunks

    bounds = [(i * 32, i * 32 + 32) for i in range(5)]
    assert list(ranked_chunks([10, 9, 8, 1, 7], bounds)) == [0, 1, 2, 4, 3]
    assert list(ranked_chunks([1, 1, 1], bounds[:3])) == [0, 1, 2]  # ties: the earlier chunk


def test_coverage_moves_the_next_pick_to_another_region() -> None:
    from specprefill.scoring import ranked_chunks

    bounds = [(i * 32, i * 32 + 32) for i in range(5)]
    # chunk 1 sits next to the best chunk: full coverage sends the next picks elsewhere first
    assert list(ranked_chunks([10, 9, 8, 1, 7], bounds, coverage=1.0, radius=32)) == [0, 2, 4, 1, 3]
    # half coverage: 9 -> 4.5 after the first pick, still above 1 but below 8 and 7
    assert list(ranked_chunks([10, 9, 8, 1, 7], bounds, coverage=0.5, radius=32))[:3] == [0, 2, 4]
    # -inf scores stay last, in order
    assert list(ranked_chunks([-math.inf, 2, -math.inf], bounds[:3], coverage=0.5, radius=32)) == [1, 0, 2]


def _rules(**changes: Any) -> Any:
    from specprefill.scoring import PickRules

    return PickRules(**changes)


@pytest.mark.parametrize(
    ("peak", "after", "expected"),
    [
        ((8, 16), "any", list(range(8, 20))),  # mid-sentence chunk: the rest of its sentence after it
        ((8, 16), "short", list(range(8, 20))),
        # a chunk ending a long sentence: the start of the next one, then back until the allowance (6) is spent;
        # the runner-up fills the budget
        ((16, 20), "any", [*range(14, 24), 36, 37]),
        # ... or, with "short", not the next sentence: 4 tokens back, then the runner-up fills the budget
        ((16, 20), "short", [*range(12, 20), 36, 37, 38, 39]),
    ],
)
def test_sentence_completion_keeps_what_follows_a_kept_chunk(
    peak: tuple[int, int], after: Literal["any", "short"], expected: list[int]
) -> None:
    imp = np.zeros(40, dtype=np.float32)
    imp[peak[0] : peak[1]] = 1.0
    imp[36:40] = 0.5  # the runner-up chunk, taken when completion is off
    rules = _rules(complete_tokens=4, complete_next=after, complete_share=0.5, complete_reserve=0)
    kept = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20], max_kept_tokens=12, rules=rules)
    plain = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20], max_kept_tokens=12)
    assert kept.tolist() == expected
    assert len(plain) == len(kept) == 12 and plain.tolist() != kept.tolist()


def test_pick_rules_follow_the_config() -> None:
    from specprefill.scoring import PickRules

    assert PickRules.of(SpecPrefillConfig()).complete_next == "any"
    rules = PickRules.of(SpecPrefillConfig(complete_next="short", complete_tokens=8))
    assert (rules.complete_next, rules.complete_tokens) == ("short", 8)


def test_sentence_completion_takes_the_line_after_a_short_one() -> None:
    imp = np.zeros(40, dtype=np.float32)
    imp[16:20] = 1.0  # a 4-token line of its own (a heading or question): what follows it completes it
    imp[36:40] = 0.5
    for after in ("any", "short"):
        rules = _rules(complete_tokens=4, complete_next=after, complete_share=0.5, complete_reserve=0)
        kept = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[16, 20], max_kept_tokens=12, rules=rules)
        assert kept.tolist() == [*range(16, 24), 36, 37, 38, 39]


def test_sentence_completion_looks_back_to_the_sentence_start() -> None:
    imp = np.zeros(40, dtype=np.float32)
    imp[8:16] = 1.0
    imp[16:20] = -1.0  # nothing after the chunk is free once it is protected
    protected = np.zeros(40, dtype=np.bool_)
    protected[16:20] = True
    rules = _rules(complete_tokens=4, complete_share=0.5, complete_reserve=0)
    kept = select_chunks(
        imp, keep_rate=1.0, chunk_size=8, segments=[20], protected=protected, max_kept_tokens=12, rules=rules
    )
    assert kept.tolist() == [4, 5, 6, 7, *range(8, 20)]


def test_sentence_completion_leaves_a_small_budget_to_whole_chunks() -> None:
    imp = np.zeros(200, dtype=np.float32)
    imp[8:16] = 1.0  # mid-sentence: completion would take 16..19
    imp[16:20] = -1.0  # never picked on its own score
    imp[100:108] = 0.5
    plain = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20, 120], max_kept_tokens=12)
    rules = _rules(complete_tokens=4, complete_share=0.5)  # the default reserve: 64 tokens
    assert (
        select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20, 120], max_kept_tokens=12, rules=rules).tolist()
        == plain.tolist()
    )
    # a budget of 72 leaves floor(0.5 * (72 - 64)) = 4 tokens to completion: exactly the rest of the sentence
    kept = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20, 120], max_kept_tokens=72, rules=rules)
    assert {16, 17, 18, 19} <= set(kept.tolist()) and len(kept) == 72
    wide = select_chunks(imp, keep_rate=1.0, chunk_size=8, segments=[20, 120], max_kept_tokens=72)
    assert not {16, 17, 18, 19} <= set(wide.tolist())


@pytest.mark.parametrize("seed", range(6))
def test_the_budget_stays_exact_with_every_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    imp = rng.random(n).astype(np.float32)
    protected = rng.random(n) < 0.1
    segments = sorted(rng.choice(np.arange(1, n), size=12, replace=False).tolist())
    rules = _rules(chunk_context=8, coverage=0.6, coverage_radius=64, complete_tokens=12, complete_share=0.4)
    for rate in (0.05, 0.1, 0.3, 0.9):
        kept = select_chunks(imp, keep_rate=rate, chunk_size=16, protected=protected, segments=segments, rules=rules)
        free = int((~protected).sum())
        assert int((~protected[kept]).sum()) == math.ceil(rate * free - 1e-9)
        assert protected[kept].sum() == protected.sum()
        paper = select_chunks(imp, keep_rate=rate, chunk_size=16, protected=protected, rules=rules)
        assert protected[paper].sum() == protected.sum()
    # rank fusion keeps the budget exact too, in both grids
    words = np.where(rng.random(n) < 0.05, rng.random(n), 0).astype(np.float32)
    fused = _rules(chunk_context=8, complete_tokens=12, complete_share=0.4, fusion=9)
    for rate in (0.05, 0.3):
        kept = select_chunks(
            imp, keep_rate=rate, chunk_size=16, protected=protected, segments=segments, rules=fused, words=words
        )
        assert int((~protected[kept]).sum()) == math.ceil(rate * int((~protected).sum()) - 1e-9)
        paper = select_chunks(imp, keep_rate=rate, chunk_size=16, protected=protected, rules=fused, words=words)
        assert protected[paper].sum() == protected.sum()


# --- rank fusion with the question words -------------------------------------------------------------------
def test_fused_ranks_hand_computed() -> None:
    from specprefill.scoring import fused_ranks

    # primary ranks: chunk 0 first, 1 second, 2 third; secondary: chunk 2 first, chunk 0 second, chunk 1 none
    fused = fused_ranks([3.0, 2.0, 1.0], [0.5, 0.0, 0.9], k=1)
    assert fused == pytest.approx([1 / 2 + 1 / 3, 1 / 3, 1 / 4 + 1 / 2])
    # k = 0 is allowed (ranks count from 1); ties go to the earlier chunk in both rankings
    assert fused_ranks([1.0, 1.0], [0.2, 0.2], k=0) == pytest.approx([2.0, 1.0])
    # no chunk names a question word: the primary ranking, unchanged in order
    plain = fused_ranks([0.1, 0.7, 0.4], [0.0, 0.0, 0.0], k=9)
    assert sorted(range(3), key=lambda i: -plain[i]) == [1, 2, 0]
    with pytest.raises(ValueError, match="secondary"):
        fused_ranks([1.0], [1.0, 2.0], k=9)
    with pytest.raises(ValueError, match=">= 0"):
        fused_ranks([1.0], [1.0], k=-1)


@pytest.mark.parametrize("segments", [None, []])
def test_fusion_keeps_the_best_question_word_chunk_beside_attentions_best(segments: list[int] | None) -> None:
    imp = np.zeros(64, dtype=np.float32)
    imp[0:16] = [5, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3]  # attention's favourite region: chunks 0 and 1
    imp[48:56] = 0.5  # chunk 6: a weaker attention score, but it names the question's rare words
    words = np.zeros(64, dtype=np.float32)
    words[50] = 2.0
    budget = dict(keep_rate=1.0, chunk_size=8, max_kept_tokens=16, segments=segments)
    plain = select_chunks(imp, **budget, rules=_rules(), words=words)
    fused = select_chunks(imp, **budget, rules=_rules(fusion=9), words=words)
    off = select_chunks(imp, **budget, rules=_rules(fusion=9))  # no second channel: the plain ranking
    assert plain.tolist() == off.tolist() == list(range(16))
    assert fused.tolist() == [*range(8), *range(48, 56)]
    with pytest.raises(ValueError, match="one score per token"):
        select_chunks(imp, **budget, rules=_rules(fusion=9), words=words[:10])


def test_fusion_follows_the_config() -> None:
    from specprefill.scoring import PickRules

    assert PickRules.of(SpecPrefillConfig()).fusion == 9
    assert PickRules.of(SpecPrefillConfig(lexical_fusion=0)).fusion == 0
    assert PickRules.of(SpecPrefillConfig(lexical_weight=0)).fusion == 0  # no question words: nothing to fuse
    assert PickRules.of(SpecPrefillConfig.paper()).fusion == 0
