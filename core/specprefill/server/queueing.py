"""The scoring queue: jobs ordered by deadline, bounded, and an online estimate of what scoring costs.

Pure threading and arithmetic, no model. The :class:`~specprefill.server.service.ScoringService` puts a
:class:`Job` in the :class:`JobQueue` for every request, its worker takes the earliest deadline first, and a
job whose caller gave up (:meth:`Job.give_up`: its deadline passed, the client disconnected, the server is
shutting down) is dropped before it starts. :class:`CostEstimate` learns seconds per prompt token from the
jobs that ran (an exponentially weighted moving average), so a job that cannot finish before its deadline,
given the work queued ahead of it, is refused at once instead of after a wait.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from specprefill.errors import SpecPrefillError

__all__ = [
    "DEFAULT_SMOOTHING",
    "CostEstimate",
    "FloorEstimate",
    "Job",
    "JobQueue",
    "ScoringReason",
    "ScoringUnavailableError",
    "drop_abandoned",
    "fail",
    "settle",
    "split_late",
]

DEFAULT_SMOOTHING = 0.3
"""Weight of the newest observation in :class:`CostEstimate` (0.3: about the last five jobs count)."""

_SEQUENCE = itertools.count()


ScoringReason = Literal["queue_full", "deadline", "over_budget", "load_failed", "error", "shutdown"]
"""Why scoring is unavailable: the queue is full; the deadline passed; it could not finish in time given the
work ahead (refused at once); the speculator failed to load; it failed; the server is shutting down."""


class ScoringUnavailableError(SpecPrefillError, RuntimeError):
    """The speculator could not score in time (or at all); serve the request unpruned.

    Attributes:
        reason: A stable code (:data:`ScoringReason`); the message holds the details (for the log only).

    """

    def __init__(self, reason: ScoringReason, message: str) -> None:
        super().__init__(message)
        self.reason: ScoringReason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # crosses process boundaries (the scoring host of several API servers) with its reason intact
        return (type(self), (self.reason, str(self)))


@dataclass(eq=False)
class Job:
    """One unit of scoring work: ``fn(speculator)`` with its deadline, size and what it is expected to cost."""

    fn: Callable[[Any], Any]
    """The work; it runs on the scoring thread with the loaded speculator."""
    deadline: float
    """``time.monotonic()`` by which the caller needs the result."""
    tokens: int = 0
    """Prompt tokens involved (what its cost is estimated from)."""
    estimate: float = 0.0
    """Expected seconds of scoring (0: unknown)."""
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    """The result, or the exception the caller sees."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when nobody waits for the result any more."""
    seq: int = field(default_factory=lambda: next(_SEQUENCE))
    """Arrival order, the tie-break between equal deadlines."""

    def __lt__(self, other: Job) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def give_up(self) -> None:
        """The caller does not wait any more: drop the job if queued, stop it at its next checkpoint if running."""
        self.cancelled.set()
        self.future.cancel()  # only succeeds while it is queued

    def abandoned(self, now: float | None = None) -> bool:
        """Whether nobody waits for the result (given up, cancelled, or past its deadline)."""
        now = time.monotonic() if now is None else now
        return self.cancelled.is_set() or self.future.cancelled() or now >= self.deadline


class CostEstimate:
    """Seconds of scoring per prompt token, learnt online (an exponentially weighted moving average).

    Args:
        smoothing: Weight of the newest observation, in (0, 1].
        seconds_per_token: A starting value (None: unknown until the first observation).

    """

    def __init__(self, smoothing: float = DEFAULT_SMOOTHING, seconds_per_token: float | None = None) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self._rate = seconds_per_token
        self._lock = threading.Lock()
        self.observations = 0
        """How many jobs taught the estimate."""

    @property
    def seconds_per_token(self) -> float | None:
        """The current estimate (None before any observation)."""
        return self._rate

    def observe(self, tokens: int, seconds: float) -> None:
        """Learn from a job that scored ``tokens`` tokens in ``seconds`` (ignored when either is not positive)."""
        if tokens <= 0 or seconds <= 0.0:
            return
        with self._lock:
            rate = seconds / tokens
            self._rate = rate if self._rate is None else self._rate + self.smoothing * (rate - self._rate)
            self.observations += 1

    def estimate(self, tokens: int) -> float | None:
        """Expected seconds to score ``tokens`` tokens (None while nothing has been observed)."""
        rate = self._rate
        return None if rate is None else rate * max(tokens, 0)


