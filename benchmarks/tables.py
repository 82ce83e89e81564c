"""Shared pieces of the report: method order and labels, grouping means, markdown tables, number formats."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmarks.variants import VARIANTS

__all__ = [
    "LABELS",
    "METHOD_ORDER",
    "Row",
    "aggregate",
    "headline_rate",
    "keep_rates_of",
    "markdown_table",
    "method_order",
    "needle_filter",
    "num",
    "pct",
]

Row = Mapping[str, Any]

METHOD_ORDER: tuple[str, ...] = ("full", *VARIANTS, "random", "head-tail", "rag", "longllmlingua")
"""Report order of the known methods (others follow, alphabetically)."""
LABELS = {
    "full": "full prompt",
    "specprefill-lah8": "SpecPrefill (look-ahead 8)",
    "specprefill-lah1": "SpecPrefill (look-ahead 1)",
    "random": "random chunks",
    "head-tail": "head+tail truncation",
    "rag": "embedding retrieval (MiniLM)",
    "longllmlingua": "LongLLMLingua (SmolLM2-135M)",
    **{name: variant.label for name, variant in VARIANTS.items()},
}
"""Display names of the known methods (others are shown by name)."""


def method_order(names: Iterable[str]) -> list[str]:
    """Methods in report order (unknown names last, alphabetically)."""
    present = set(names)
    known = [m for m in METHOD_ORDER if m in present]
    return known + sorted(present - set(known))


def aggregate(
    rows: Iterable[Row],
    keys: Sequence[str],
    value: str | Callable[[Row], float],
    *,
    where: Callable[[Row], bool] | None = None,
) -> dict[tuple[Any, ...], tuple[float, int]]:
    """Mean of ``value`` grouped by ``keys``: ``{key tuple: (mean, count)}``."""
    sums: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    get = value if callable(value) else (lambda r: float(r[value]))
    for row in rows:
        if where is not None and not where(row):
            continue
        sums[tuple(row[k] for k in keys)].append(float(get(row)))
    return {k: (sum(v) / len(v), len(v)) for k, v in sums.items()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """A share as a whole percentage ("–" when missing)."""
    return "–" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


def num(value: float | None, fmt: str = "{:.2f}") -> str:
    """A number in ``fmt`` ("–" when missing)."""
    return "–" if value is None or math.isnan(value) else fmt.format(value)


def keep_rates_of(rows: Iterable[Row]) -> list[float]:
    """The keep rates in the rows (the full prompt's 1.0 left out), ascending."""
    return sorted({float(r["keep_rate"]) for r in rows if r["method"] != "full"})


def needle_filter(meta: Mapping[str, Any]) -> Callable[[Row], bool]:
    """A row filter for the needle tasks named in ``meta``."""
    needles = set(meta.get("needle_tasks", ()))
    return lambda r: r["task"] in needles


def headline_rate(rates: Sequence[float]) -> float:
    """The keep rate headline figures use: 10% when measured, else the lowest (0.1 without any)."""
    if any(abs(r - 0.1) < 1e-9 for r in rates):
        return 0.1
    return min(rates) if rates else 0.1
