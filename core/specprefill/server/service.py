"""The scoring service: one speculator per vLLM server, used from the event loop without blocking it.

:func:`get_service` builds a process-wide :class:`ScoringService` from :meth:`ServerSettings.load()
<specprefill.server.settings.ServerSettings.load>` the first time it is called. The speculator is loaded on
the service's own worker thread, never at import time, so vLLM's engine-core and worker processes (which
import the plugin too) never load one. Coroutines hand work to the thread through a bounded queue with
:meth:`ScoringService.run` and wait at most ``deadline_seconds``; instead of blocking forever they get a
:class:`ScoringUnavailableError` whose ``reason`` says why (a stable code of :data:`ScoringReason`), and
the caller serves the request unpruned.

Under load (issue 20; design rules in the README's "Serve"): the queue hands out the earliest deadline
first (:mod:`specprefill.server.queueing`); a job whose caller gave up is dropped before it starts, and a
running one stops at its next layer, look-ahead step or window (:mod:`specprefill.speculator.checkpoints`);
a job that cannot finish before its deadline given the work ahead of it, by the cost learnt online
(:attr:`ScoringService.cost`), is refused at once (``over_budget``), and again when its turn comes if the
estimate learnt since (a burst slows the speculator down) says it no longer fits; and between the windows of a
long prompt the worker runs queued jobs that fit in that prompt's slack, so a short request does not wait for
the whole of a huge one. :meth:`ScoringService.close` answers every waiting caller at once (``shutdown``).

Micro-batching: on each wake-up the worker takes up to ``max_batch`` queued jobs at once (a job whose caller
already gave up is skipped); :attr:`ScoringService.batches` counts the group sizes. When the speculator
batches (:attr:`HFSpeculator.batch_forward <specprefill.speculator.hf.HFSpeculator.batch_forward>`, on CUDA by
default) the :class:`BatchableJob` ones (every chat/completion request) share padded forward passes;
otherwise they run back to back.

Jobs are plain picklable callables (module-level functions with :func:`functools.partial` arguments), so
the same job runs in this process or, through :class:`~specprefill.server.shared.ForwardingService`, in the
scoring host that several API-server processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from specprefill.config import SpecPrefillConfig
from specprefill.prompt.prepared import PreparedPrompt, ScoredPrompt
from specprefill.server.loader import load_configured_speculator
from specprefill.server.queueing import (
    CostEstimate,
    Job,
    JobQueue,
    ScoringReason,
    ScoringUnavailableError,
    drop_abandoned,
    fail,
    settle,
    split_late,
)
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator
from specprefill.speculator.checkpoints import Boundary, ScoringCancelledError, Watcher, watching

__all__ = [
    "BatchableJob",
    "ScoringReason",
    "ScoringService",
    "ScoringUnavailableError",
]

logger = logging.getLogger("specprefill.server")

T = TypeVar("T")


@runtime_checkable
class BatchableJob(Protocol):
    """A job whose model work can share a forward pass with the other jobs of its micro-batch.

    Alone it runs as ``job(speculator)``; in a batch the service calls :meth:`prepare` on each, scores
    the prepared prompts together and hands each its :class:`~specprefill.prompt.prepared.ScoredPrompt`.
    """

    def __call__(self, speculator: Speculator) -> Any:
        """Run alone."""

    def prepare(self, speculator: Speculator) -> tuple[PreparedPrompt, SpecPrefillConfig]:
        """The prompt to score and its config."""

    def finish(self, speculator: Speculator, scored: ScoredPrompt) -> Any:
        """The job's result from its scored prompt."""


