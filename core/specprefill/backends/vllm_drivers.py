"""Drivers that run requests on an in-process vLLM engine for :class:`~specprefill.backends.vllm.VLLMBackend`.

:class:`SyncDriver` steps a ``vllm.LLM`` engine so several threads can stream at once; :class:`AsyncDriver`
owns an ``AsyncLLM`` on a private event-loop thread so callers on any thread or loop can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = ["AsyncDriver", "SyncDriver"]


class SyncDriver:
    """Runs requests on a ``vllm.LLM``'s engine step by step, so several threads can stream at once.

    One thread at a time calls ``step()``; outputs go to per-request queues, so concurrent callers share
    batches (continuous batching) instead of queueing behind each other.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.engine = llm.llm_engine
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[Any]] = {}

    def run(self, prompt: dict[str, Any], params: Any) -> Iterator[Any]:
        """Add one request and yield its outputs as the shared engine steps."""
        request_id = f"specprefill-{uuid.uuid4().hex}"
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            self._queues[request_id] = inbox
            try:
                self.engine.add_request(request_id, prompt, params)
            except BaseException:
                self._queues.pop(request_id, None)
                raise
        finished = False
        try:
            while True:
                try:
                    output = inbox.get_nowait()
                except queue.Empty:
                    with self._lock:
                        if inbox.empty():
                            for item in self.engine.step():
                                target = self._queues.get(getattr(item, "request_id", ""))
                                if target is not None:
                                    target.put(item)
                    continue
                finished = bool(getattr(output, "finished", False))
                yield output
                if finished:
                    return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
                if not finished:
                    with contextlib.suppress(Exception):
                        self.engine.abort_request([request_id])

    def status(self) -> list[dict[str, Any]]:
        """Every worker's specprefill status (``collective_rpc``)."""
        return list(self.llm.collective_rpc("specprefill_status"))

    def close(self) -> None:
        """Shut the engine core down."""
        core = getattr(self.engine, "engine_core", None)
        with contextlib.suppress(Exception):
            if core is not None:
                core.shutdown()


class AsyncDriver:
    """Owns an ``AsyncLLM`` on a private event-loop thread; callers on any thread or loop use it."""

    _END = object()

    def __init__(self, engine_args: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="specprefill-vllm-async", daemon=True)
        self.thread.start()
        try:
            self.engine = self.call(self._create(engine_args))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    @staticmethod
    async def _create(engine_args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(engine_args)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the private loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _pump(self, prompt: dict[str, Any], params: Any, put: Any) -> None:
        request_id = f"specprefill-{uuid.uuid4().hex}"
        try:
            async for output in self.engine.generate(prompt, params, request_id):
                put(output)
        except BaseException as exc:  # handed to the consumer
            put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            put(self._END)

    def _more(self, item: Any) -> bool:
        """False at the end of a request's outputs; raises the error the engine handed over."""
        if item is self._END:
            return False
        if isinstance(item, BaseException):
            raise item
        return True

    def run(self, prompt: dict[str, Any], params: Any) -> Iterator[Any]:
        """Yield one request's outputs to a caller on any thread."""
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = asyncio.run_coroutine_threadsafe(self._pump(prompt, params, inbox.put), self.loop)
        try:
            while self._more(item := inbox.get()):
                yield item
        finally:
            if not future.done():
                future.cancel()

    async def arun(self, prompt: dict[str, Any], params: Any) -> AsyncIterator[Any]:
        """Yield one request's outputs to a caller on another event loop."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop closed
                loop.call_soon_threadsafe(inbox.put_nowait, item)

        future = asyncio.run_coroutine_threadsafe(self._pump(prompt, params, put), self.loop)
        try:
            while self._more(item := await inbox.get()):
                yield item
        finally:
            if not future.done():
                future.cancel()

    def status(self) -> list[dict[str, Any]]:
        """Every worker's specprefill status (``collective_rpc``)."""
        return list(self.call(self.engine.collective_rpc("specprefill_status"), timeout=120))

    @staticmethod
    async def _cancel_pending() -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Shut the engine and its event-loop thread down."""
        with contextlib.suppress(Exception):
            self.engine.shutdown()
        self.engine = None  # collected now, not during interpreter teardown
        with contextlib.suppress(Exception):
            self.call(self._cancel_pending(), timeout=10)
        with contextlib.suppress(Exception):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()
