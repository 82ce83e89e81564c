"""The real-prose part of the report: facts kept in real documents, per split, method and keep rate.

Reads only the saved result. Real-prose rows (task ``real_prose``) carry ``split``, ``spans_kept`` (one flag per
answer span) and ``answer_positions``; from them:

* **single-fact kept** - share of single-fact questions whose answer span is wholly kept;
* **two-fact, both kept** - share of two-fact questions with both answer spans wholly kept (``retained_all``);
* **two-fact, facts kept** - share of the two-fact questions' answer spans kept (one of two counts half);
* **by position** - share of all answer spans kept, by the third of the document they sit in.

The full prompt (keep rate 1.0) is shown in every keep-rate column. :func:`split_quality` separates these rows
from the generated tasks', so the RULER tables, the ablation and the plots never mix the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmarks.real_prose import POSITIONS, SPLITS, TASK
from benchmarks.tables import LABELS, Row, headline_rate, keep_rates_of, markdown_table, method_order, pct

__all__ = [
    "is_real_prose",
    "position_kept",
    "question_kept",
    "real_prose_figures",
    "real_prose_section",
    "real_prose_summary",
    "split_quality",
]


def is_real_prose(row: Row) -> bool:
    """Whether a result row belongs to the real-prose set."""
    return bool(row.get("task") == TASK)


def split_quality(result: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Row]]:
    """``(the result without real-prose rows, or None when nothing else ran; the real-prose rows)``.

    The first keeps the rest of the report exactly as it was for the generated tasks: its rows, accuracy rows,
    ``options.tasks`` and sample count leave the real-prose set out.
    """
    rows = result.get("rows", [])
    real = [r for r in rows if is_real_prose(r)]
    if not real:
        return dict(result), []
    other = [r for r in rows if not is_real_prose(r)]
    if not other:
        return None, real
    meta = dict(result["meta"])
    options = dict(meta.get("options", {}))
    options["tasks"] = [t for t in options.get("tasks", []) if t != TASK]
    meta.update(options=options, samples=len({r["sample_id"] for r in other}))
    if meta.get("preset_settings"):  # the preset's task list too, or the report calls dropping the set a change
        preset = dict(meta["preset_settings"])
        preset["tasks"] = [t for t in preset.get("tasks", []) if t != TASK]
        meta["preset_settings"] = preset
    accuracy = [r for r in result.get("accuracy", []) if not is_real_prose(r)]
    return {**result, "meta": meta, "rows": other, "accuracy": accuracy}, real


def _at(rows: Iterable[Row], method: str, rate: float, split: str) -> list[Row]:
    wanted = 1.0 if method == "full" else rate
    return [
        r
        for r in rows
        if r["method"] == method and r.get("split") == split and abs(float(r["keep_rate"]) - wanted) < 1e-9
    ]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def question_kept(rows: Sequence[Row], facts: int) -> float:
    """Share of the rows with ``facts`` answer spans whose every span is kept (NaN without such rows)."""
    return _mean([float(bool(r["retained_all"])) for r in rows if len(r.get("spans_kept", ())) == facts])


def position_kept(rows: Sequence[Row], position: str) -> float:
    """Share of the answer spans at ``position`` (start/middle/end) that are kept (NaN without any)."""
    flags = [
        float(bool(kept))
        for r in rows
        for kept, where in zip(r.get("spans_kept", ()), r.get("answer_positions", ()), strict=False)
        if where == position
    ]
    return _mean(flags)


def real_prose_figures(rows: Sequence[Row], method: str, rate: float, split: str) -> dict[str, float]:
    """One method's figures at one keep rate on one split (shares in [0, 1], NaN where nothing ran).

    Keys: ``single`` (single-fact questions kept), ``two_all`` (two-fact questions with both facts kept),
    ``two_spans`` (share of the two-fact questions' spans kept), ``start``/``middle``/``end`` (answer spans
    kept by position), ``n_single``/``n_two`` (questions counted).
    """
    at = _at(rows, method, rate, split)
    two = [r for r in at if len(r.get("spans_kept", ())) == 2]
    out = {
        "single": question_kept(at, 1),
        "two_all": question_kept(at, 2),
        "two_spans": _mean([float(bool(k)) for r in two for k in r["spans_kept"]]),
        "n_single": float(sum(len(r.get("spans_kept", ())) == 1 for r in at)),
        "n_two": float(len(two)),
    }
    out.update({p: position_kept(at, p) for p in POSITIONS})
    return out


def _splits(rows: Iterable[Row]) -> list[str]:
    present = {r.get("split") for r in rows}
    return [s for s in SPLITS if s in present]


def _table(
    rows: Sequence[Row],
    rates: Sequence[float],
    splits: Sequence[str],
    cell: Callable[[dict[str, float]], str],
) -> str:
    body = []
    for m in method_order(r["method"] for r in rows):
        cells = [" / ".join(cell(real_prose_figures(rows, m, rate, s)) for s in splits) for rate in rates]
        body.append([LABELS.get(m, m), *cells])
    return markdown_table(["method", *[f"keep {pct(r)}" for r in rates]], body)


def _position_table(rows: Sequence[Row], rate: float, splits: Sequence[str]) -> str:
    """Answer spans kept by position at one keep rate: one column per split, cells ``start / middle / end``."""
    body = []
    for m in method_order(r["method"] for r in rows):
        cells = []
        for s in splits:
            figures = real_prose_figures(rows, m, rate, s)
            cells.append(" / ".join(pct(figures[p]) for p in POSITIONS))
        body.append([LABELS.get(m, m), *cells])
    return markdown_table(["method", *[f"{s}: start / middle / end" for s in splits]], body)


def _counts(rows: Sequence[Row], split: str) -> tuple[int, int, int]:
    """``(questions, single-fact, two-fact)`` of one split."""
    facts = {r["sample_id"]: len(r.get("spans_kept", ())) for r in rows if r.get("split") == split}
    return len(facts), sum(n == 1 for n in facts.values()), sum(n == 2 for n in facts.values())


def _document_lines(info: Mapping[str, Any], splits: Sequence[str]) -> list[str]:
    """One bullet naming each split's documents (from ``meta["real_prose"]["documents"]``), if recorded."""
    documents = info.get("documents") or {}
    parts = []
    for split in splits:
        names = sorted(d for d, v in documents.items() if v.get("split") == split)
        if names:
            parts.append(f"{split}: " + ", ".join(f"`{n}`" for n in names))
    return ["- Documents: " + "; ".join(parts) + "."] if parts else []


