"""The ablation part of the report: SpecPrefill variants side by side, and the figures the defaults must meet.

Reads only the saved result: the variants' definitions come from ``meta["variants"]`` (written by
:mod:`benchmarks.quality`), the task families from ``meta["needle_tasks"]`` and ``meta["ruler_tasks"]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.tables import (
    LABELS,
    Row,
    aggregate,
    headline_rate,
    keep_rates_of,
    markdown_table,
    method_order,
    num,
    pct,
)

__all__ = ["TARGET_TASKS", "ablation_section", "target_figures", "targets_table", "variants_table"]

TARGET_TASKS: tuple[str, ...] = ("niah_multivalue", "niah_multiquery", "niah_multianswer")
"""Tasks whose answers sit in several places (each shown on its own)."""


def _at(rows: Sequence[Row], method: str, rate: float) -> list[Row]:
    return [r for r in rows if r["method"] == method and abs(float(r["keep_rate"]) - rate) < 1e-9]


def _mean(rows: Sequence[Row], key: str = "retention", tasks: Sequence[str] | None = None) -> float:
    values = [float(r[key]) for r in rows if tasks is None or r["task"] in tasks]
    return sum(values) / len(values) if values else math.nan


def target_figures(result: Mapping[str, Any], method: str, rate: float) -> dict[str, float]:
    """One method's headline figures at one keep rate (shares in [0, 1]; differences to ``rag`` in points).

    Keys: ``needle`` (mean retention on the needle tasks), one per :data:`TARGET_TASKS`,
    ``multianswer_all`` (share of multi-answer samples with every answer kept), ``ruler`` (mean over the
    six RULER tasks), ``ruler_vs_rag`` and ``worst_task_vs_rag`` (NaN where ``rag`` did not run).
    """
    meta = result["meta"]
    rows = _at(result["rows"], method, rate)
    rag = _at(result["rows"], "rag", rate)
    ruler = list(meta.get("ruler_tasks", ()))
    out = {"needle": _mean(rows, tasks=meta.get("needle_tasks", ()))}
    out.update({task: _mean(rows, tasks=[task]) for task in TARGET_TASKS})
    out["multianswer_all"] = _mean(rows, "retained_all", ["niah_multianswer"])
    out["ruler"] = _mean(rows, tasks=ruler)
    out["ruler_vs_rag"] = 100 * (out["ruler"] - _mean(rag, tasks=ruler))
    gaps = [_mean(rows, tasks=[t]) - _mean(rag, tasks=[t]) for t in ruler]
    gaps = [g for g in gaps if not math.isnan(g)]
    out["worst_task_vs_rag"] = 100 * min(gaps) if gaps else math.nan
    return out


def _points(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.0f}"


def targets_table(result: Mapping[str, Any], rate: float) -> str:
    """Every SpecPrefill variant (and embedding retrieval) on the figures the defaults must meet."""
    names = [*result["meta"].get("variants", {}), *(["rag"] if _at(result["rows"], "rag", rate) else [])]
    body = []
    for m in method_order(names):
        f = target_figures(result, m, rate)
        body.append(
            [
                LABELS.get(m, m),
                pct(f["needle"]),
                *[pct(f[t]) for t in TARGET_TASKS],
                pct(f["multianswer_all"]),
                pct(f["ruler"]),
                "–" if m == "rag" else _points(f["ruler_vs_rag"]),
                "–" if m == "rag" else _points(f["worst_task_vs_rag"]),
            ]
        )
    header = [
        "method",
        "needle tasks",
        "multi-value",
        "multi-query",
        "multi-answer",
        "multi-answer: all kept",
        "six RULER tasks",
        "six tasks vs rag (points)",
        "worst task vs rag (points)",
    ]
    return markdown_table(header, body)


def variants_table(result: Mapping[str, Any]) -> str:
    """Each variant's setting, scoring pass and retention on all tasks at every keep rate."""
    variants: Mapping[str, Mapping[str, Any]] = result["meta"].get("variants", {})
    rows = [r for r in result["rows"] if r["method"] in variants]
    rates = keep_rates_of(rows)
    agg = aggregate(rows, ["method", "keep_rate"], "retention")
    body = []
    for m in method_order(variants):
        v = variants[m]
        cells = [pct(agg.get((m, rate), (math.nan, 0))[0]) for rate in rates]
        body.append([LABELS.get(m, m), f"`{v.get('describe', '')}`", v.get("scoring_group", "–"), *cells])
    return markdown_table(["variant", "setting", "scoring pass", *[f"keep {pct(r)}" for r in rates]], body)


def ablation_section(result: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the ablation (empty when the result has fewer than two SpecPrefill variants)."""
    meta = result["meta"]
    variants = meta.get("variants", {})
    if len(variants) < 2:
        return []
    rate = headline_rate(keep_rates_of(result["rows"]))
    scoring = meta.get("scoring", {})
    return [
        "### SpecPrefill variants (ablation): retention on all tasks",
        "",
        "Each variant is the paper's preset (`paper`) or the library defaults (`default`) with the config "
        "overrides shown. Variants in the same scoring pass share one speculator pass per sample (they differ "
        f"only in selection); this run computed {scoring.get('computed', '?')} passes and reused them "
        f"{scoring.get('reused', '?')} times.",
        "",
        variants_table(result),
        "",
        f"### Targets at {pct(rate)} keep",
        "",
        "Needle tasks: NIAH single, multi-key, multi-value, multi-query. Multi-answer: every answer kept = share of "
        "samples whose three answers all survive. Points vs rag: retention difference to embedding retrieval "
        "(MiniLM) in percentage points, over the six RULER tasks together and for the worst single task.",
        "",
        targets_table(result, rate),
        "",
        f"Method cost per sample: {num(_mean_cost(result, rate))} s on average over the variants "
        "(speculator scoring, each variant counted with its full pass).",
        "",
    ]


def _mean_cost(result: Mapping[str, Any], rate: float) -> float:
    variants = result["meta"].get("variants", {})
    rows = [r for m in variants for r in _at(result["rows"], m, rate)]
    return _mean(rows, "method_seconds")