class ScoringService:
    """Runs speculator work on one worker thread, behind a bounded deadline-ordered queue (see the module docstring).

    Args:
        settings: Limits and the speculator to load.
        loader: Builds the speculator on the worker thread (default: :func:`load_configured_speculator`).

    """

    def __init__(self, settings: ServerSettings, *, loader: Callable[[], Speculator] | None = None) -> None:
        self.settings = settings
        self._loader = loader or (lambda: load_configured_speculator(settings))
        self._queue = JobQueue(settings.queue_size)
        self._speculator: Speculator | None = None
        self._load_error: str | None = None
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._running: list[tuple[list[Job], float, float]] = []
        """The batches on the worker's stack (a job may run between the windows of another) and their starts."""
        self._nested_seconds = 0.0
        self.cost = CostEstimate()
        """Seconds of scoring per prompt token, learnt from the jobs that ran (admission and the cost guard)."""
        self.batches: Counter[int] = Counter()
        """How many worker wake-ups took 1, 2, ... jobs at once."""
        self.load_seconds: float | None = None
        """How long loading the speculator took (None until loaded)."""
        self.on_batch: Callable[[int], None] | None = None
        """Called on the worker thread with the size of every micro-batch (e.g. a metrics histogram)."""

    @property
    def speculator(self) -> Speculator | None:
        """The loaded speculator (None while loading or after a failed load)."""
        return self._speculator

    @property
    def load_error(self) -> str | None:
        """Why the speculator could not be loaded (None: loaded or still loading)."""
        return self._load_error

    @property
    def busy(self) -> bool:
        """Whether the worker is running a job now."""
        return bool(self._running)

    def start(self) -> None:
        """Start the worker thread, which loads the speculator first (idempotent)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="specprefill-scoring", daemon=True)
                self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until the speculator is loaded or failed to load; True when it is usable."""
        self.start()
        self._loaded.wait(timeout)
        return self._loaded.is_set() and self._load_error is None

    def submit(self, fn: Callable[[Speculator], T], *, tokens: int = 0, deadline: float | None = None) -> Job:
        """Queue ``fn(speculator)`` for the worker thread (thread-safe, never blocks); its future is ``job.future``.

        Args:
            fn: The work.
            tokens: Prompt tokens involved (its cost is estimated from them).
            deadline: ``time.monotonic()`` by which the result is needed (default: now plus ``deadline_seconds``).

        Raises:
            ScoringUnavailableError: The speculator failed to load (``load_failed``), the service is closed
                (``shutdown``), the job cannot finish in time given the work ahead (``over_budget``), or the
                queue is full (``queue_full``).

        """
        self.start()
        if self._closed:
            raise ScoringUnavailableError("shutdown", "the server is shutting down")
        if self._load_error is not None:
            raise ScoringUnavailableError("load_failed", f"the speculator could not be loaded: {self._load_error}")
        now = time.monotonic()
        due = now + self.settings.deadline_seconds if deadline is None else deadline
        estimate = self.cost.estimate(tokens)
        if estimate is not None:
            ahead = self._queue.backlog(before=due) + self._running_remaining()
            if now + ahead + estimate > due:
                raise ScoringUnavailableError(
                    "over_budget",
                    f"scoring {tokens} tokens takes about {estimate:.2f}s and {ahead:.2f}s of work is ahead of it: "
                    f"it cannot finish within {due - now:.2f}s",
                )
        job = Job(fn, deadline=due, tokens=tokens, estimate=estimate or 0.0)
        if not self._queue.put(job):
            raise ScoringUnavailableError(
                "queue_full", f"{self.settings.queue_size} requests already wait for the speculator"
            )
        return job

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        """Run ``fn(speculator)`` on the worker thread and return its result, without blocking the loop.

        The job is given up (dropped if queued, stopped at its next checkpoint if running) when the deadline
        passes or the calling task is cancelled (the client disconnected).

        Args:
            fn: The work; it runs on the scoring thread with the loaded speculator.
            tokens: Prompt tokens involved (for the cost estimate and the logs).

        Raises:
            ScoringUnavailableError: The job was refused (see :meth:`submit`), the deadline passed (queue time
                included), or ``fn`` raised (then ``reason="error"`` and the cause is chained).

        """
        job = self.submit(fn, tokens=tokens)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(job.future), timeout=max(job.deadline - time.monotonic(), 0.0)
            )
        except (TimeoutError, ScoringCancelledError):  # the worker may notice the deadline first
            job.give_up()
            raise ScoringUnavailableError(
                "deadline", f"scoring {tokens} tokens took longer than {self.settings.deadline_seconds:g}s"
            ) from None
        except asyncio.CancelledError:
            job.give_up()
            raise
        except ScoringUnavailableError:
            raise
        except Exception as exc:
            raise ScoringUnavailableError("error", f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Shut down: every waiting caller gets ``shutdown`` at once and running work stops at its next checkpoint."""
        self._closed = True
        error = ScoringUnavailableError("shutdown", "the server is shutting down")
        for job in self._queue.close() + [job for jobs, _, _ in self._running for job in jobs]:
            job.cancelled.set()
            fail(job, error)

    # --- worker thread ---------------------------------------------------------------------------
    def _open(self) -> None:
        """Make the worker ready to run jobs (here: load the speculator); raise when it cannot."""
        self._speculator = self._loader()

    def _ready_message(self) -> str:
        return f"speculator {self.settings.speculator!r} loaded"

    def _execute(self, fn: Callable[[Speculator], T]) -> T:
        """Run one job on the worker thread."""
        speculator = self._speculator
        if speculator is None:
            raise ScoringUnavailableError("load_failed", f"the speculator could not be loaded: {self._load_error}")
        return fn(speculator)

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            self._open()
        except Exception as exc:  # any failure: requests run unpruned with reason "load_failed"
            self._load_error = f"{type(exc).__name__}: {exc}"
            logger.error("specprefill: speculator %r failed to load: %s", self.settings.speculator, self._load_error)
        else:
            self.load_seconds = time.perf_counter() - start
            logger.info("specprefill: %s in %.1fs", self._ready_message(), self.load_seconds)
        finally:
            self._loaded.set()

    def _work(self) -> None:
        self._load()
        while True:
            taken = self._queue.take(self.settings.max_batch)
            if taken is None:  # closed
                return
            live, dropped = taken
            drop_abandoned(dropped)
            live = self._still_in_time(live)
            self._execute_batch([job for job in live if job.future.set_running_or_notify_cancel()])

    def _still_in_time(self, jobs: list[Job]) -> list[Job]:
        """The jobs that can still finish before their deadlines; the others are refused now (``over_budget``).

        Admission used the cost estimate of its moment. Under a burst the speculator slows down (the base
        shares the machine), the estimate learnt since rises, and a job admitted earlier may no longer fit:
        its caller gets its fallback at once instead of at the deadline, and the speculator goes on to jobs that
        can still be used. Each job counts the estimated time of the jobs taken before it in this batch.
        """
        return split_late(jobs, self.cost.estimate)

    def _execute_batch(self, jobs: list[Job]) -> None:
        """Run one micro-batch under a watcher (it stops work nobody waits for); no error stops the worker."""
        if not jobs:
            return
        self.batches[len(jobs)] += 1
        if self.on_batch is not None:
            with contextlib.suppress(Exception):  # metrics must never stop the worker
                self.on_batch(len(jobs))
        start, nested = time.perf_counter(), self._nested_seconds
        self._running.append((jobs, start, nested))
        try:
            with watching(self._watcher(jobs)):
                self._run_batch(jobs)
        except BaseException as exc:  # a bug in a batch path must not stop the worker: fail what is left
            if not isinstance(exc, ScoringCancelledError):
                logger.exception("specprefill: a scoring batch failed")
            for job in jobs:
                fail(job, exc)
        finally:
            self._running.pop()
        if self._running:  # this batch ran between the windows of another: its time is not the other's
            self._nested_seconds += self._own_seconds(start, nested)

    def _own_seconds(self, start: float, nested: float) -> float:
        """Seconds since ``start`` less the time jobs nested in between took (``nested``: the count then)."""
        return time.perf_counter() - start - (self._nested_seconds - nested)

    def _watcher(self, jobs: list[Job]) -> Watcher:
        """Stops the batch once nobody waits for it; at window boundaries, runs queued jobs that fit its slack."""

        def watch(boundary: Boundary) -> None:
            now = time.monotonic()
            if self._closed or all(job.abandoned(now) for job in jobs):
                raise ScoringCancelledError("nobody waits for this scoring any more")
            if boundary == "window":
                self._run_urgent(jobs)

        return watch

    def _run_urgent(self, current: list[Job]) -> None:
        """Run queued jobs, earliest deadline first, while ``current`` would still meet its deadline after each."""
        deadline = min(job.deadline for job in current)

        def fits(job: Job) -> bool:
            return time.monotonic() + self._running_remaining(top_only=True) + job.estimate <= deadline

        while True:
            job, dropped = self._queue.urgent(fits)
            drop_abandoned(dropped)
            if job is None:
                return
            if not self._still_in_time([job]):
                continue
            if not job.future.set_running_or_notify_cancel():
                return
            self._execute_batch([job])

    def _running_remaining(self, *, top_only: bool = False) -> float:
        """Expected seconds still to go of the running batch(es): estimate less their own time so far."""
        stack = self._running[-1:] if top_only else self._running
        return sum(
            max(sum(job.estimate for job in jobs) - self._own_seconds(start, nested), 0.0)
            for jobs, start, nested in stack
        )

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run one micro-batch (its jobs' futures are running; each gets a result or an exception).

        With a speculator that batches (``batch_forward``), the :class:`BatchableJob` ones share its
        forward passes; the others, and every job of a batch that failed as a whole, run one by one.
        """
        together = [job for job in jobs if isinstance(job.fn, BatchableJob)]
        batches = len(together) > 1 and bool(getattr(self._speculator, "batch_forward", False))
        done = together if batches and self._run_together(together) else []
        for job in jobs:
            if job not in done:
                self._run_job(job)

    def _run_together(self, jobs: list[Job]) -> bool:
        """Prepare every job, score them in one :meth:`Speculator.score_prompts`, finish each; False if it failed."""
        speculator = self._speculator
        assert speculator is not None  # a batch runs only after a successful load
        fns = [job.fn for job in jobs if isinstance(job.fn, BatchableJob)]
        start, nested = time.perf_counter(), self._nested_seconds
        try:
            staged = [fn.prepare(speculator) for fn in fns]
            scored = speculator.score_prompts(staged)
            results = [fn.finish(speculator, item) for fn, item in zip(fns, scored, strict=True)]
        except ScoringCancelledError:
            raise
        except Exception as exc:  # one job's fault: run them one by one, each with its own outcome
            logger.info("specprefill: a micro-batch of %d failed together (%s); scoring one by one", len(jobs), exc)
            return False
        self.cost.observe(sum(job.tokens for job in jobs), self._own_seconds(start, nested))  # before callers wake
        for job, result in zip(jobs, results, strict=True):
            settle(job, result)
        return True

    def _run_job(self, job: Job) -> None:
        if job.abandoned():
            fail(job, ScoringUnavailableError("deadline", "the caller gave up before the job started"))
            return
        start, nested = time.perf_counter(), self._nested_seconds
        try:
            result = self._execute(job.fn)
        except BaseException as exc:  # handed to the waiting coroutine, never kills the worker
            fail(job, exc)
            return
        self.cost.observe(job.tokens, self._own_seconds(start, nested))  # learnt before the caller wakes
        settle(job, result)