def _accuracy_table(result: Mapping[str, Any], base: str, splits: Sequence[str]) -> str:
    acc = [r for r in result.get("accuracy", []) if is_real_prose(r) and r["base"] == base]
    split_of = {r["sample_id"]: r.get("split") for r in result["rows"] if is_real_prose(r)}
    rates = keep_rates_of(acc)
    body = []
    for m in method_order(r["method"] for r in acc):
        cells = []
        for rate in rates:
            wanted = 1.0 if m == "full" else rate
            parts = []
            for s in splits:
                scores = [
                    float(r["score"])
                    for r in acc
                    if r["method"] == m and split_of.get(r["sample_id"]) == s and abs(r["keep_rate"] - wanted) < 1e-9
                ]
                parts.append(pct(_mean(scores)))
            cells.append(" / ".join(parts))
        body.append([LABELS.get(m, m), *cells])
    return markdown_table(["method", *[f"keep {pct(r)}" for r in rates]], body)


def real_prose_section(result: Mapping[str, Any], *, wall_line: str = "") -> list[str]:
    """The markdown lines of the real-prose section (empty when the result has no real-prose rows)."""
    rows = [r for r in result.get("rows", []) if is_real_prose(r)]
    if not rows:
        return []
    meta = result["meta"]
    info = meta.get("real_prose") or {}
    splits = _splits(rows)
    rates = keep_rates_of(rows)
    label = " / ".join(splits)
    counts = "; ".join(
        f"{s}: {n} questions ({one} single-fact, {two} two-fact)" for s in splits for n, one, two in [_counts(rows, s)]
    )
    lines = [
        "## Facts kept in real documents (`--tasks real_prose`)",
        "",
        f"- Data: `benchmarks/data/real_prose` (fingerprint `{info.get('fingerprint', '?')}`): questions over "
        "whole real documents (licences, Debian manual pages, Python documentation, package READMEs; 2,300-6,000 "
        "tokens each). Every answer occurs exactly once in its document; a two-fact question needs two answers "
        f"from different places. Split by document: {counts}. **heldout is for reporting only: never tune on it.**",
        *_document_lines(info, splits),
        "- Every method keeps round(keep × document tokens) tokens of the document (its best 32-token chunks); "
        "the instruction and the question are always kept and do not use the budget.",
        "- Cells are `" + label + "`. Single-fact: share of single-fact questions whose answer span is wholly "
        "kept. Two-fact: share of two-fact questions with both spans kept, and share of their spans kept. "
        "Position: share of all answer spans kept, by the third of the document (in characters) they sit in.",
        "",
        f"### Single-fact questions: answer kept ({label})",
        "",
        _table(rows, rates, splits, lambda f: pct(f["single"])),
        "",
        f"### Two-fact questions: both facts kept ({label})",
        "",
        _table(rows, rates, splits, lambda f: pct(f["two_all"])),
        "",
        f"### Two-fact questions: share of their facts kept ({label})",
        "",
        _table(rows, rates, splits, lambda f: pct(f["two_spans"])),
        "",
    ]
    for split in splits:
        lines += [
            f"### Answer spans kept by position in the document, {split} (start / middle / end)",
            "",
            _table(rows, rates, [split], lambda f: " / ".join(pct(f[p]) for p in POSITIONS)),
            "",
        ]
    for base in meta.get("bases", []):
        if any(is_real_prose(r) and r["base"] == base for r in result.get("accuracy", [])):
            lines += [f"### Answer accuracy on real prose, base `{base}` ({label})", ""]
            lines += [_accuracy_table(result, base, splits), ""]
    if wall_line:
        lines += [wall_line, ""]
    return lines


def real_prose_summary(result: Mapping[str, Any]) -> str:
    """Plain-text tables for the terminal (empty when the result has no real-prose rows)."""
    rows = [r for r in result.get("rows", []) if is_real_prose(r)]
    if not rows:
        return ""
    splits = _splits(rows)
    rates = keep_rates_of(rows)
    low = headline_rate(rates)
    label = " / ".join(splits)
    parts = [
        f"Real prose, single-fact questions: answer kept ({label}):",
        _table(rows, rates, splits, lambda f: pct(f["single"])),
        f"Real prose, two-fact questions: both facts kept ({label}):",
        _table(rows, rates, splits, lambda f: pct(f["two_all"])),
        f"Real prose, answer spans kept by position at {pct(low)} keep:",
        _position_table(rows, low, splits),
    ]
    return "\n\n".join(parts)
