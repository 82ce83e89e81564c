"""What a quality run will do, and roughly how much CPU time it needs, printed before it starts.

The estimate scales one measured plain prefill of the speculator (512 tokens, timed after loading) with
the FLOP model of :mod:`benchmarks.metrics`: each speculator pass costs ``speculator_flops(n, lookahead)``,
each base answer a prefill of the kept tokens plus its decode steps, LongLLMLingua about two plain prefills
of the prompt per call. It ignores everything else (tokenising, the embedding model, Python overhead), so
read it as +-50%.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.metrics import ModelShape, decode_flops, prefill_flops, speculator_flops
from benchmarks.quality_options import QualityOptions
from benchmarks.tasks import Sample

__all__ = ["CALIBRATION_TOKENS", "NamedBase", "RunPlan", "RunSubsets", "calibrate", "describe", "plan_run"]

CALIBRATION_TOKENS = 512
"""Length of the timed plain prefill that calibrates the estimate."""

_LLMLINGUA_PREFILLS = 2.0
_BASE_COST_FACTOR = {"gemma3-270m": 2.0}  # relative to the speculator's own size


@dataclass(frozen=True)
class RunPlan:
    """Counts of the work a run will do and its estimated CPU seconds (None when not calibrated)."""

    samples: int
    scoring_configs: int
    """Distinct scoring settings among the SpecPrefill variants (one speculator pass each per sample)."""
    speculator_passes: int
    selections: int
    """Retention rows: one per sample, method and keep rate."""
    answers: int
    """Base-model answers (accuracy rows)."""
    llmlingua_calls: int
    estimated_seconds: float | None
    seconds_per_calibration: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (saved as ``meta["plan"]``)."""
        return asdict(self)


class RunSubsets:
    """Which samples get base answers and LongLLMLingua, which keep rates run, which selections are answered.

    Args:
        opts: The run's settings.
        methods: The methods that run (anything with a ``name``).
        bases: The base models that answer (anything with a ``name``).

    """

    def __init__(self, opts: QualityOptions, methods: Sequence[Any], bases: Sequence[Any]) -> None:
        self.opts = opts
        self.names = [m.name for m in methods]
        self.bases = [b.name for b in bases]

    def _take(self, sample: Sample, k: int, lengths: Sequence[int], tasks: Sequence[str]) -> bool:
        if sample.name:  # a fixed set's sample (real_prose): the first k of the selection, any length
            return sample.seed < k and sample.task in tasks
        return sample.seed - self.opts.seed < k and sample.target_tokens in lengths and sample.task in tasks

    def llmlingua(self, sample: Sample) -> bool:
        """Whether LongLLMLingua compresses this sample."""
        o = self.opts
        return self._take(sample, o.llmlingua_samples, o.llmlingua_lengths, o.llmlingua_tasks)

    def accuracy(self, sample: Sample) -> bool:
        """Whether the base models answer this sample."""
        o = self.opts
        return bool(self.bases) and self._take(sample, o.accuracy_samples, o.accuracy_lengths, o.accuracy_tasks)

    def answered(self, method: str, keep_rate: float) -> bool:
        """Whether the bases answer this method's selection at this keep rate."""
        o = self.opts
        if o.accuracy_methods is not None and method not in o.accuracy_methods:
            return False
        return method == "full" or any(abs(keep_rate - r) < 1e-9 for r in (o.accuracy_keep_rates or o.keep_rates))

    def rates(self, method: str) -> list[float]:
        """Keep rates a method runs at (the full prompt once, at 1.0)."""
        return [1.0] if method == "full" else list(self.opts.keep_rates)

    def runs(self, method: str, sample: Sample) -> bool:
        """Whether a method runs on this sample."""
        return method != "longllmlingua" or self.llmlingua(sample)

    def selections(self, sample: Sample) -> int:
        """Retention rows of one sample."""
        return sum(len(self.rates(m)) for m in self.names if self.runs(m, sample))

    def answers(self, sample: Sample) -> list[tuple[str, float]]:
        """``(base, keep rate)`` of every answer for one sample."""
        if not self.accuracy(sample):
            return []
        return [
            (b, r)
            for b in self.bases
            for m in self.names
            if self.runs(m, sample)
            for r in self.rates(m)
            if self.answered(m, r)
        ]


