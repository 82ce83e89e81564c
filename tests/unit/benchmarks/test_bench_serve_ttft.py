"""benchmarks.serve_ttft without a server: options, percentiles, the summary and the side-by-side table."""

from __future__ import annotations

import pytest

from benchmarks.serve_ttft import SERVE_SHAPES, SETTINGS, kv_cache_bytes, parse_args, percentile, summarize, table


def test_defaults_are_the_issue_setup_and_vllm_options_pass_through() -> None:
    args = parse_args([])
    assert (args.base, args.speculator, args.requests, args.tokens) == ("1.7b", "smollm2-135m", 8, 4096)
    assert (
        "1.7b" in SERVE_SHAPES and "8b" in SERVE_SHAPES and SETTINGS == {"off": 1.0, "keep 10%": 0.1, "keep 30%": 0.3}
    )
    gpu = parse_args(
        ["--base", "8b", "--speculator", "1b", "--tokens", "32768", "--", "--gpu-memory-utilization", "0.8"]
    )
    assert gpu.vllm_args == ["--gpu-memory-utilization", "0.8"] and gpu.tokens == 32768
    for bad in (["--requests", "0"], ["--tokens", "100"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_and_table_ratios_against_pruning_off() -> None:
    def stats(kept: int) -> dict[str, float]:
        return {"tokens_in": 100, "tokens_kept": kept, "speculator_seconds": 0.5}

    off = summarize("off", 1.0, [{"ttft": 4.0, "stats": stats(100)}, {"ttft": 6.0, "stats": stats(100)}], wall=8.0)
    fast = summarize("keep 10%", 0.1, [{"ttft": 1.0, "stats": stats(10)}, {"ttft": 3.0, "stats": stats(12)}], wall=4.0)
    assert (off.ttft_p50, off.requests_per_second, fast.tokens_kept) == (5.0, 0.25, 11.0)
    rows = table([off, fast]).splitlines()
    assert rows[0].split()[:3] == ["setting", "TTFT", "p50"]
    assert rows[3].split()[0:2] == ["keep", "10%"]
    assert rows[3].split()[-3:] == ["2.50", f"{5.9 / 2.9:.2f}", "2.00"]  # p50, p95 (5.9 s vs 2.9 s), req/s


def test_kv_cache_sized_from_the_shape() -> None:
    shape = SERVE_SHAPES["1.7b"]  # 24 layers x 32 KV heads x 64 dims, keys and values
    assert kv_cache_bytes(shape, 1000, "bfloat16") == int(2 * 24 * 32 * 64 * 2 * 1000 * 1.25)
    assert kv_cache_bytes(shape, 1000, "float32") == 2 * kv_cache_bytes(shape, 1000, "bfloat16")
