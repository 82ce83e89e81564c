"""What an engine call returns: :class:`EngineResult`, :class:`EngineStats` and streamed :class:`EngineChunk`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from specprefill.backends.base import BaseOutput, PositionMode
from specprefill.engine.planning import Plan
from specprefill.result import PruneResult

__all__ = ["CallTiming", "EngineChunk", "EngineResult", "EngineStats", "build_result"]


@dataclass(frozen=True)
class EngineStats:
    """Numbers about one engine call (plain data; see :meth:`to_dict`)."""

    tokens_in: int
    """Prompt length in speculator tokens (base tokens when the speculator could not run)."""
    tokens_kept: int
    """Speculator tokens kept."""
    keep_ratio: float
    """``tokens_kept / tokens_in``."""
    base_prompt_tokens: int
    """Tokens the base model actually prefilled."""
    completion_tokens: int
    """Tokens the base generated."""
    speculator_seconds: float
    """Time spent scoring and selecting (tokenisation, speculator passes, selection)."""
    base_prefill_seconds: float
    """Base time to first token, from when the base began the request."""
    base_seconds: float
    """Base time for the whole generation."""
    ttft_seconds: float
    """Time to first token, from the moment the call entered the engine: queue waits, scoring and the base
    prefill all included."""
    queue_seconds: float
    """Time the call waited for a scoring worker or a base worker before work began (part of ``ttft_seconds``)."""
    total_seconds: float
    """Wall time of the whole call."""
    positions: PositionMode
    """How the base saw the prompt: ``original`` positions, ``compacted`` re-tokenised text, or ``full``."""
    pruned: bool
    """Whether any prompt token was dropped."""
    fallback: bool
    """True when the speculator failed and the full prompt went to the base."""
    fallback_reason: str | None
    """Why the fallback happened."""
    speculator: str
    """Speculator name."""
    base_model: str
    """Base model name."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for JSON output or response metadata."""
        return asdict(self)


@dataclass(frozen=True)
class EngineResult:
    """A finished generation with what was pruned and how long each part took."""

    text: str
    """Generated text."""
    finish_reason: str
    """``"stop"`` (EOS or a stop string) or ``"length"`` (``max_new_tokens`` reached)."""
    prune: PruneResult
    """What the speculator kept."""
    output: BaseOutput
    """The base backend's output."""
    stats: EngineStats
    """Counts and timings."""


@dataclass(frozen=True)
class EngineChunk:
    """A piece of streamed text; the last chunk carries the finished :class:`EngineResult`."""

    text: str
    """New text (may be empty on the last chunk)."""
    result: EngineResult | None = None
    """Set on the last chunk only."""


@dataclass
class CallTiming:
    """``time.perf_counter()`` marks of one call."""

    entered: float
    """When the call entered the engine."""
    scoring_started: float | None = None
    """When a scoring worker picked the call up."""
    base_called: float | None = None
    """When the plan was handed to the base backend."""

    def queue_seconds(self, output: BaseOutput) -> float:
        """Waits before scoring began and between the hand-over to the base and the base starting."""
        scoring = (self.scoring_started - self.entered) if self.scoring_started is not None else 0.0
        base = 0.0
        if output.started_at is not None and self.base_called is not None:
            base = max(0.0, output.started_at - self.base_called)
        return max(0.0, scoring) + base

    def first_token_at(self, output: BaseOutput) -> float:
        """When the base produced its first token."""
        began = output.started_at if output.started_at is not None else self.base_called
        return (began if began is not None else self.entered) + output.prefill_seconds


def build_result(plan: Plan, output: BaseOutput, timing: CallTiming) -> EngineResult:
    """Combine the plan, the base output and the call's timing into the :class:`EngineResult`."""
    pruned = plan.prune_result(output.prompt_tokens)
    ps = pruned.stats
    full = not ps.pruned
    if full and output.positions != "full":
        output = replace(output, positions="full")
    stats = EngineStats(
        tokens_in=ps.tokens_in,
        tokens_kept=ps.tokens_kept,
        keep_ratio=ps.keep_ratio,
        base_prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        speculator_seconds=ps.speculator_seconds,
        base_prefill_seconds=output.prefill_seconds,
        base_seconds=output.total_seconds,
        ttft_seconds=max(0.0, timing.first_token_at(output) - timing.entered),
        queue_seconds=timing.queue_seconds(output),
        total_seconds=time.perf_counter() - timing.entered,
        positions=output.positions,
        pruned=ps.pruned,
        fallback=ps.fallback,
        fallback_reason=ps.fallback_reason,
        speculator=ps.speculator or plan.speculator_name,
        base_model=output.model,
    )
    return EngineResult(output.text, output.finish_reason, pruned, output, stats)