@dataclass(frozen=True)
class NamedBase:
    """A base model known only by name (planning without loading it)."""

    name: str


def calibrate(speculator: Any, text: str) -> tuple[float, ModelShape] | None:
    """Time one plain prefill of :data:`CALIBRATION_TOKENS` tokens (after a warm-up); None if not possible."""
    prefill = getattr(speculator, "plain_prefill", None)
    config = getattr(getattr(speculator, "model", None), "config", None)
    if not callable(prefill) or config is None:
        return None
    ids = list(speculator.encode(text)[0])[:CALIBRATION_TOKENS]
    if len(ids) < CALIBRATION_TOKENS:
        return None
    prefill(ids[:64])
    start = time.perf_counter()
    prefill(ids)
    return time.perf_counter() - start, ModelShape.from_config(config)


def plan_run(
    samples: Sequence[Sample],
    lookaheads: Sequence[int],
    selections_per_sample: Callable[[Sample], int],
    answers_per_sample: Callable[[Sample], Sequence[tuple[str, float]]],
    llmlingua_calls_per_sample: Callable[[Sample], int],
    *,
    calibration: tuple[float, ModelShape] | None,
    answer_tokens: Callable[[Sample], int],
) -> RunPlan:
    """Count the work of a run and estimate its CPU seconds.

    Args:
        samples: Every sample of the run.
        lookaheads: The look-ahead of each distinct scoring setting (one speculator pass per sample each).
        selections_per_sample: Retention rows of a sample.
        answers_per_sample: ``(base name, keep ratio)`` of every answer the bases give for a sample.
        llmlingua_calls_per_sample: LongLLMLingua compressions of a sample.
        calibration: ``(seconds, speculator shape)`` from :func:`calibrate`, or None (no time estimate).
        answer_tokens: New tokens each answer of a sample may generate.

    Returns:
        The plan.

    """
    answers = [(s, a) for s in samples for a in answers_per_sample(s)]
    llmlingua = sum(llmlingua_calls_per_sample(s) for s in samples)
    seconds: float | None = None
    per_calibration = None
    if calibration is not None:
        per_calibration, shape = calibration
        unit = per_calibration / prefill_flops(shape, CALIBRATION_TOKENS)
        flops = sum(speculator_flops(shape, s.target_tokens, lah) for s in samples for lah in lookaheads)
        flops += sum(
            _LLMLINGUA_PREFILLS * prefill_flops(shape, s.target_tokens) * llmlingua_calls_per_sample(s) for s in samples
        )
        for sample, (base, ratio) in answers:
            kept = max(1, round(ratio * sample.target_tokens))
            steps = answer_tokens(sample) * decode_flops(shape, sample.target_tokens)
            flops += _BASE_COST_FACTOR.get(base, 1.0) * (prefill_flops(shape, kept) + steps)
        seconds = flops * unit
    return RunPlan(
        samples=len(samples),
        scoring_configs=len(lookaheads),
        speculator_passes=len(samples) * len(lookaheads),
        selections=sum(selections_per_sample(s) for s in samples),
        answers=len(answers),
        llmlingua_calls=llmlingua,
        estimated_seconds=seconds,
        seconds_per_calibration=per_calibration,
    )


def describe(plan: RunPlan) -> str:
    """The plan as two lines for the terminal."""
    work = (
        f"plan: {plan.samples} samples; {plan.scoring_configs} scoring setting(s) -> {plan.speculator_passes} "
        f"speculator passes; {plan.selections} selections; {plan.answers} base answers; "
        f"{plan.llmlingua_calls} LongLLMLingua calls"
    )
    if plan.estimated_seconds is None:
        return work + "\nestimated CPU time: unknown (the speculator cannot be timed)"
    seconds = plan.estimated_seconds
    amount = (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else (f"{seconds / 3600:.1f} h")
    )
    return (
        f"{work}\nestimated CPU time: about {amount} (+-50%; calibrated by a {CALIBRATION_TOKENS}-token plain "
        f"prefill of {plan.seconds_per_calibration:.2f} s on this machine)"
    )
