"""Quality benchmark: answer-span retention and end-to-end answer accuracy, SpecPrefill vs the peers.

For every RULER-style sample (:mod:`benchmarks.tasks`), and every question of the fixed real-prose set
(:mod:`benchmarks.real_prose`, ``--tasks real_prose --split dev|heldout|all``), each method (:mod:`benchmarks.methods`)
keeps chunks of the same speculator tokenisation at the same keep rates; we record whether the gold answer
spans survive, the keep ratio achieved and the method's own cost. On a subset, real base models answer from
the kept prompt: the embedded SmolLM2-135M (same tokenizer: kept tokens at their original positions) and
the packaged Gemma-3-270M base (another tokenizer: the kept text is re-tokenised), giving accuracy, base
prefill seconds and TTFT (method seconds + base prefill seconds).

SpecPrefill runs as named variants (config overrides, :mod:`benchmarks.variants`), validated when the run
starts; each sample is scored once per distinct scoring setting and that importance serves every keep rate
and every variant that differs only in selection. The plan and a CPU-time estimate are printed first.

Run: ``python -m benchmarks.quality`` (``--help`` for options; settings in :mod:`benchmarks.quality_options`);
results, a markdown report and plots go to ``results/`` by default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.catalog import ALL_METHODS, build_method
from benchmarks.corpus import load_corpus
from benchmarks.methods import ImportanceCache, Method, PreparedSample, Selection, SpecPrefillMethod, prepare_sample
from benchmarks.metrics import answer_score, context_keep_ratio, spans_kept
from benchmarks.plan import NamedBase, RunPlan, RunSubsets, calibrate, describe, plan_run
from benchmarks.quality_options import PRESETS, QualityOptions, configure_parser, options_from_args, preset_settings
from benchmarks.real_prose import TASK as REAL_PROSE
from benchmarks.real_prose import load_real_prose, real_prose_samples
from benchmarks.runinfo import command_line, machine_info, set_threads, timestamp, versions
from benchmarks.tasks import NEEDLE_TASKS, RULER_TASKS, TASKS, Sample, generate_samples
from benchmarks.variants import scoring_key, variant_for
from specprefill.errors import ConfigurationError, SpecPrefillError

__all__ = [
    "PRESETS",
    "AccuracyRow",
    "QualityOptions",
    "RetentionRow",
    "build_samples",
    "configure_parser",
    "main",
    "max_new_tokens_for",
    "options_from_args",
    "preset_settings",
    "row_dict",
    "run_from_args",
    "run_quality",
]  # settings re-exported from benchmarks.quality_options

_DESCRIPTION = (
    "Answer-span retention and answer accuracy of SpecPrefill (and its variants) vs full prompt, random chunks, "
    "head+tail truncation, embedding retrieval and LongLLMLingua, at the same keep rates, on RULER-style tasks."
)


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
    """Whether every gold span is kept (for a two-fact question: both facts)."""
    method_seconds: float
    note: str = ""
    split: str = ""
    """``real_prose`` only: the sample's half (``dev``/``heldout``)."""
    spans_kept: tuple[bool, ...] = ()
    """``real_prose`` only: whether each gold span is kept, in the order of the answers."""
    answer_positions: tuple[str, ...] = ()
    """``real_prose`` only: where each gold span sits in the document (``start``/``middle``/``end``)."""


_FIXED_SET_FIELDS = ("split", "spans_kept", "answer_positions")
"""Row fields only a fixed set fills; left out of other rows, so generated tasks' rows keep their old shape."""


def row_dict(row: RetentionRow | AccuracyRow) -> dict[str, Any]:
    """A row as saved in the result JSON (the fixed-set fields only where they are filled)."""
    out = asdict(row)
    for key in _FIXED_SET_FIELDS:
        if key in out and not out[key]:
            del out[key]
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


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


def max_new_tokens_for(task: str) -> int:
    """Answer length cap per task (enough for every gold answer, short enough to keep the run cheap)."""
    caps = {
        "niah_multivalue": 36,
        "niah_multiquery": 20,
        "niah_multianswer": 28,
        "variable_tracking": 24,
        REAL_PROSE: 32,
    }
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
    from specprefill.speculator.embedded import EMBEDDED_MODELS

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


