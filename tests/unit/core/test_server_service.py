"""ScoringService: worker thread, bounded queue, deadline, typed reasons, micro-batches (fakes, no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from fakes import FakeSpeculator
from specprefill.errors import ConfigurationError
from specprefill.server.loader import load_configured_speculator
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator


def service(**settings: Any) -> ScoringService:
    return ScoringService(ServerSettings(speculator="fake", **settings), loader=lambda: FakeSpeculator(name="fake"))


def blocker() -> tuple[threading.Event, threading.Event, Any]:
    """A job that says when it started and waits to be released."""
    started, release = threading.Event(), threading.Event()

    def job(spec: Speculator) -> str:
        started.set()
        release.wait(5)
        return "released"

    return started, release, job


async def test_run_returns_the_result_from_the_worker_thread() -> None:
    svc = service()
    name = await svc.run(lambda spec: (spec.name, threading.current_thread().name))
    assert name == ("fake", "specprefill-scoring")
    assert svc.speculator is not None and svc.load_seconds is not None


async def test_full_queue_is_refused_at_once() -> None:
    svc = service(queue_size=1)
    started, release, job = blocker()
    running = asyncio.ensure_future(svc.run(job))
    await asyncio.to_thread(started.wait, 5)
    waiting = asyncio.ensure_future(svc.run(lambda spec: "queued"))
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda spec: "never")
    # refused at once: long before the deadline a queued request would wait for
    assert info.value.reason == "queue_full" and time.perf_counter() - t0 < svc.settings.deadline_seconds / 2
    release.set()
    assert await running == "released" and await waiting == "queued"


async def test_deadline_gives_up_and_the_worker_keeps_serving() -> None:
    svc = service(deadline_seconds=0.05)
    _, release, job = blocker()
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(job)
    assert info.value.reason == "deadline"
    release.set()
    assert await svc.run(lambda spec: 7) == 7


async def test_errors_are_typed_with_the_cause_chained() -> None:
    svc = service()

    def broken(spec: Speculator) -> None:
        raise ValueError("boom")

    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(broken)
    assert info.value.reason == "error" and isinstance(info.value.__cause__, ValueError)


async def test_failed_load_answers_load_failed() -> None:
    def loader() -> Speculator:
        raise OSError("no weights")

    svc = ScoringService(ServerSettings(speculator="x"), loader=loader)
    assert svc.wait_loaded(5) is False and "no weights" in str(svc.load_error)
    for _ in range(2):
        with pytest.raises(ScoringUnavailableError) as info:
            await svc.run(lambda spec: 1)
        assert info.value.reason == "load_failed"


async def test_queued_jobs_are_taken_in_micro_batches() -> None:
    svc = service(max_batch=4)
    started, release, job = blocker()
    first = asyncio.ensure_future(svc.run(job))
    await asyncio.to_thread(started.wait, 5)
    rest = [asyncio.ensure_future(svc.run(lambda spec, i=i: i)) for i in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    assert await first == "released" and await asyncio.gather(*rest) == [0, 1, 2]
    assert svc.batches == {1: 1, 3: 1}


def test_factory_settings_load_a_speculator() -> None:
    made = load_configured_speculator(ServerSettings(speculator="fakes:letter_speculator"))
    assert isinstance(made, FakeSpeculator)
    with pytest.raises(ConfigurationError, match="not a Speculator"):
        load_configured_speculator(ServerSettings(speculator="fakes:scripted_backend"))
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        load_configured_speculator(ServerSettings(speculator="fakes:no_such_factory"))
    with pytest.raises(ConfigurationError, match="SPECPREFILL_SERVER_SPECULATOR"):
        load_configured_speculator(ServerSettings())


async def test_a_failing_batch_path_does_not_stop_the_worker() -> None:
    class Flaky(ScoringService):
        broken = True

        def _run_batch(self, jobs: Any) -> None:
            if self.broken:
                self.broken = False
                raise RuntimeError("batch path bug")
            super()._run_batch(jobs)

    svc = Flaky(ServerSettings(speculator="fake"), loader=lambda: FakeSpeculator(name="fake"))
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda spec: "first")
    assert info.value.reason == "error" and "batch path bug" in str(info.value)
    assert await svc.run(lambda spec: "second") == "second"  # the worker still serves
