"""The contract between the engine and a base model backend."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

from specprefill.errors import ConfigurationError
from specprefill.result import Message

__all__ = [
    "BaseBackend",
    "BaseOutput",
    "BaseRequest",
    "GenerationParams",
    "PositionMode",
    "StreamChunk",
]

PositionMode = Literal["original", "compacted", "full"]
"""How the base saw the prompt: kept tokens at their original positions, kept text re-tokenised with
fresh contiguous positions, or the whole unpruned prompt."""


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for the base model."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigurationError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigurationError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigurationError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class BaseRequest:
    """What the base model receives after pruning.

    Either the token form (``token_ids`` with ``position_ids`` and ``original_length``: same tokenizer,
    exact positions) or the text form (``text`` for a plain prompt, ``messages`` for chat: another
    tokenizer, positions compacted). The engine fills both when it can; a backend uses the form it supports.
    """

    token_ids: list[int] | None = None
    position_ids: list[int] | None = None
    original_length: int | None = None
    text: str | None = None
    messages: list[Message] | None = None


@dataclass(frozen=True)
class BaseOutput:
    """A finished base generation."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    """Tokens the base actually prefilled."""
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    """Base time to first token."""
    total_seconds: float = 0.0
    positions: PositionMode = "original"
    model: str = ""


@dataclass(frozen=True)
class StreamChunk:
    """A piece of streamed text; the last chunk has ``output`` set (and may have empty text)."""

    text: str
    output: BaseOutput | None = None


class BaseBackend(ABC):
    """A base model that prefills a (pruned) prompt and decodes.

    Subclasses implement :meth:`generate` and :meth:`stream`; the async versions default to running the
    sync ones in a worker thread and should be overridden where the backend is natively async.
    """

    name: str = "base"

    @abstractmethod
    def same_tokenizer(self, speculator: object) -> bool:
        """Whether kept speculator token ids can be fed to this base directly."""

    @abstractmethod
    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Prefill the request and decode to completion."""

    @abstractmethod
    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Prefill the request and yield text as it is decoded; the last chunk carries the output."""

    async def agenerate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Async :meth:`generate` (a worker thread unless overridden)."""
        return await asyncio.to_thread(self.generate, request, params)

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream`: a worker thread feeds an asyncio queue unless overridden."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            try:
                for chunk in self.stream(request, params):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

        worker = threading.Thread(target=pump, name=f"{self.name}-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    assert isinstance(item, BaseException)
                    raise item
                assert isinstance(item, StreamChunk)
                yield item
        finally:
            stop.set()
