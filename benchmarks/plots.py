"""PNG plots of the results (matplotlib; skipped with a note when it is missing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.tables import LABELS, Row, aggregate, keep_rates_of, method_order, needle_filter
from benchmarks.variants import ABLATION_VARIANTS

__all__ = ["write_plots"]

_LABELS = LABELS
_rates = keep_rates_of
_is_needle = needle_filter
_ABLATION_ONLY = frozenset(ABLATION_VARIANTS) - {"specprefill-default"}
"""Variants shown in the ablation tables only (the plots keep the paper's settings and the defaults)."""

_STYLE = {
    "full": {"color": "black", "linestyle": "--"},
    "specprefill-lah8": {"color": "tab:red", "marker": "o"},
    "specprefill-lah1": {"color": "tab:orange", "marker": "s"},
    "random": {"color": "tab:gray", "marker": "x"},
    "head-tail": {"color": "tab:blue", "marker": "^"},
    "rag": {"color": "tab:green", "marker": "D"},
    "longllmlingua": {"color": "tab:purple", "marker": "v"},
}


def _plot_lines(ax: Any, rows: Sequence[Row], value: str, rates: Sequence[float], title: str) -> None:
    agg = aggregate(rows, ["method", "keep_rate"], value)
    for m in method_order(r["method"] for r in rows if r["method"] not in _ABLATION_ONLY):
        style = dict(_STYLE.get(m, {}))
        if m == "full":
            level = agg.get((m, 1.0))
            if level is not None:
                ax.axhline(100 * level[0], label=_LABELS[m], **style)
            continue
        xs = [r for r in rates if (m, r) in agg]
        if xs:
            ax.plot([100 * x for x in xs], [100 * agg[(m, x)][0] for x in xs], label=_LABELS.get(m, m), **style)
    ax.set_title(title)
    ax.set_xlabel("keep rate (%)")
    ax.set_xticks([100 * r for r in rates])
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)


def write_plots(folder: Path, results: Mapping[str, Mapping[str, Any]]) -> tuple[list[Path], str | None]:
    """Draw the PNG plots for whatever results there are; returns the files and a note if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], 'plots skipped: matplotlib is not installed (pip install "specprefill[bench]")'
    files: list[Path] = []
    quality = results.get("quality")
    if quality is not None:
        rows = quality["rows"]
        rates = _rates(rows)
        needle = _is_needle(quality["meta"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        _plot_lines(axes[0], [r for r in rows if needle(r)], "retention", rates, "needle tasks (NIAH x4)")
        _plot_lines(axes[1], rows, "retention", rates, "all tasks")
        axes[0].set_ylabel("answer-span retention (%)")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.suptitle("Gold answer span wholly inside the kept prompt")
        fig.tight_layout()
        path = folder / "retention.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
        bases = quality["meta"].get("bases", [])
        if quality.get("accuracy") and bases:
            fig, axes_ = plt.subplots(1, len(bases), figsize=(6 * len(bases), 4.5), sharey=True, squeeze=False)
            for ax, base in zip(axes_[0], bases, strict=True):
                acc_rows = [r for r in quality["accuracy"] if r["base"] == base]
                n = len({r["sample_id"] for r in acc_rows})
                _plot_lines(ax, acc_rows, "score", _rates(quality["accuracy"]), f"base {base} ({n} samples)")
            axes_[0][0].set_ylabel("answer accuracy (%)")
            axes_[0][-1].legend(loc="lower right", fontsize=8)
            fig.suptitle("End-to-end answer accuracy from the kept prompt")
            fig.tight_layout()
            path = folder / "accuracy.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            files.append(path)
    ttft = results.get("ttft")
    if ttft is not None:
        rows = ttft["rows"]
        lengths = sorted({int(r["tokens"]) for r in rows})
        rates = _rates(rows)
        fig, axes_ = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5), squeeze=False)
        for ax, n in zip(axes_[0], lengths, strict=True):
            at = [r for r in rows if int(r["tokens"]) == n and r["method"] != "full"]
            for m in method_order(r["method"] for r in at):
                pts = sorted((float(r["keep_rate"]), float(r["speedup"])) for r in at if r["method"] == m)
                ax.plot([100 * x for x, _ in pts], [y for _, y in pts], label=_LABELS.get(m, m), **_STYLE.get(m, {}))
            ceil = sorted((float(r["keep_rate"]), float(r["ceiling"])) for r in at if r["method"] == "specprefill-lah8")
            if ceil:
                ax.plot(
                    [100 * x for x, _ in ceil],
                    [y for _, y in ceil],
                    color="tab:red",
                    linestyle=":",
                    label="ceiling 1/(keep + r), look-ahead 8",
                )
            ax.axhline(1.0, color="black", linestyle="--", label="full prompt")
            ax.set_title(f"{n} tokens")
            ax.set_xlabel("keep rate (%)")
            ax.set_xticks([100 * r for r in rates])
            ax.grid(alpha=0.3)
        axes_[0][0].set_ylabel("TTFT speedup vs full prompt (×)")
        axes_[0][-1].legend(fontsize=8)
        fig.suptitle(f"CPU TTFT speedup, base {ttft['meta']['base_shape']['name']}")
        fig.tight_layout()
        path = folder / "ttft_speedup.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files, None
