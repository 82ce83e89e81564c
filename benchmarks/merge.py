"""Merge quality results run in slices (``--tasks``, ``--lengths``, ``--seed``) into one result and report.

Run: ``python -m benchmarks.merge results/slice-a results/slice-b ... --out examples/report``. Each argument is
a results folder (its ``quality.json``) or a JSON file. Slices must share the speculator, methods, keep rates,
bases, method variants and haystack (and, where they ran ``real_prose``, the same real-prose data); the same
sample measured in two slices must give the same rows. The merged ``meta`` lists every slice (command, finish
time, wall time, machine), and its options describe the union (tasks, lengths, seeds, real-prose splits).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.runinfo import timestamp
from benchmarks.tasks import TASKS
from specprefill.errors import ConfigurationError

__all__ = ["SHARED_OPTIONS", "load_slice", "main", "merge_results"]

SHARED_OPTIONS: tuple[str, ...] = ("speculator", "keep_rates", "methods", "bases", "variants", "sources")
"""Options every slice must agree on."""

_ROW_KEY = ("sample_id", "method", "keep_rate")
_ACCURACY_KEY = ("sample_id", "base", "method", "keep_rate")


def load_slice(path: str | Path) -> dict[str, Any]:
    """Read one slice: a results folder holding ``quality.json``, or the JSON file itself."""
    file = Path(path)
    if file.is_dir():
        file = file / "quality.json"
    if not file.is_file():
        raise ConfigurationError(f"{path}: no quality.json there; give a results folder or a quality JSON file")
    result: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    if result.get("meta", {}).get("bench") != "quality":
        raise ConfigurationError(f"{file} is not a quality result (meta.bench is not 'quality')")
    return result


def _check_compatible(results: Sequence[Mapping[str, Any]]) -> None:
    first = results[0]["meta"]
    for other in results[1:]:
        meta = other["meta"]
        for key in SHARED_OPTIONS:
            a, b = first["options"].get(key), meta["options"].get(key)
            if a != b:
                raise ConfigurationError(f"slices differ in {key}: {a} vs {b}; run every slice with the same {key}")
        if first["corpus"]["fingerprint"] != meta["corpus"]["fingerprint"]:
            raise ConfigurationError("slices used different haystack text (corpus fingerprints differ)")
    prints = {m["meta"]["real_prose"]["fingerprint"] for m in results if m["meta"].get("real_prose")}
    if len(prints) > 1:
        raise ConfigurationError(f"slices used different real_prose data (fingerprints {sorted(prints)})")


def _merge_rows(groups: Sequence[Sequence[Mapping[str, Any]]], key: Sequence[str]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in groups:
        for row in rows:
            k = tuple(row[f] for f in key)
            seen = merged.get(k)
            if seen is None:
                merged[k] = dict(row)
            elif _measured(seen) != _measured(row):
                raise ConfigurationError(f"slices overlap with different results for {k}; drop one of them")
    return list(merged.values())


def _measured(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row without its timings (the same sample measured twice keeps its kept tokens, not its seconds)."""
    return {k: v for k, v in row.items() if not k.endswith("_seconds")}


def _seeds_per_cell(rows: Sequence[Mapping[str, Any]]) -> int:
    cells: dict[tuple[str, int], set[str]] = {}
    for row in rows:
        if row["task"] not in TASKS:  # a fixed set (real_prose) has no seeds per task x length
            continue
        cells.setdefault((row["task"], int(row["length"])), set()).add(row["sample_id"])
    return min((len(ids) for ids in cells.values()), default=0)


def _real_prose_union(metas: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The real-prose record of the merged result: the first slice's, with the questions counted over all."""
    ran = [m["real_prose"] for m in metas if m.get("real_prose")]
    if not ran:
        return {}
    splits = {r["split"] for r in ran}
    facts = {r["sample_id"]: len(r.get("spans_kept", ())) for r in rows if r["task"] not in TASKS}
    return {
        **ran[0],
        "split": splits.pop() if len(splits) == 1 else "all",
        "questions": len(facts),
        "two_fact": sum(n == 2 for n in facts.values()),
    }


def merge_results(results: Sequence[Mapping[str, Any]], *, command: str = "") -> dict[str, Any]:
    """One quality result from slices (rows de-duplicated, options the union, every slice listed in meta).

    Raises:
        ConfigurationError: No slice, slices that do not fit together, or overlapping rows that disagree.

    """
    if not results:
        raise ConfigurationError("nothing to merge; give at least one results folder")
    _check_compatible(results)
    rows = _merge_rows([r["rows"] for r in results], _ROW_KEY)
    accuracy = _merge_rows([r.get("accuracy", []) for r in results], _ACCURACY_KEY)
    metas = [r["meta"] for r in results]
    first = metas[0]
    tasks = {t for m in metas for t in m["options"]["tasks"]}
    options = dict(first["options"])
    options.update(
        tasks=[t for t in TASKS if t in tasks] + sorted(tasks - set(TASKS)),
        lengths=sorted({int(n) for m in metas for n in m["options"]["lengths"]}),
        seed=min(int(m["options"]["seed"]) for m in metas),
        samples=_seeds_per_cell(rows),
    )
    splits = {m["options"]["split"] for m in metas if m.get("real_prose")}
    if splits:
        options["split"] = splits.pop() if len(splits) == 1 else "all"
    wall: dict[str, float] = {}
    for meta in metas:
        for key, value in meta.get("wall", {}).items():
            wall[key] = wall.get(key, 0.0) + float(value)
    skipped: dict[str, str] = {}
    for meta in metas:
        skipped.update(meta.get("skipped", {}))
    meta = {
        **first,
        "options": options,
        "samples": len({r["sample_id"] for r in rows}),
        "skipped": skipped,
        "real_prose": _real_prose_union(metas, rows),
        "wall": wall,
        "machine": metas[-1].get("machine", {}),
        "finished": max(str(m.get("finished", "")) for m in metas),
        "merged": timestamp(),
        "command": command or first.get("command", ""),
        "slices": [{key: m.get(key) for key in ("command", "finished", "wall", "machine")} for m in metas],
    }
    return {"meta": meta, "rows": rows, "accuracy": accuracy}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks.merge SLICE ... --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("slices", nargs="+", metavar="SLICE", help="results folders or quality JSON files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the merged quality.json and report")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks import report

    results = [load_slice(s) for s in args.slices]
    commands = " ; ".join(str(r["meta"].get("command", "")) for r in results)
    merged = merge_results(results, command=commands)
    files = report.save_and_report(Path(args.out), "quality", merged, plots=not args.no_plots)
    print(f"merged {len(results)} slices: {merged['meta']['samples']} samples, {len(merged['rows'])} rows")
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