def _build_methods(
    opts: QualityOptions, speculator: Any, skipped: dict[str, str], cache: ImportanceCache
) -> list[Method]:
    """Build every method; SpecPrefill variants the installed library cannot build are skipped with its reason.

    Raises:
        ConfigurationError: A name that is neither a method nor a SpecPrefill variant.

    """
    unknown = [n for n in opts.methods if n not in ALL_METHODS and variant_for(n, opts.variants) is None]
    if unknown:
        raise ConfigurationError(
            f"unknown method(s) {unknown}; use {', '.join(ALL_METHODS)}, a variant of benchmarks.variants, "
            "or define one with --variants NAME=JSON"
        )
    resources: dict[str, Any] = {"speculator": speculator, "seed": opts.seed, "variants": opts.variants, "cache": cache}
    out: list[Method] = []
    for name in opts.methods:
        try:
            if name == "rag" and "embed" not in resources:
                from specprefill.embeddings import PackagedEmbedder, packaged_minilm_dir

                packaged_minilm_dir()  # raises with the install command when missing
                resources["embed"] = PackagedEmbedder().embed
            if name == "longllmlingua" and "model_dir" not in resources:
                from specprefill.speculator.loading import resolve_model_dir

                resources["model_dir"] = resolve_model_dir(opts.speculator)
            out.append(build_method(name, **resources))
        except (SpecPrefillError, ImportError, OSError) as exc:
            skipped[name] = str(exc)
    return out


def build_samples(opts: QualityOptions, corpus: Any, count: Callable[[str], int]) -> list[Sample]:
    """The run's samples: the generated tasks, then the real-prose questions of ``opts.split``.

    Generated tasks get ``opts.samples`` seeds per length; ``real_prose`` gives one sample per question of the
    split, whatever the lengths and seeds.
    """
    generated = [t for t in opts.tasks if t in TASKS]
    samples = generate_samples(generated, opts.lengths, opts.samples, corpus, seed=opts.seed, count_tokens=count)
    if REAL_PROSE in opts.tasks:
        samples += real_prose_samples(opts.split)
    return samples


def _real_prose_meta(opts: QualityOptions, samples: Sequence[Sample]) -> dict[str, Any]:
    """What the result records about the real-prose set (empty when it did not run)."""
    if REAL_PROSE not in opts.tasks:
        return {}
    data = load_real_prose()
    ran = [s for s in samples if s.task == REAL_PROSE]
    return {
        "fingerprint": data.fingerprint,
        "version": data.meta.get("version"),
        "split": opts.split,
        "questions": len(ran),
        "two_fact": sum(len(s.answers) == 2 for s in ran),
        "documents": {d.id: {"split": d.split, "kind": d.kind, "tokens": d.tokens} for d in data.documents.values()},
    }


def _variants_meta(methods: Sequence[Method]) -> dict[str, dict[str, Any]]:
    """Each SpecPrefill variant's definition and full config, with its scoring group (shared passes)."""
    groups: dict[str, int] = {}
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        if isinstance(m, SpecPrefillMethod):
            group = groups.setdefault(scoring_key(m.config), len(groups))
            out[m.name] = {
                "preset": m.variant.preset,
                "overrides": dict(m.variant.overrides),
                "label": m.variant.label,
                "describe": m.variant.describe(),
                "config": m.config.model_dump(),
                "scoring_group": group,
            }
    return out


def _plan(
    opts: QualityOptions,
    samples: Sequence[Sample],
    methods: Sequence[Method],
    subsets: RunSubsets,
    speculator: Any,
    corpus_text: str,
) -> RunPlan:
    lookaheads = {scoring_key(m.config): m.config.lookahead for m in methods if isinstance(m, SpecPrefillMethod)}
    return plan_run(
        samples,
        list(lookaheads.values()),
        subsets.selections,
        subsets.answers,
        lambda s: len(opts.keep_rates) if "longllmlingua" in subsets.names and subsets.llmlingua(s) else 0,
        calibration=calibrate(speculator, corpus_text),
        answer_tokens=lambda s: max_new_tokens_for(s.task),
    )


