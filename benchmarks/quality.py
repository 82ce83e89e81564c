"""Quality benchmark: answer-span retention and end-to-end answer accuracy, SpecPrefill vs the peers.

For every RULER-style sample (:mod:`benchmarks.tasks`) each method (:mod:`benchmarks.methods`)
keeps chunks of the same speculator tokenisation at the same keep rates; we record whether the gold answer
spans survive, the keep ratio achieved and the method's own cost. On a subset, real base models answer from
the kept prompt: the embedded SmolLM2-135M (same tokenizer: kept tokens at their original positions) and
the packaged Gemma-3-270M base (another tokenizer: the kept text is re-tokenised), giving accuracy, base
prefill seconds and TTFT (method seconds + base prefill seconds).

Run: ``python -m benchmarks.quality `` or ``python -m benchmarks.quality`` (``--help`` for options);
results, a markdown report and plots go to ``results/`` by default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.corpus import load_corpus
from benchmarks.methods import ALL_METHODS, Method, PreparedSample, Selection, build_method, prepare_sample
from benchmarks.metrics import answer_score, context_keep_ratio, span_retention
from benchmarks.runinfo import command_line, machine_info, set_threads, timestamp, versions
from benchmarks.tasks import NEEDLE_TASKS, TASKS, Sample, generate_samples
from specprefill.errors import SpecPrefillError

__all__ = [
    "PRESETS",
    "AccuracyRow",
    "QualityOptions",
    "RetentionRow",
    "configure_parser",
    "main",
    "max_new_tokens_for",
    "options_from_args",
    "preset_settings",
    "run_from_args",
    "run_quality",
]

_DESCRIPTION = (
    "Answer-span retention and answer accuracy of SpecPrefill vs full prompt, random chunks, head+tail "
    "truncation, embedding retrieval and LongLLMLingua, at the same keep rates, on RULER-style tasks."
)

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "lengths": [1024, 2048, 4096],
        "samples": 4,
        "keep_rates": [0.1, 0.2, 0.3, 0.5],
        "accuracy_samples": 1,
        "accuracy_lengths": [1024, 2048],
        "llmlingua_samples": 1,
        "llmlingua_lengths": [1024, 2048],
    },
    "smoke": {
        "lengths": [384],
        "samples": 1,
        "keep_rates": [0.1, 0.5],
        "accuracy_samples": 1,
        "accuracy_lengths": [384],
        "accuracy_tasks": ["niah_single"],
        "bases": ["smollm2-135m"],
        "methods": ["full", "specprefill-lah8", "specprefill-lah1", "random", "head-tail", "rag"],
        "llmlingua_samples": 0,
        "llmlingua_lengths": [384],
    },
}
"""Named settings: ``full`` (about 25 minutes on an idle 2-core machine) and ``smoke`` (CI)."""


@dataclass
class QualityOptions:
    """Settings of one quality run (see ``--help``)."""

    out: str = "results"
    speculator: str = "smollm2-135m"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    samples: int = 4
    keep_rates: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5])
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    bases: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"])
    accuracy_samples: int = 1
    accuracy_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    accuracy_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    accuracy_keep_rates: list[float] | None = None
    """Keep rates answered by the base models (default: all of ``keep_rates``)."""
    llmlingua_samples: int = 1
    llmlingua_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    llmlingua_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    sources: list[str] = field(default_factory=lambda: ["documents", "stdlib"])
    seed: int = 0
    preset: str = "full"
    plots: bool = True
    threads: int | None = None
    """torch CPU threads (default: torch's choice); 1 is faster when other jobs oversubscribe the CPU."""


@dataclass(frozen=True)
class RetentionRow:
    """One method at one keep rate on one sample."""

    sample_id: str
    task: str
    length: int
    tokens: int
    method: str
    keep_rate: float
    kept_tokens: int
    keep_ratio: float
    """Kept / all prompt tokens (what the base prefills, protected template and question included)."""
    context_keep_ratio: float
    """Kept / prunable context tokens."""
    retention: float
    """Fraction of gold spans wholly inside the kept text."""
    retained_all: bool
    method_seconds: float
    note: str = ""


@dataclass(frozen=True)
class AccuracyRow:
    """A base model's answer from one method's kept prompt."""

    sample_id: str
    task: str
    length: int
    tokens: int
    base: str
    method: str
    keep_rate: float
    score: float
    answer: str
    base_prompt_tokens: int
    method_seconds: float
    base_prefill_seconds: float
    ttft_seconds: float
    positions: str


def preset_settings(preset: str) -> dict[str, Any]:
    """Every option a preset implies (saved with each result, so the report needs no harness import)."""
    return asdict(QualityOptions(**PRESETS[preset], preset=preset))


def max_new_tokens_for(task: str) -> int:
    """Answer length cap per task (enough for every gold answer, short enough to keep the run cheap)."""
    caps = {"niah_multivalue": 36, "niah_multiquery": 20, "niah_multianswer": 28, "variable_tracking": 24}
    return caps.get(task, 10)


class _BaseModel:
    """A base backend plus how to hand it a selection (token form with positions, or re-tokenised text)."""

    def __init__(self, name: str, backend: Any, same_tokenizer: bool) -> None:
        self.name = name
        self.backend = backend
        self.same_tokenizer = same_tokenizer

    def answer(self, prepared: PreparedSample, kept: Sequence[int], max_new_tokens: int) -> Any:
        from specprefill.backends.base import BaseRequest, GenerationParams
        from specprefill.spans import join_spans, kept_char_spans

        n = prepared.n_tokens
        full = len(kept) == n
        if self.same_tokenizer:
            request = BaseRequest(
                token_ids=[prepared.input_ids[i] for i in kept],
                position_ids=[int(i) for i in kept],
                original_length=n,
            )
        else:
            text = prepared.prompt.text
            if not full:
                text = join_spans(text, kept_char_spans(prepared.offsets, kept), " … ")
            request = BaseRequest(text=text)
        return self.backend.generate(request, GenerationParams(max_new_tokens=max_new_tokens))


def _load_bases(names: Sequence[str], speculator: Any, skipped: dict[str, str]) -> list[_BaseModel]:
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.models import EMBEDDED_MODELS

    bases = []
    for name in names:
        try:
            if name == speculator.name:
                backend = TransformersBackend(speculator.model, speculator.tokenizer, name=name)
            else:
                entry = EMBEDDED_MODELS.get(name)
                if entry is not None and importlib.util.find_spec(entry.module) is None and not entry.parts:
                    raise SpecPrefillError(f"not installed ({entry.pip_install})")
                if entry is not None and entry.parts and importlib.util.find_spec(entry.parts[0][0]) is None:
                    raise SpecPrefillError(f"not installed ({entry.pip_install})")
                backend = TransformersBackend.from_pretrained(name)
            bases.append(_BaseModel(name, backend, backend.same_tokenizer(speculator)))
        except (SpecPrefillError, ImportError, OSError) as exc:
            skipped[f"base:{name}"] = str(exc)
    return bases


def _build_methods(opts: QualityOptions, speculator: Any, skipped: dict[str, str]) -> list[Method]:
    resources: dict[str, Any] = {"speculator": speculator, "seed": opts.seed}
    out: list[Method] = []
    for name in opts.methods:
        try:
            if name == "rag" and "embed" not in resources:
                from specprefill.embeddings import PackagedEmbedder, packaged_minilm_dir

                packaged_minilm_dir()  # raises with the install command when missing
                resources["embed"] = PackagedEmbedder().embed
            if name == "longllmlingua" and "model_dir" not in resources:
                from specprefill.models import resolve_model_dir

                resources["model_dir"] = resolve_model_dir(opts.speculator)
            out.append(build_method(name, **resources))
        except (SpecPrefillError, ImportError, OSError) as exc:
            skipped[name] = str(exc)
    return out


def run_quality(opts: QualityOptions, *, progress: bool | None = None) -> dict[str, Any]:
    """Run the quality benchmark and return a JSON-ready result (``meta``, ``rows``, ``accuracy``)."""
    from tqdm.auto import tqdm

    from specprefill.models import load_speculator

    started = time.perf_counter()
    set_threads(opts.threads)
    wall: dict[str, float] = {}
    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    speculator = load_speculator(opts.speculator)
    count = speculator.count_tokens
    corpus = load_corpus(opts.sources, count_tokens=count)
    samples = generate_samples(opts.tasks, opts.lengths, opts.samples, corpus, seed=opts.seed, count_tokens=count)
    methods = _build_methods(opts, speculator, skipped)
    bases = _load_bases(opts.bases, speculator, skipped) if opts.accuracy_samples > 0 else []
    wall["load_seconds"] = time.perf_counter() - t0

    def in_subset(sample: Sample, k: int, lengths: Sequence[int], tasks: Sequence[str]) -> bool:
        return sample.seed - opts.seed < k and sample.target_tokens in lengths and sample.task in tasks

    rows: list[RetentionRow] = []
    accuracy: list[AccuracyRow] = []
    phase = {"selection": 0.0, "accuracy": 0.0}
    bar = tqdm(samples, desc="quality", unit="sample", disable=None if progress is None else not progress)
    for sample in bar:
        t_sel = time.perf_counter()
        prepared = prepare_sample(sample, speculator.encode_with_specials)
        selections: list[Selection] = []
        for method in methods:
            if method.name == "longllmlingua" and not in_subset(
                sample, opts.llmlingua_samples, opts.llmlingua_lengths, opts.llmlingua_tasks
            ):
                continue
            bar.set_postfix_str(f"{sample.task} {sample.target_tokens} {method.name}")
            rates = [1.0] if method.name == "full" else opts.keep_rates
            for sel in method.select(prepared, rates):
                selections.append(sel)
                rows.append(_retention_row(prepared, sel))
        phase["selection"] += time.perf_counter() - t_sel
        if bases and in_subset(sample, opts.accuracy_samples, opts.accuracy_lengths, opts.accuracy_tasks):
            t_acc = time.perf_counter()
            acc_rates = opts.accuracy_keep_rates or opts.keep_rates
            answered = [s for s in selections
                        if s.method == "full" or any(abs(s.keep_rate - r) < 1e-9 for r in acc_rates)]
            for base in bases:
                for sel in answered:
                    bar.set_postfix_str(f"{sample.task} {sample.target_tokens} {base.name} {sel.method}")
                    accuracy.append(_accuracy_row(prepared, sel, base))
            phase["accuracy"] += time.perf_counter() - t_acc
    bar.close()
    wall.update({f"{k}_seconds": v for k, v in phase.items()})
    wall["total_seconds"] = time.perf_counter() - started
    meta = {
        "bench": "quality",
        "preset": opts.preset,
        "preset_settings": preset_settings(opts.preset),
        "options": asdict(opts),
        "speculator": speculator.name,
        "bases": [b.name for b in bases],
        "methods": [m.name for m in methods],
        "skipped": skipped,
        "corpus": {"description": corpus.description, "paragraphs": len(corpus.paragraphs),
                   "tokens": corpus.total_tokens, "fingerprint": corpus.fingerprint},
        "samples": len(samples),
        "needle_tasks": list(NEEDLE_TASKS),
        "versions": versions(),
        "machine": machine_info(),
        "wall": wall,
        "finished": timestamp(),
    }
    return {"meta": meta, "rows": [asdict(r) for r in rows], "accuracy": [asdict(a) for a in accuracy]}


def _retention_row(prepared: PreparedSample, sel: Selection) -> RetentionRow:
    sample = prepared.sample
    retention, all_kept = span_retention(prepared.offsets, sel.kept, prepared.prompt.gold_spans)
    n = prepared.n_tokens
    return RetentionRow(
        sample_id=sample.sample_id,
        task=sample.task,
        length=sample.target_tokens,
        tokens=n,
        method=sel.method,
        keep_rate=sel.keep_rate,
        kept_tokens=len(sel.kept),
        keep_ratio=len(sel.kept) / n,
        context_keep_ratio=context_keep_ratio(sel.kept, prepared.protected),
        retention=retention,
        retained_all=all_kept,
        method_seconds=sel.seconds,
        note=sel.note,
    )


def _accuracy_row(prepared: PreparedSample, sel: Selection, base: _BaseModel) -> AccuracyRow:
    sample = prepared.sample
    output = base.answer(prepared, [int(i) for i in sel.kept], max_new_tokens_for(sample.task))
    return AccuracyRow(
        sample_id=sample.sample_id,
        task=sample.task,
        length=sample.target_tokens,
        tokens=prepared.n_tokens,
        base=base.name,
        method=sel.method,
        keep_rate=sel.keep_rate,
        score=answer_score(output.text, sample.answers),
        answer=output.text,
        base_prompt_tokens=output.prompt_tokens,
        method_seconds=sel.seconds,
        base_prefill_seconds=output.prefill_seconds,
        ttft_seconds=sel.seconds + output.prefill_seconds,
        positions=output.positions,
    )


# --- command line ---------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the quality benchmark's options to a parser."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="starting settings: 'full' (lengths 1k/2k/4k x 4 samples; about 25 min on an idle "
                        "2-core machine) or 'smoke' (CI, about a minute); other options override it")
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder (default results/)")
    parser.add_argument("--speculator", default=None, metavar="NAME", help="speculator (default smollm2-135m)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, metavar="TASK",
                        help="tasks (default: all): " + ", ".join(TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=None, metavar="N", help="prompt lengths in tokens")
    parser.add_argument("--samples", type=int, default=None, metavar="K", help="samples per task x length")
    parser.add_argument("--keep-rates", nargs="+", type=float, default=None, metavar="R")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=None, metavar="METHOD",
                        help="methods (default: all): " + ", ".join(ALL_METHODS))
    parser.add_argument("--bases", nargs="*", default=None, metavar="NAME",
                        help="base models for answer accuracy (default smollm2-135m gemma3-270m; none: skip)")
    parser.add_argument("--accuracy-samples", type=int, default=None, metavar="K",
                        help="samples per task x length answered by the base models")
    parser.add_argument("--accuracy-lengths", nargs="+", type=int, default=None, metavar="N")
    parser.add_argument("--accuracy-tasks", nargs="+", choices=TASKS, default=None, metavar="TASK")
    parser.add_argument("--accuracy-keep-rates", nargs="+", type=float, default=None, metavar="R",
                        help="keep rates answered by the base models (default: all --keep-rates)")
    parser.add_argument("--llmlingua-samples", type=int, default=None, metavar="K",
                        help="samples per task x length compressed by LongLLMLingua (it is slow on CPU)")
    parser.add_argument("--llmlingua-lengths", nargs="+", type=int, default=None, metavar="N")
    parser.add_argument("--llmlingua-tasks", nargs="+", choices=TASKS, default=None, metavar="TASK")
    parser.add_argument("--sources", nargs="+", choices=["documents", "stdlib"], default=None,
                        help="haystack text sources (default: both)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")


def options_from_args(args: argparse.Namespace) -> QualityOptions:
    """Preset values overridden by whatever was given on the command line."""
    values: dict[str, Any] = dict(PRESETS[args.preset])
    for key in ("out", "speculator", "tasks", "lengths", "samples", "keep_rates", "methods", "bases",
                "accuracy_samples", "accuracy_lengths", "accuracy_tasks", "accuracy_keep_rates", "llmlingua_samples",
                "llmlingua_lengths", "llmlingua_tasks", "sources", "seed", "threads"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    values["preset"] = args.preset
    values["plots"] = not args.no_plots
    return QualityOptions(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments: write JSON, report and plots; print the headline tables."""
    from benchmarks import report

    opts = options_from_args(args)
    result = run_quality(opts)
    result["meta"]["command"] = command_line("python -m benchmarks.quality", opts)
    out = Path(opts.out)
    files = report.save_and_report(out, "quality", result, plots=opts.plots)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.quality_summary(result))
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks.quality [--preset smoke] ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=_DESCRIPTION)
    configure_parser(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
