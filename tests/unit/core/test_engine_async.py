"""Honest async: scoring on the engine's own bounded pool, base calls never wait on other calls' pruning,
and ``ttft_seconds`` counts from the moment a call entered the engine (queue wait included)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from fakes import FakeSpeculator
from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, StreamChunk
from specprefill.engine import SpecPrefillEngine
from specprefill.errors import ConfigurationError
from specprefill.speculator.base import ImportanceResult

SCORE_SECONDS = 0.08
PREFILL_SECONDS = 0.05
CALLS = 12


class SlowSpeculator(FakeSpeculator):
    """Scoring takes :data:`SCORE_SECONDS`; records when each prompt's scoring ended."""

    def __init__(self) -> None:
        super().__init__()
        self.scored_at: dict[str, float] = {}
        self.threads: set[str] = set()

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        time.sleep(SCORE_SECONDS)
        self.threads.add(threading.current_thread().name)
        self.scored_at["".join(chr(t) for t in input_ids)] = time.perf_counter()
        return ImportanceResult(np.linspace(0.0, 1.0, len(input_ids), dtype=np.float32), [], 1, 1)


class TimedBackend(BaseBackend):
    """A sync-only base (the default async path): records when each request started and took its prefill."""

    kind = "timed"

    def __init__(self) -> None:
        self.model_name = "timed-base"
        self.started: list[tuple[str, float]] = []

    def _compare_tokenizer(self, speculator: object) -> bool:
        return False

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        start = time.perf_counter()
        self.started.append((request.text or "", start))
        time.sleep(PREFILL_SECONDS)
        first = time.perf_counter()
        output = BaseOutput(
            text="ok", finish_reason="stop", prompt_tokens=1, completion_tokens=1,
            prefill_seconds=first - start, total_seconds=first - start, positions="compacted",
            model=self.model_name, started_at=start,
        )  # fmt: skip
        yield StreamChunk("ok", output=output)


def _prompt(i: int) -> str:
    return f"request {i:02d}: " + "lorem ipsum dolor sit amet " * 3 + f"(request {i:02d})"


def _number(text: str) -> int:
    """The request number in a prompt or in its kept text (pruning keeps the end, where it is repeated)."""
    found = re.findall(r"request (\d\d)", text)
    assert found, text
    return int(found[-1])


class GatedSpeculator(SlowSpeculator):
    """Scoring of request k (k >= 1) waits until the base has started request k - 1.

    If the engine held base calls back until other calls' pruning finished, that wait could never end: it
    times out after :data:`GATE_SECONDS` and is recorded as a violation. The test asserts orderings only, so
    a busy machine slows it down but cannot fail it.
    """

    def __init__(self, base_started: list[threading.Event]) -> None:
        super().__init__()
        self.base_started = base_started
        self.violations: list[int] = []

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        k = _number("".join(chr(t) for t in input_ids))
        if k > 0 and not self.base_started[k - 1].wait(GATE_SECONDS):
            self.violations.append(k)
        return super().score(input_ids, config)


class SignallingBackend(TimedBackend):
    """Sets ``base_started[k]`` when request k's base call begins."""

    def __init__(self, base_started: list[threading.Event]) -> None:
        super().__init__()
        self.base_started = base_started

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        self.base_started[_number(request.text or "")].set()
        yield from super().stream(request, params)


GATE_SECONDS = 30.0


async def test_twelve_concurrent_calls_do_not_queue_base_calls_behind_pruning() -> None:
    base_started = [threading.Event() for _ in range(CALLS)]
    speculator = GatedSpeculator(base_started)
    base = SignallingBackend(base_started)
    engine = SpecPrefillEngine(speculator, base, SpecPrefillConfig(keep_rate=0.5, chunk_size=4, min_prompt_tokens=0))
    entered = time.perf_counter()
    results = await asyncio.gather(*(engine.agenerate(_prompt(i), max_new_tokens=2) for i in range(CALLS)))
    assert speculator.threads == {"specprefill-score_0"}, "scoring must run on the engine's own pool only"
    # every base call started while later calls were still being pruned, never after all of them
    assert speculator.violations == [] and len(base.started) == CALLS
    by_scoring = sorted(results, key=lambda r: speculator.scored_at[r.prune.source_text or ""])
    queues = [r.stats.queue_seconds for r in by_scoring]
    # one scoring worker: the k-th call waited for k earlier prune jobs, and its ttft and queue say so
    assert max(r.stats.ttft_seconds for r in results) >= CALLS * SCORE_SECONDS + PREFILL_SECONDS * 0.9
    assert queues[-1] >= (CALLS - 1) * SCORE_SECONDS * 0.9 and queues[0] < queues[-1]
    for r in results:
        s = r.stats
        assert s.ttft_seconds >= s.queue_seconds + s.speculator_seconds + s.base_prefill_seconds * 0.9
        assert s.ttft_seconds <= time.perf_counter() - entered
    engine.close()


async def test_scoring_pool_is_bounded_and_configurable() -> None:
    speculator = SlowSpeculator()
    engine = SpecPrefillEngine(speculator, TimedBackend(), SpecPrefillConfig(min_prompt_tokens=0), scoring_workers=3)
    await asyncio.gather(*(engine.agenerate(_prompt(i), max_new_tokens=1) for i in range(9)))
    assert 1 < len(speculator.threads) <= 3
    engine.close()
    with pytest.raises(ConfigurationError, match="scoring_workers"):
        SpecPrefillEngine(speculator, TimedBackend(), scoring_workers=0)


def test_sync_call_reports_ttft_from_entry() -> None:
    engine = SpecPrefillEngine(SlowSpeculator(), TimedBackend(), SpecPrefillConfig(min_prompt_tokens=0))
    before = time.perf_counter()
    result = engine.generate(_prompt(0), max_new_tokens=1)
    s = result.stats
    assert SCORE_SECONDS + PREFILL_SECONDS * 0.9 <= s.ttft_seconds <= time.perf_counter() - before
    assert s.queue_seconds <= s.ttft_seconds - s.speculator_seconds  # nothing queued ahead of a lone call
