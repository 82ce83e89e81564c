"""The scoring service: one speculator per vLLM server, used from the event loop without blocking it.

:func:`get_service` builds a process-wide :class:`ScoringService` from :meth:`ServerSettings.load()
<specprefill.server.settings.ServerSettings.load>` the first time it is called. The speculator is loaded on
the service's own worker thread, never at import time, so vLLM's engine-core and worker processes (which
import the plugin too) never load one. Coroutines hand work to the thread through a bounded queue with
:meth:`ScoringService.run` and wait at most ``deadline_seconds``; instead of blocking forever they get a
:class:`ScoringUnavailableError` whose ``reason`` says why (``queue_full``, ``deadline``, ``load_failed``,
``error``), and the caller serves the request unpruned.

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
import concurrent.futures
import contextlib
import importlib
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, SpecPrefillError
from specprefill.prompt.prepared import PreparedPrompt, ScoredPrompt
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator

__all__ = [
    "BatchableJob",
    "ScoringReason",
    "ScoringService",
    "ScoringUnavailableError",
    "load_configured_speculator",
]

logger = logging.getLogger("specprefill.server")

T = TypeVar("T")

ScoringReason = Literal["queue_full", "deadline", "load_failed", "error"]

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ScoringUnavailableError(SpecPrefillError, RuntimeError):
    """The speculator could not score in time (or at all); serve the request unpruned.

    Attributes:
        reason: ``"queue_full"``, ``"deadline"``, ``"load_failed"`` or ``"error"``.

    """

    def __init__(self, reason: ScoringReason, message: str) -> None:
        super().__init__(message)
        self.reason: ScoringReason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # crosses process boundaries (the scoring host of several API servers) with its reason intact
        return (type(self), (self.reason, str(self)))


def load_configured_speculator(settings: ServerSettings) -> Speculator:
    """Load the speculator that ``settings.speculator`` names (a ``module:callable`` factory or a model).

    ``settings.batch_forward``, when set, goes to the speculator's ``batch_forward`` (if it has one).

    Raises:
        ConfigurationError: No speculator configured, or the factory cannot be imported or returns no Speculator.
        ModelLoadError: The model cannot be loaded.

    """
    speculator = _load(settings)
    if settings.batch_forward is not None and hasattr(speculator, "batch_forward"):
        speculator.batch_forward = settings.batch_forward
    return speculator


def _load(settings: ServerSettings) -> Speculator:
    name = settings.speculator
    if not name:
        raise ConfigurationError("no speculator configured; set SPECPREFILL_SERVER_SPECULATOR")
    if _FACTORY.match(name):
        module_name, attr = name.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"speculator factory {name!r} cannot be imported: {exc}") from exc
        made = factory()
        if not isinstance(made, Speculator):
            raise ConfigurationError(f"speculator factory {name!r} returned {type(made).__name__}, not a Speculator")
        return made
    from specprefill.speculator.loading import load_speculator

    return load_speculator(name, device=settings.device, dtype=settings.dtype)


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


@dataclass
class _Job:
    fn: Callable[[Speculator], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class ScoringService:
    """Runs speculator work on one worker thread, behind a bounded queue and a per-request deadline.

    Args:
        settings: Limits and the speculator to load.
        loader: Builds the speculator on the worker thread (default: :func:`load_configured_speculator`).

    """

    def __init__(self, settings: ServerSettings, *, loader: Callable[[], Speculator] | None = None) -> None:
        self.settings = settings
        self._loader = loader or (lambda: load_configured_speculator(settings))
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=settings.queue_size)
        self._speculator: Speculator | None = None
        self._load_error: str | None = None
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
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

    def submit(self, fn: Callable[[Speculator], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(speculator)`` for the worker thread and return its future (thread-safe, never blocks).

        Raises:
            ScoringUnavailableError: The speculator failed to load (``load_failed``) or the queue is full
                (``queue_full``).

        """
        self.start()
        if self._load_error is not None:
            raise ScoringUnavailableError("load_failed", f"the speculator could not be loaded: {self._load_error}")
        job = _Job(fn)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ScoringUnavailableError(
                "queue_full", f"{self.settings.queue_size} requests already wait for the speculator"
            ) from None
        return job.future

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        """Run ``fn(speculator)`` on the worker thread and return its result, without blocking the loop.

        Args:
            fn: The work; it runs on the scoring thread with the loaded speculator.
            tokens: Prompt tokens involved (for logs).

        Raises:
            ScoringUnavailableError: The queue is full, the deadline passed (queue time included), the
                speculator failed to load, or ``fn`` raised (then ``reason="error"`` and the cause is chained).

        """
        future = self.submit(fn)
        deadline = self.settings.deadline_seconds
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=deadline)
        except TimeoutError:
            logger.warning("specprefill: scoring %d tokens missed the %.3gs deadline", tokens, deadline)
            raise ScoringUnavailableError("deadline", f"scoring took longer than {deadline:g}s") from None
        except ScoringUnavailableError:
            raise
        except Exception as exc:
            raise ScoringUnavailableError("error", f"{type(exc).__name__}: {exc}") from exc

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

    def _take_batch(self) -> list[_Job]:
        batch = [self._queue.get()]
        while len(batch) < self.settings.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        self._load()
        while True:
            batch = self._take_batch()
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self.batches[len(live)] += 1
                if self.on_batch is not None:
                    with contextlib.suppress(Exception):  # metrics must never stop the worker
                        self.on_batch(len(live))
            try:
                self._run_batch(live)
            except BaseException as exc:  # a bug in a batch path must not stop the worker: fail what is left
                logger.exception("specprefill: a scoring batch failed")
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
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

    def _run_together(self, jobs: list[_Job]) -> bool:
        """Prepare every job, score them in one :meth:`Speculator.score_prompts`, finish each; False if it failed."""
        speculator = self._speculator
        assert speculator is not None  # a batch runs only after a successful load
        fns = [job.fn for job in jobs if isinstance(job.fn, BatchableJob)]
        try:
            staged = [fn.prepare(speculator) for fn in fns]
            scored = speculator.score_prompts(staged)
            results = [fn.finish(speculator, item) for fn, item in zip(fns, scored, strict=True)]
        except Exception as exc:  # one job's fault: run them one by one, each with its own outcome
            logger.info("specprefill: a micro-batch of %d failed together (%s); scoring one by one", len(jobs), exc)
            return False
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
        return True

    def _run_job(self, job: _Job) -> None:
        try:
            job.future.set_result(self._execute(job.fn))
        except BaseException as exc:  # handed to the waiting coroutine, never kills the worker
            job.future.set_exception(exc)
