"""The scoring service with the real packaged speculator: abandoned work stops, short work runs between windows.

Orderings and counts only; the one time bound is the issue's: the speculator is idle within 2 s of the
last caller giving up (it stops at its next layer, a few milliseconds here).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig
from specprefill.server.pruning import ScoreJob
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings

pytestmark = [needs_model, pytest.mark.integration]

FACTS = " ".join(f"Crate {i} holds {i * 7 % 23} lanterns and sits in hall {i % 4}." for i in range(400))


def scoring(speculator: Any, deadline: float) -> ScoringService:
    svc = ScoringService(ServerSettings(speculator="embedded", deadline_seconds=deadline), loader=lambda: speculator)
    assert svc.wait_loaded(60)
    return svc


def job(speculator: Any, text: str, **config: Any) -> tuple[ScoreJob, int]:
    ids = speculator.encode(text)[0]
    cfg = SpecPrefillConfig(min_prompt_tokens=0, **config)
    return ScoreJob(ids=ids, config=cfg), len(ids)


async def test_the_speculator_is_idle_within_2_s_of_the_last_caller_giving_up(speculator: Any) -> None:
    svc = scoring(speculator, deadline=1.0)
    long, n = job(speculator, FACTS * 2)  # about 10k tokens: seconds of scoring, in windows
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(long, tokens=n)
    gave_up = time.monotonic()
    assert info.value.reason == "deadline"
    while svc.busy and time.monotonic() - gave_up < 60:
        await asyncio.sleep(0.01)
    assert time.monotonic() - gave_up < 2.0


async def test_a_short_prompt_is_scored_between_the_windows_of_a_long_one(speculator: Any) -> None:
    svc = scoring(speculator, deadline=600.0)
    long, n = job(speculator, FACTS, max_speculator_tokens=1024)  # about 5k tokens in 1k-token windows
    short, m = job(speculator, "Crate 3 holds 21 lanterns. Which hall is crate 3 in?")
    finished: list[str] = []

    async def run(name: str, work: ScoreJob, tokens: int) -> None:
        await svc.run(work, tokens=tokens)
        finished.append(name)

    await run("warm-up", short, m)  # the service learns what a token costs
    first = asyncio.ensure_future(run("long", long, n))
    while not svc.busy:
        await asyncio.sleep(0.01)
    await run("short", short, m)
    await first
    assert finished == ["warm-up", "short", "long"]  # it did not wait for the whole long prompt
