"""Both benchmarks end to end with tiny settings (the CI smoke configuration) on the packaged SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.tasks import TASKS
from conftest import needs_model

HAS_MPL = importlib.util.find_spec("matplotlib") is not None

pytestmark = [pytest.mark.integration, needs_model]


@pytest.fixture()
def shared_speculator(monkeypatch: pytest.MonkeyPatch, speculator: Any) -> Iterator[Any]:
    """Reuse the session's SmolLM2 instead of loading it again in each benchmark; restore torch threads."""
    import torch

    import specprefill.speculator.loading

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", lambda *a, **k: speculator)
    threads = torch.get_num_threads()
    yield speculator
    torch.set_num_threads(threads)


def test_quality_and_ttft_smoke(tmp_path: Path, shared_speculator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import quality, ttft

    start = time.perf_counter()
    # one thread: two threads crawl when other jobs oversubscribe the CPU (OpenMP barriers)
    assert quality.main(["--preset", "smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    q = json.loads((tmp_path / "quality.json").read_text())
    methods = set(q["meta"]["methods"])
    assert {"full", "specprefill-lah8", "specprefill-lah1", "random", "head-tail"} <= methods
    assert "rag" in methods or "rag" in q["meta"]["skipped"]
    n_tasks = len(TASKS)
    assert len(q["rows"]) == n_tasks * (1 + (len(methods) - 1) * 2)  # full once, others at 2 keep rates
    spec = [r for r in q["rows"] if r["method"] == "specprefill-lah8" and r["keep_rate"] == 0.1]
    assert all(0.0 <= r["retention"] <= 1.0 and r["method_seconds"] > 0 for r in spec)
    chunk_rows = [r for r in q["rows"] if r["method"] not in ("full", "longllmlingua")]
    kept_by_cell: dict[tuple[str, float], set[int]] = {}
    for r in chunk_rows:  # every chunk method keeps the same number of tokens
        kept_by_cell.setdefault((r["sample_id"], r["keep_rate"]), set()).add(r["kept_tokens"])
    assert len(kept_by_cell) == n_tasks * 2 and all(len(counts) == 1 for counts in kept_by_cell.values())
    full_answer = [a for a in q["accuracy"] if a["method"] == "full"]
    assert len(full_answer) == 1 and full_answer[0]["positions"] == "full"
    pruned = [a for a in q["accuracy"] if a["method"] == "specprefill-lah8"]
    assert pruned and all(a["positions"] == "original" and a["ttft_seconds"] > 0 for a in pruned)

    assert ttft.main(["--preset", "smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    t = json.loads((tmp_path / "ttft.json").read_text())
    assert t["meta"]["note"] == "base has random weights: timing only"
    methods_t = {r["method"] for r in t["rows"]}
    assert methods_t == {"full", "specprefill-lah8", "head-tail"}
    for r in t["rows"]:
        assert r["ttft_seconds"] > 0 and r["speedup"] > 0
        if r["method"] == "specprefill-lah8":
            assert r["flop_ratio"] > 0 and r["ceiling"] == pytest.approx(1 / (r["keep_rate"] + r["flop_ratio"]))

    text = (tmp_path / "report.md").read_text()
    assert "## Answer-span retention" in text and "## Time to first token" in text
    if HAS_MPL:
        assert {"retention.png", "accuracy.png", "ttft_speedup.png"} <= {p.name for p in tmp_path.iterdir()}
    out = capsys.readouterr().out
    assert "Answer-span retention on the needle tasks" in out and "TTFT on CPU" in out
    # about a minute on an idle 2-core machine; not asserted, timings on shared CI machines vary too much
    print(f"smoke benchmarks took {time.perf_counter() - start:.0f} s")
