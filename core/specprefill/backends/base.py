"""The contract between the engine and a base model backend, and what every backend shares.

A backend implements :meth:`BaseBackend.stream` (and :meth:`BaseBackend.astream` where it is natively
async) plus :meth:`BaseBackend._compare_tokenizer`; draining a stream into one output, the async fallbacks,
error translation and the cached same-tokenizer decision live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from specprefill.errors import BackendError, ConfigurationError, SpecPrefillError
from specprefill.result import Message

__all__ = [
    "MAX_SEED",
    "BaseBackend",
    "BaseOutput",
    "BaseRequest",
    "GenerationParams",
    "PositionMode",
    "StreamChunk",
    "adrain",
    "atranslate_errors",
    "drain",
    "finish_reason",
    "translate_errors",
    "vocab_matches",
]

PositionMode = Literal["original", "compacted", "full"]
"""How the base saw the prompt: kept tokens at their original positions, kept text re-tokenised with
fresh contiguous positions, or the whole unpruned prompt."""

MAX_SEED = 2**64 - 1
"""Largest accepted sampling seed (seeds are unsigned 64-bit integers)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for the base model, validated on construction.

    Raises:
        ConfigurationError: A value is of the wrong type, not finite, or out of range.

    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ConfigurationError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigurationError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_number(self.top_p) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigurationError(f"top_p must be a finite number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ConfigurationError(f"seed must be an integer in [0, 2**64 - 1] or None, got {self.seed!r}")
        stops: object = self.stop
        if isinstance(stops, str):
            stops = (stops,)
        elif isinstance(stops, (list, tuple)):
            stops = tuple(stops)
        if not isinstance(stops, tuple) or not all(isinstance(s, str) for s in stops):
            raise ConfigurationError(f"stop must be a string or a sequence of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stops)


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
    """``"stop"`` (end of sequence or a stop string) or ``"length"`` (``max_new_tokens`` reached)."""
    prompt_tokens: int = 0
    """Tokens the base actually prefilled."""
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    """Base time to first token, from :attr:`started_at`."""
    total_seconds: float = 0.0
    positions: PositionMode = "original"
    model: str = ""
    started_at: float | None = None
    """``time.perf_counter()`` when the backend began working on the request (None: not recorded)."""


@dataclass(frozen=True)
class StreamChunk:
    """A piece of streamed text; the last chunk has ``output`` set (and may have empty text)."""

    text: str
    output: BaseOutput | None = None


_FINISH_ALIASES = {"eos": "stop", "stop_sequence": "stop", "end_turn": "stop", "max_tokens": "length"}


def finish_reason(reason: object, *, source: str) -> str:
    """The finish reason a base reported, checked: ``"stop"``, ``"length"``, or another reason it named.

    A missing reason means the answer was cut off (a dropped connection, an aborted request), which must
    never pass as a finished ``"stop"`` answer.

    Args:
        reason: What the base reported (None or empty when it reported nothing).
        source: Who reported it, for the error message.

    Returns:
        The normalised reason.

    Raises:
        BackendError: No finish reason, or ``"abort"``.

    """
    text = str(reason).strip().lower() if reason is not None else ""
    if not text:
        raise BackendError(
            f"{source} ended the answer without a finish reason, so it was cut off (connection dropped or "
            "request aborted); retry the request, and check the server's logs if it keeps happening"
        )
    if text == "abort":
        raise BackendError(f"{source} aborted the request before it finished; retry it or check the server's logs")
    return _FINISH_ALIASES.get(text, text)


ErrorTranslator = Callable[[Exception], SpecPrefillError]
"""Turns a backend library's exception into a typed specprefill error."""


def translate_errors(chunks: Iterator[StreamChunk], translate: ErrorTranslator) -> Iterator[StreamChunk]:
    """Pass a stream through, turning foreign exceptions into typed errors (specprefill errors pass as-is).

    Args:
        chunks: The backend's raw stream.
        translate: Maps any other exception to a :class:`~specprefill.errors.SpecPrefillError`.

    Yields:
        The same chunks.

    """
    try:
        yield from chunks
    except SpecPrefillError:
        raise
    except Exception as exc:
        raise translate(exc) from exc


async def atranslate_errors(
    chunks: AsyncIterator[StreamChunk], translate: ErrorTranslator
) -> AsyncIterator[StreamChunk]:
    """Async :func:`translate_errors`."""
    try:
        async for chunk in chunks:
            yield chunk
    except SpecPrefillError:
        raise
    except Exception as exc:
        raise translate(exc) from exc


def drain(chunks: Iterator[StreamChunk]) -> BaseOutput:
    """The final output of a stream (its last chunk's ``output``).

    Raises:
        BackendError: The stream ended without an output.

    """
    output: BaseOutput | None = None
    for chunk in chunks:
        output = chunk.output or output
    if output is None:
        raise BackendError("the base stream ended without an output; the backend is broken")
    return output


async def adrain(chunks: AsyncIterator[StreamChunk]) -> BaseOutput:
    """Async :func:`drain`."""
    output: BaseOutput | None = None
    async for chunk in chunks:
        output = chunk.output or output
    if output is None:
        raise BackendError("the base stream ended without an output; the backend is broken")
    return output


class BaseBackend(ABC):
    """A base model that prefills a (pruned) prompt and decodes.

    Subclasses implement :meth:`stream` and :meth:`_compare_tokenizer`, and set :attr:`model_name`; :meth:`generate`
    drains the stream, and the async versions run the sync ones in a worker thread unless overridden.
    """

    kind: str = "base"
    """Which kind of backend this is (``"transformers"``, ``"openai"``, ``"vllm"``)."""

    force_same_tokenizer: bool | None = None
    """Set to force the same-tokenizer decision instead of checking."""

    _model_name: str = ""

    @property
    def model_name(self) -> str:
        """Name of the base model, as reported in outputs and statistics (set by the backend)."""
        return self._model_name

    @model_name.setter
    def model_name(self, value: str) -> None:
        self._model_name = str(value)

    @abstractmethod
    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Prefill the request and yield text as it is decoded; the last chunk carries the output."""

    def _compare_tokenizer(self, speculator: object) -> bool | None:
        """Whether the speculator tokenises like this base; None when it cannot be told right now.

        The default cannot tell and says no (the text path always works); backends override it.
        """
        return False

    def same_tokenizer(self, speculator: object) -> bool:
        """Whether kept speculator token ids can be fed to this base directly (definite answers cached).

        Args:
            speculator: The speculator (usually with a ``tokenizer`` or an ``encode`` method).

        Returns:
            True when both tokenise alike. An undecidable answer counts as False and is asked again later.

        """
        if self.force_same_tokenizer is not None:
            return self.force_same_tokenizer
        cache = self._same_cache()
        with contextlib.suppress(TypeError):  # not weak-referenceable: no caching
            cached = cache.get(speculator)
            if cached is not None:
                return cached
        answer = self._compare_tokenizer(speculator)
        if answer is not None:
            with contextlib.suppress(TypeError):
                cache[speculator] = answer
        return bool(answer)

    def _same_cache(self) -> weakref.WeakKeyDictionary[Any, bool]:
        cache: weakref.WeakKeyDictionary[Any, bool] | None = self.__dict__.get("_same_tokenizer_cache")
        if cache is None:
            cache = self.__dict__.setdefault("_same_tokenizer_cache", weakref.WeakKeyDictionary())
        return cache

    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Prefill the request and decode to completion (drains :meth:`stream`).

        Raises:
            PromptError: The request cannot be used by this base.
            BackendError: The base failed.

        """
        return drain(self.stream(request, params))

    async def agenerate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Async :meth:`generate` (drains :meth:`astream`)."""
        return await adrain(self.astream(request, params))

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream`: a worker thread feeds an asyncio queue unless overridden."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop closed
                loop.call_soon_threadsafe(inbox.put_nowait, (kind, item))

        def pump() -> None:
            try:
                for chunk in self.stream(request, params):
                    if stop.is_set():
                        break
                    put("chunk", chunk)
            except BaseException as exc:
                put("error", exc)
            finally:
                put("done", None)

        worker = threading.Thread(target=pump, name=f"{self.kind}-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = await inbox.get()
                if kind == "done":
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, StreamChunk):
                    yield item
        finally:
            stop.set()


def vocab_matches(theirs: Any, mine: Any, cache: dict[str, Any]) -> bool:
    """Whether two tokenizers have the same vocabulary (``mine``'s vocabulary is cached in ``cache``).

    Args:
        theirs: The speculator's tokenizer (or None).
        mine: The base's tokenizer (or None).
        cache: A dict owned by the backend; ``cache["vocab"]`` keeps ``mine.get_vocab()``.

    Returns:
        True when both are the same object or have equal ``get_vocab()`` mappings.

    """
    if theirs is None or mine is None or not hasattr(theirs, "get_vocab") or not hasattr(mine, "get_vocab"):
        return False
    if theirs is mine:
        return True
    if "vocab" not in cache:
        cache["vocab"] = dict(mine.get_vocab())
    return bool(dict(theirs.get_vocab()) == cache["vocab"])