def run_quality(
    opts: QualityOptions,
    *,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
    estimate_only: bool = False,
) -> dict[str, Any]:
    """Run the quality benchmark and return a JSON-ready result (``meta``, ``rows``, ``accuracy``).

    Args:
        opts: The settings.
        progress: Show a progress bar (None: only on a terminal).
        announce: Where the plan, the CPU-time estimate and skipped methods are reported before the run
            (e.g. ``print`` to stderr); None: nowhere.
        estimate_only: Stop after the plan (``rows`` and ``accuracy`` stay empty).

    Returns:
        The result; ``meta["plan"]`` holds the plan and estimate, ``meta["scoring"]`` the speculator passes
        computed and reused.

    """
    from tqdm.auto import tqdm

    from specprefill.speculator.loading import load_speculator

    started = time.perf_counter()
    set_threads(opts.threads)
    wall: dict[str, float] = {}
    skipped: dict[str, str] = {}
    t0 = time.perf_counter()
    speculator = load_speculator(opts.speculator)
    count = speculator.count_tokens
    corpus = load_corpus(opts.sources, count_tokens=count)
    samples = build_samples(opts, corpus, count)
    cache = ImportanceCache()
    methods = _build_methods(opts, speculator, skipped, cache)
    bases = _load_bases(opts.bases, speculator, skipped) if opts.accuracy_samples > 0 and not estimate_only else []
    subsets = RunSubsets(opts, methods, bases if not estimate_only else [NamedBase(b) for b in opts.bases])
    plan = _plan(opts, samples, methods, subsets, speculator, " ".join(corpus.paragraphs[:40]))
    if announce is not None:
        announce(describe(plan))
        for name, why in skipped.items():
            announce(f"skipped {name}: {why}")
    wall["load_seconds"] = time.perf_counter() - t0

    rows: list[RetentionRow] = []
    accuracy: list[AccuracyRow] = []
    phase = {"selection": 0.0, "accuracy": 0.0}
    bar = tqdm(
        [] if estimate_only else samples,
        desc="quality",
        unit="sample",
        disable=None if progress is None else not progress,
    )
    for sample in bar:
        t_sel = time.perf_counter()
        cache.clear()
        prepared = prepare_sample(sample, speculator.encode_with_specials)
        selections: list[Selection] = []
        for method in methods:
            if not subsets.runs(method.name, sample):
                continue
            bar.set_postfix_str(f"{sample.task} {sample.target_tokens} {method.name}")
            for sel in method.select(prepared, subsets.rates(method.name)):
                selections.append(sel)
                rows.append(_retention_row(prepared, sel))
        phase["selection"] += time.perf_counter() - t_sel
        if subsets.accuracy(sample):
            t_acc = time.perf_counter()
            answered = [s for s in selections if subsets.answered(s.method, s.keep_rate)]
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
        "variants": _variants_meta(methods),
        "skipped": skipped,
        "corpus": {
            "description": corpus.description,
            "paragraphs": len(corpus.paragraphs),
            "tokens": corpus.total_tokens,
            "fingerprint": corpus.fingerprint,
        },
        "samples": len(samples),
        "needle_tasks": list(NEEDLE_TASKS),
        "ruler_tasks": list(RULER_TASKS),
        "fixed_tasks": [REAL_PROSE],
        "real_prose": _real_prose_meta(opts, samples),
        "plan": plan.to_dict(),
        "scoring": {"computed": cache.computed, "reused": cache.reused},
        "versions": versions(),
        "machine": machine_info(),
        "wall": wall,
        "finished": timestamp(),
    }
    return {"meta": meta, "rows": [row_dict(r) for r in rows], "accuracy": [row_dict(a) for a in accuracy]}


def _retention_row(prepared: PreparedSample, sel: Selection) -> RetentionRow:
    sample = prepared.sample
    flags = spans_kept(prepared.offsets, sel.kept, prepared.prompt.gold_spans)
    retention, all_kept = (sum(flags) / len(flags), all(flags)) if flags else (1.0, True)
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
        split=sample.split,
        spans_kept=tuple(flags) if sample.name else (),
        answer_positions=sample.answer_positions,
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
def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments: print the plan, then write JSON, report and plots; print the headline tables."""
    from benchmarks import report

    opts = options_from_args(args)
    estimate_only = bool(getattr(args, "estimate_only", False))
    result = run_quality(
        opts, announce=lambda line: print(line, file=sys.stderr, flush=True), estimate_only=estimate_only
    )
    if estimate_only:
        return 0
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
