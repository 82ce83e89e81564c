"""benchmarks.serve_load end to end on a GPU: a dummy-weight 1.7B base, the real SmolLM2 speculator on cuda:0.

Small scale (2 and 8 concurrent requests of 1,024 tokens, then the hostile phase with a short wait). Only
counts and orderings are asserted, never times: every request is answered with its stats object, pruning on
prunes and keeps fewer tokens than pruning off, pruning off passes every request through, and the chat after
the abandoned 200,000-character prune request is pruned.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("vllm_helpers")
from vllm_helpers import needs_vllm  # noqa: E402

HAS_CUDA = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.gpu,
    needs_vllm,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU with GPU vLLM (torch.cuda.is_available() is false)"),
]


def test_serve_load_small_on_gpu(tmp_path: Path) -> None:
    from benchmarks import serve_load

    out = tmp_path / "load.json"
    argv = [
        "--base", "1.7b", "--levels", "2", "8", "--tokens", "1024", "--max-tokens", "4", "--out", str(out),
        "--log", str(tmp_path / "server.log"), "--startup-timeout", "900",
        "--hostile", "--hostile-wait", "10", "--hostile-timeout", "1",
        "--", "--device", "cuda:0", "--gpu-memory-utilization", "0.5",
    ]  # fmt: skip
    code = serve_load.main(argv)
    report = json.loads(out.read_text())
    assert report["complete"] is True
    rows = {(r["concurrency"], r["pruning"]): r for r in report["rows"]}
    assert sorted(rows) == [(2, "off"), (2, "on"), (8, "off"), (8, "on")]
    for (level, _), row in rows.items():
        assert row["requests"] == row["answered"] == level, row["errors"]
        assert (row["failed"], row["missing_stats"], row["malformed_stats"], row["misplaced_stats"]) == (0, 0, 0, 0)
    for level in (2, 8):
        on, off = rows[level, "on"], rows[level, "off"]
        assert on["pruned"] > 0, on
        assert off["passed_through"] == level and off["pruned"] == 0 and off["fallback_total"] == 0
        assert on["tokens_kept"] < off["tokens_kept"] and on["tokens_in"] == pytest.approx(off["tokens_in"], rel=0.05)
        assert on["speculator_seconds"] > 0 and off["speculator_seconds"] == 0
        assert on["ttft_p50_ratio"] is not None and on["requests_per_second_ratio"] is not None
    assert report["hostile"]["chat_pruned"] is True, report["hostile"]
    assert code == 0