class FloorEstimate:
    """Seconds per prompt token as the LOWEST rate among the last ``window`` observations.

    For the base model's prefill (the cost guard's other side): a request's dispatch-to-first-token time on a busy
    engine is mostly other requests' work, which pruning this one request does not remove, while scoring it takes
    time on the same machine. The floor of recent rates is what the request's own prefill costs.

    Args:
        window: How many recent observations the floor is taken over (at least 1).
        seconds_per_token: A starting value (None: unknown until the first observation); it ages out like one.

    """

    def __init__(self, window: int = 64, seconds_per_token: float | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._rates: deque[float] = deque(maxlen=window)
        if seconds_per_token is not None:
            self._rates.append(seconds_per_token)
        self._lock = threading.Lock()
        self.observations = 0
        """How many requests taught the estimate."""

    @property
    def seconds_per_token(self) -> float | None:
        """The lowest recent rate (None before any observation)."""
        with self._lock:
            return min(self._rates) if self._rates else None

    def observe(self, tokens: int, seconds: float) -> None:
        """Learn from a request of ``tokens`` tokens that took ``seconds`` (ignored when either is not positive)."""
        if tokens <= 0 or seconds <= 0.0:
            return
        with self._lock:
            self._rates.append(seconds / tokens)
            self.observations += 1

    def estimate(self, tokens: int) -> float | None:
        """Expected seconds for ``tokens`` tokens (None while nothing has been observed)."""
        rate = self.seconds_per_token
        return None if rate is None else rate * max(tokens, 0)


class JobQueue:
    """A bounded queue that hands out the earliest deadline first (thread-safe).

    Args:
        capacity: Most jobs waiting at once (running ones do not count).

    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._heap: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def put(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full or closed."""
        with self._cond:
            if self._closed or len(self._heap) >= self.capacity:
                return False
            heapq.heappush(self._heap, job)
            self._cond.notify()
            return True

    def take(self, most: int) -> tuple[list[Job], list[Job]] | None:
        """Wait for work; then up to ``most`` live jobs, earliest deadline first, and the abandoned ones dropped.

        Returns:
            ``(live, dropped)``, or None once the queue is closed.

        """
        with self._cond:
            while not self._heap and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            return self._pop(most)

    def urgent(self, fits: Callable[[Job], bool]) -> tuple[Job | None, list[Job]]:
        """The earliest live job, if ``fits(job)`` holds for it (never waits for one).

        Returns:
            ``(job or None, abandoned jobs dropped on the way)``.

        """
        with self._cond:
            dropped: list[Job] = []
            now = time.monotonic()
            while self._heap and self._heap[0].abandoned(now):
                dropped.append(heapq.heappop(self._heap))
            if self._heap and fits(self._heap[0]):
                return heapq.heappop(self._heap), dropped
            return None, dropped

    def backlog(self, before: float) -> float:
        """Expected seconds of the queued live jobs due no later than ``before`` (the work ahead of such a job)."""
        now = time.monotonic()
        with self._cond:
            return sum(job.estimate for job in self._heap if job.deadline <= before and not job.abandoned(now))

    def close(self) -> list[Job]:
        """Refuse new jobs, wake the worker, and return every job still queued."""
        with self._cond:
            self._closed = True
            jobs, self._heap = self._heap, []
            self._cond.notify_all()
            return jobs

    def _pop(self, most: int) -> tuple[list[Job], list[Job]]:
        live: list[Job] = []
        dropped: list[Job] = []
        now = time.monotonic()
        while self._heap and len(live) < most:
            job = heapq.heappop(self._heap)
            (dropped if job.abandoned(now) else live).append(job)
        return live, dropped


def settle(job: Job, result: Any) -> None:
    """Hand ``result`` to the job's caller (unless it already has an outcome)."""
    if not job.future.done():
        job.future.set_result(result)


def fail(job: Job, error: BaseException) -> None:
    """Hand ``error`` to the job's caller (unless it already has an outcome or gave up while queued)."""
    if job.future.done():
        return
    if not job.future.running() and not job.future.set_running_or_notify_cancel():
        return  # cancelled while queued: nobody waits
    job.future.set_exception(error)


def drop_abandoned(jobs: list[Job]) -> None:
    """Jobs whose callers gave up before they started: never run."""
    for job in jobs:
        fail(job, ScoringUnavailableError("deadline", "the caller gave up before the job started"))


def split_late(jobs: list[Job], estimate: Callable[[int], float | None]) -> list[Job]:
    """The jobs, run one after the other from now, that still finish before their deadlines by ``estimate``.

    Each job counts the estimated time of the jobs kept before it; a job that no longer fits gets its
    ``over_budget`` refusal now (:func:`fail`), so its caller does not wait for the deadline.
    """
    kept: list[Job] = []
    start = clock = time.monotonic()
    for job in jobs:
        seconds = estimate(job.tokens)
        if seconds is not None and clock + seconds > job.deadline:
            left = max(job.deadline - time.monotonic(), 0.0)
            fail(job, ScoringUnavailableError(
                "over_budget",
                f"scoring {job.tokens} tokens now takes about {seconds:.2f}s with {clock - start:.2f}s of work "
                f"ahead of it: it cannot finish within the {left:.2f}s left before its deadline",
            ))  # fmt: skip
            continue
        kept.append(job)
        clock += seconds or 0.0
    return kept
