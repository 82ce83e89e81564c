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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_SMOOTHING", "CostEstimate", "Job", "JobQueue"]

DEFAULT_SMOOTHING = 0.3
"""Weight of the newest observation in :class:`CostEstimate` (0.3: about the last five jobs count)."""

_SEQUENCE = itertools.count()


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
