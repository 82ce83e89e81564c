"""Merging quality results run in slices; the harness stays out of the installed package."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import merge
from specprefill.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]


def _row(task: str, seed: int, method: str, rate: float, kept: int) -> dict[str, Any]:
    return {
        "sample_id": f"{task}/1024/{seed}",
        "task": task,
        "length": 1024,
        "tokens": 1030,
        "method": method,
        "keep_rate": rate,
        "kept_tokens": kept,
        "retention": 1.0,
        "method_seconds": 0.1 * seed,
    }


def _slice(tasks: list[str], seeds: list[int], seed: int) -> dict[str, Any]:
    rows = [_row(t, s, "specprefill-lah8", 0.1, 100 + s) for t in tasks for s in seeds]
    options = {
        "tasks": tasks,
        "lengths": [1024],
        "samples": len(seeds),
        "seed": seed,
        "speculator": "smollm2-135m",
        "keep_rates": [0.1],
        "methods": ["specprefill-lah8"],
        "bases": [],
        "sources": ["stdlib"],
    }
    meta = {
        "bench": "quality",
        "preset": "full",
        "options": options,
        "corpus": {"fingerprint": "f"},
        "samples": len(rows),
        "skipped": {},
        "wall": {"total_seconds": 10.0},
        "machine": {"cpus": 2},
        "finished": f"2026-11-29 0{seed}:00:00 +0000",
        "command": f"slice {seed}",
    }
    return {"meta": meta, "rows": rows, "accuracy": []}


def test_slices_by_seed_and_task_merge_into_one_result() -> None:
    parts = [_slice(["niah_single"], [0, 1], 0), _slice(["niah_single"], [2, 3], 2), _slice(["qa_multidoc"], [0, 1], 0)]
    merged = merge.merge_results(parts, command="merge")
    meta = merged["meta"]
    assert len(merged["rows"]) == 6 and meta["samples"] == 6
    assert meta["options"]["tasks"] == ["niah_single", "qa_multidoc"]
    assert meta["options"]["samples"] == 2  # qa_multidoc has seeds 0-1 only: the smallest cell counts
    assert meta["options"]["seed"] == 0 and meta["wall"]["total_seconds"] == 30.0
    assert [s["command"] for s in meta["slices"]] == ["slice 0", "slice 2", "slice 0"]
    assert meta["finished"] == "2026-11-29 02:00:00 +0000"


def test_overlapping_slices_must_agree() -> None:
    a = _slice(["niah_single"], [0, 1], 0)
    b = copy.deepcopy(a)
    b["rows"][0]["method_seconds"] = 99.0  # timings may differ between runs
    assert len(merge.merge_results([a, b])["rows"]) == 2
    b["rows"][0]["kept_tokens"] = 7
    with pytest.raises(ConfigurationError, match="overlap"):
        merge.merge_results([a, b])


def test_incompatible_slices_are_refused() -> None:
    a, b = _slice(["niah_single"], [0], 0), _slice(["qa_multidoc"], [0], 0)
    b["meta"]["options"]["keep_rates"] = [0.2]
    with pytest.raises(ConfigurationError, match="keep_rates"):
        merge.merge_results([a, b])
    b = _slice(["qa_multidoc"], [0], 0)
    b["meta"]["corpus"]["fingerprint"] = "g"
    with pytest.raises(ConfigurationError, match="haystack"):
        merge.merge_results([a, b])
    with pytest.raises(ConfigurationError, match="nothing to merge"):
        merge.merge_results([])


def test_load_slice_reads_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "quality.json").write_text(json.dumps(_slice(["niah_single"], [0], 0)))
    assert merge.load_slice(tmp_path)["meta"]["bench"] == "quality"
    assert merge.load_slice(tmp_path / "quality.json")["rows"]
    (tmp_path / "ttft.json").write_text(json.dumps({"meta": {"bench": "ttft"}}))
    with pytest.raises(ConfigurationError, match="not a quality result"):
        merge.load_slice(tmp_path / "ttft.json")
    with pytest.raises(ConfigurationError, match=r"no quality\.json"):
        merge.load_slice(tmp_path / "missing")


def test_benchmarks_are_not_packaged_and_the_library_keeps_only_overhead() -> None:
    tomllib = pytest.importorskip("tomllib")
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["where"] == ["core"]
    assert not any(pattern.startswith("benchmarks") for pattern in find["include"])
    library_bench = sorted(p.name for p in (ROOT / "core" / "specprefill" / "bench").glob("*.py"))
    assert library_bench == ["__init__.py", "memory.py", "overhead.py"]
