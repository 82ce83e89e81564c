"""The scoring service under load: deadline order, cancellation, admission by cost, yielding, shutdown.

Jobs here are plain functions that call the speculator checkpoints the way a model does, so the tests are
hermetic and fast. They assert orderings and counts; the only times are the deadlines the jobs are given.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from fakes import FakeSpeculator
from specprefill.server.queueing import CostEstimate, FloorEstimate, Job, JobQueue
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.checkpoints import ScoringCancelledError, checkpoint, watching


def service(**settings: Any) -> ScoringService:
    svc = ScoringService(ServerSettings(speculator="fake", **settings), loader=lambda: FakeSpeculator(name="fake"))
    assert svc.wait_loaded(10)
    return svc


def layers(count: int, seconds: float, log: list[str] | None = None, name: str = "") -> Any:
    """A job that works through ``count`` layers of ``seconds`` each, checking in after every one."""

    def job(speculator: Any) -> str:
        for i in range(count):
            time.sleep(seconds)
            if log is not None:
                log.append(f"{name}{i}")
            checkpoint("layer")
        return name or "done"

    return job


def windows(count: int, seconds: float, log: list[str], name: str) -> Any:
    """A job of ``count`` windows; between windows the service may run more urgent work."""

    def job(speculator: Any) -> str:
        for i in range(count):
            checkpoint("window")
            time.sleep(seconds)
            log.append(f"{name}{i}")
        return name

    return job


# --- pure parts ----------------------------------------------------------------------------------
def test_cost_estimate_learns_seconds_per_token() -> None:
    cost = CostEstimate(smoothing=0.5)
    assert cost.estimate(100) is None  # nothing learnt yet: no admission decision
    cost.observe(100, 2.0)
    assert cost.estimate(50) == pytest.approx(1.0)
    cost.observe(100, 4.0)  # 0.02 -> halfway to 0.04
    assert cost.seconds_per_token == pytest.approx(0.03) and cost.observations == 2
    cost.observe(0, 1.0)
    cost.observe(10, 0.0)
    assert cost.observations == 2
    with pytest.raises(ValueError, match="smoothing"):
        CostEstimate(smoothing=0.0)


def test_floor_estimate_is_the_lowest_recent_rate() -> None:
    floor = FloorEstimate(window=3)
    assert floor.seconds_per_token is None and floor.estimate(10) is None
    floor.observe(100, 0.1)  # 1 ms a token
    floor.observe(100, 2.0)  # queued behind others: 20 ms
    floor.observe(0, 1.0)  # ignored
    assert floor.seconds_per_token == pytest.approx(0.001) and floor.estimate(1000) == pytest.approx(1.0)
    floor.observe(100, 0.5)
    floor.observe(100, 0.3)  # the 1 ms observation has left the window of 3
    assert floor.seconds_per_token == pytest.approx(0.003) and floor.observations == 4
    with pytest.raises(ValueError):
        FloorEstimate(window=0)


def test_queue_hands_out_the_earliest_deadline_first_and_drops_the_abandoned() -> None:
    queue = JobQueue(capacity=3)
    now = time.monotonic()
    late, early, gone = (Job(lambda s: None, deadline=now + d) for d in (60.0, 10.0, 30.0))
    assert all(queue.put(job) for job in (late, early, gone))
    assert not queue.put(Job(lambda s: None, deadline=now + 1.0))  # full
    gone.give_up()
    assert queue.backlog(before=now + 100) == 0.0  # estimates unknown
    taken = queue.take(5)
    assert taken is not None and taken == ([early, late], [gone])
    assert queue.close() == [] and queue.take(1) is None and not queue.put(late)


def test_queue_urgent_respects_the_fit() -> None:
    queue = JobQueue(capacity=4)
    now = time.monotonic()
    short = Job(lambda s: None, deadline=now + 5, estimate=0.1)
    long = Job(lambda s: None, deadline=now + 6, estimate=50.0)
    queue.put(long)
    queue.put(short)
    assert queue.backlog(before=now + 5.5) == pytest.approx(0.1)
    job, dropped = queue.urgent(lambda j: j.estimate < 1.0)
    assert job is short and dropped == []
    assert queue.urgent(lambda j: j.estimate < 1.0) == (None, [])


def test_checkpoints_do_nothing_unwatched_and_stop_when_told() -> None:
    checkpoint("layer")  # no watcher: nothing happens
    seen: list[str] = []

    def watcher(boundary: str) -> None:
        seen.append(boundary)
        if boundary == "window":
            raise ScoringCancelledError("stop")

    with watching(watcher):
        checkpoint("layer")
        with pytest.raises(ScoringCancelledError):
            checkpoint("window")
    checkpoint("window")
    assert seen == ["layer", "window"]


# --- the service ---------------------------------------------------------------------------------
async def test_a_queued_job_whose_caller_gave_up_never_runs() -> None:
    svc = service(deadline_seconds=0.3)
    release = threading.Event()
    ran: list[str] = []
    first = asyncio.ensure_future(svc.run(lambda s: release.wait(10)))
    while not svc.busy:
        await asyncio.sleep(0.01)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda s: ran.append("late"))
    assert info.value.reason == "deadline"
    release.set()
    with pytest.raises(ScoringUnavailableError):  # the first one's caller gave up too (its deadline passed)
        await first
    await asyncio.to_thread(lambda: [time.sleep(0.01) for _ in range(100) if svc.busy])
    assert ran == [] and len(svc._queue) == 0


async def test_a_running_job_stops_at_its_next_layer_once_its_caller_gave_up() -> None:
    svc = service(deadline_seconds=0.3)
    log: list[str] = []
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(layers(10_000, 0.01, log))  # 100 s of work
    gave_up = time.monotonic()
    assert info.value.reason == "deadline"
    while svc.busy and time.monotonic() - gave_up < 30:
        await asyncio.sleep(0.01)
    idle_after = time.monotonic() - gave_up
    assert not svc.busy and idle_after < 2.0, idle_after  # the speculator is idle within 2 s
    assert 0 < len(log) < 1000  # it stopped long before the 10,000 layers


async def test_a_disconnected_caller_gives_its_job_up() -> None:
    svc = service(deadline_seconds=30.0)
    log: list[str] = []
    task = asyncio.ensure_future(svc.run(layers(10_000, 0.01, log)))
    while not log:
        await asyncio.sleep(0.01)
    task.cancel()  # what the server does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await task
    while svc.busy:
        await asyncio.sleep(0.01)
    assert len(log) < 1000


async def test_admission_by_cost_refuses_what_cannot_finish_in_time_at_once() -> None:
    svc = service(deadline_seconds=50.0)
    svc.cost = CostEstimate(smoothing=1e-6, seconds_per_token=0.001)  # learnt: 1 ms a token (and it stays)
    assert await svc.run(lambda s: "small", tokens=1000) == "small"
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda s: "huge", tokens=100_000)  # about 100 s of scoring against a 50 s deadline
    assert info.value.reason == "over_budget"
    while svc.busy:
        await asyncio.sleep(0.01)
    # work already ahead counts: with 45 s of work before it, a 10 s job cannot make a 50 s deadline
    release = threading.Event()
    busy = svc.submit(lambda s: release.wait(10), tokens=45_000)
    while not busy.future.running():
        await asyncio.sleep(0.01)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda s: "behind", tokens=10_000)
    assert info.value.reason == "over_budget"
    release.set()


async def test_a_queued_job_that_no_longer_fits_is_refused_when_its_turn_comes() -> None:
    svc = service(deadline_seconds=50.0, max_batch=1)
    svc.cost = CostEstimate(smoothing=1.0, seconds_per_token=0.001)  # 1 ms a token at admission
    release = threading.Event()
    ran: list[str] = []
    blocker = svc.submit(lambda s: release.wait(10))  # no tokens: teaches the estimate nothing
    while not blocker.future.running():
        await asyncio.sleep(0.01)
    now = time.monotonic()
    late = svc.submit(lambda s: ran.append("late"), tokens=10_000, deadline=now + 30)  # 10 s: fits now
    fine = svc.submit(lambda s: ran.append("fine"), tokens=10, deadline=now + 40)
    svc.cost.observe(1000, 20.0)  # a burst: 20 ms a token now, so 10,000 tokens take 200 s
    release.set()
    with pytest.raises(ScoringUnavailableError) as info:
        await asyncio.wait_for(asyncio.wrap_future(late.future), timeout=5)  # at once, not after 30 s
    assert info.value.reason == "over_budget"
    await asyncio.wait_for(asyncio.wrap_future(fine.future), timeout=5)  # 0.2 s: still fits, and runs
    assert ran == ["fine"]


async def test_a_batch_counts_the_jobs_taken_before_each() -> None:
    svc = service(deadline_seconds=50.0, max_batch=4)
    svc.cost = CostEstimate(smoothing=1.0, seconds_per_token=0.001)
    release = threading.Event()
    blocker = svc.submit(lambda s: release.wait(10))
    while not blocker.future.running():
        await asyncio.sleep(0.01)
    now = time.monotonic()
    first = svc.submit(lambda s: "first", tokens=5_000, deadline=now + 20)  # 5 s
    second = svc.submit(lambda s: "second", tokens=5_000, deadline=now + 24)  # 5 s after the first: 10 s
    svc.cost.observe(1000, 2.5)  # 2.5 ms a token: 12.5 s each; alone either fits, one after the other not
    release.set()
    assert await asyncio.wait_for(asyncio.wrap_future(first.future), timeout=5) == "first"
    with pytest.raises(ScoringUnavailableError) as info:
        await asyncio.wait_for(asyncio.wrap_future(second.future), timeout=5)
    assert info.value.reason == "over_budget"


async def test_the_cost_is_learnt_from_the_jobs_that_ran() -> None:
    svc = service()
    assert svc.cost.estimate(100) is None
    await svc.run(layers(5, 0.02), tokens=100)
    learnt = svc.cost.seconds_per_token
    assert learnt is not None and learnt >= 0.1 / 100 * 0.9


async def test_the_earliest_deadline_runs_first() -> None:
    svc = service(max_batch=1)
    release = threading.Event()
    order: list[str] = []
    now = time.monotonic()
    blocker = svc.submit(lambda s: release.wait(10), deadline=now + 60)
    while not blocker.future.running():
        await asyncio.sleep(0.01)
    late = svc.submit(lambda s: order.append("late"), deadline=now + 50)
    soon = svc.submit(lambda s: order.append("soon"), deadline=now + 20)
    release.set()
    await asyncio.wrap_future(late.future)
    await asyncio.wrap_future(soon.future)
    assert order == ["soon", "late"]


async def test_a_short_job_runs_between_the_windows_of_a_long_one() -> None:
    svc = service(deadline_seconds=60.0)
    svc.cost.observe(100, 0.01)  # short jobs are known to be cheap
    log: list[str] = []
    long = asyncio.ensure_future(svc.run(windows(5, 0.1, log, "long"), tokens=100))
    while not log:
        await asyncio.sleep(0.01)
    assert await svc.run(windows(1, 0.0, log, "short"), tokens=100) == "short"
    assert await long == "long"
    assert log.index("short0") < log.index("long4")  # it did not wait for the whole long job


async def test_close_answers_every_waiting_caller_at_once() -> None:
    svc = service(deadline_seconds=60.0)
    running = asyncio.ensure_future(svc.run(layers(10_000, 0.01)))
    while not svc.busy:
        await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(svc.run(lambda s: "never"))
    await asyncio.sleep(0.05)
    svc.close()
    for task in (running, waiting):
        with pytest.raises(ScoringUnavailableError) as info:
            await asyncio.wait_for(task, 5)
        assert info.value.reason == "shutdown"
    with pytest.raises(ScoringUnavailableError, match="shutting down"):
        await svc.run(lambda s: "after")
