"""Base backend for OpenAI-compatible servers (vLLM, llama.cpp, TGI, the OpenAI API) via the ``openai`` client.

When the server uses the speculator's tokenizer (checked by sending a probe string to the vLLM-style
``/tokenize`` endpoint), kept token ids go to ``/v1/completions`` as a token-id prompt. A stock server then
gives them fresh contiguous positions (``positions="compacted"``); a vLLM server with the specprefill plugin
restores the original positions (probed once, see :meth:`OpenAIBackend.restored_positions_body`). With
another tokenizer the pruned messages go to ``/v1/chat/completions`` (plain prompts: the kept text to
``/v1/completions``).

Generation always streams internally, so ``prefill_seconds`` is a real time to first token. Every request
has an overall deadline (``request_timeout``) covering retries and a trickling stream; probes cache only
definite answers and retry transient failures later (:mod:`specprefill.backends.openai.http`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from specprefill._deps import require
from specprefill.backends import base
from specprefill.backends.base import BaseRequest, GenerationParams, StreamChunk, finish_reason
from specprefill.backends.openai.errors import translate_openai_error
from specprefill.backends.openai.http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TIMEOUT,
    Progress,
    absorb_event,
    check_stream_reply,
    stream_format_error,
)
from specprefill.backends.openai.probes import TOKENIZER_PROBE, ServerProbes
from specprefill.backends.retry import Deadline, ProbeGate, retry_delay, retryable, status_of
from specprefill.errors import BackendError, ConfigurationError, PromptError, SpecPrefillError

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_REQUEST_TIMEOUT", "DEFAULT_TIMEOUT", "TOKENIZER_PROBE", "OpenAIBackend"]

logger = logging.getLogger("specprefill.openai")


@dataclass
class _Call:
    """One prepared API call: which endpoint and its keyword arguments."""

    chat: bool
    kwargs: dict[str, Any]
    positions: base.PositionMode
    prompt_tokens: int


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {value!r}")


class OpenAIBackend(ServerProbes, base.BaseBackend):
    """A model behind an OpenAI-compatible HTTP API as the base model.

    Args:
        model: Served model name; if omitted, the first model listed by ``/v1/models``.
        base_url: API root including ``/v1`` (default: ``$OPENAI_BASE_URL``, else the OpenAI API).
        api_key: API key (default: ``$OPENAI_API_KEY``, else ``"EMPTY"`` as local servers expect).
        timeout: Seconds the server may stay silent during one attempt (None: no limit).
        connect_timeout: Seconds to connect (None: no limit).
        request_timeout: Overall seconds per request: retries, ``Retry-After`` waits and the whole streamed
            answer included; a stream still running then is cut with a :class:`BackendError` (None: no limit).
        max_retries: Retries of failed attempts (connection errors, timeouts, 429, 5xx) before any answer
            text arrived; waits follow ``Retry-After`` and stay inside ``request_timeout``.
        same_tokenizer: Force the same-tokenizer decision instead of probing ``/tokenize``.
        restore_positions: Whether the server restores original positions sent in ``vllm_xargs`` (a vLLM
            server with the specprefill plugin). None probes the server on the first pruned request.
        probe_retry_seconds: Wait before probing again after a probe failed transiently (5xx, timeout,
            connection error); doubles on every further failure, up to five minutes.
        default_headers: Extra HTTP headers for every request.

    Example:
        >>> base = OpenAIBackend("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")

    """

    kind = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = 2,
        same_tokenizer: bool | None = None,
        restore_positions: bool | None = None,
        probe_retry_seconds: float = 2.0,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            _check_timeout(name, value)
        _check_timeout("request_timeout", request_timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self._openai = require("openai")
        self._model = model
        self.model_name = model or ""
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.force_same_tokenizer = same_tokenizer
        self.restore_positions = restore_positions
        self._positions_lock = threading.Lock()
        self._tokenize_gate = ProbeGate(first=probe_retry_seconds)
        self._positions_gate = ProbeGate(first=probe_retry_seconds)
        self.default_headers = dict(default_headers or {})
        self.client = self._openai.OpenAI(
            api_key=self.api_key,
            base_url=base_url,
            timeout=self._timeout(Deadline(None)),
            max_retries=0,
            default_headers=self.default_headers or None,
        )
        self.base_url = str(self.client.base_url).rstrip("/")
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    # --- clients and model ----------------------------------------------------------------------------
    def _timeout(self, deadline: Deadline) -> Any:
        """Per-attempt ``openai.Timeout``: the silence and connect limits, never past the deadline."""
        left = deadline.remaining()
        read = None if self.timeout is None and left == float("inf") else min(self.timeout or left, left)
        connect = (
            None if self.connect_timeout is None and left == float("inf") else min(self.connect_timeout or left, left)
        )
        return self._openai.Timeout(read, connect=connect)

    def async_client(self) -> Any:
        """Return the ``AsyncOpenAI`` client of the running event loop (one per loop, created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._openai.AsyncOpenAI(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self._timeout(Deadline(None)),
                max_retries=0,
                default_headers=self.default_headers or None,
            )
            self._async_clients[loop] = client
        return client

    @property
    def model(self) -> str:
        """The served model name (asks ``/v1/models`` once if none was given).

        Raises:
            BackendError: The server cannot be reached or lists no model.

        """
        if self._model is None:
            deadline = Deadline(self.request_timeout)
            page = self._retrying(lambda t: self.client.models.list(timeout=t), deadline, "listing models")
            listed = [m.id for m in page]
            if not listed:
                raise BackendError(f"the server at {self.base_url} lists no models; pass model=... explicitly")
            self._model = self.model_name = str(listed[0])
        return self._model

    # --- retries within the deadline -------------------------------------------------------------------
    def _wait_before_retry(self, attempt: int, exc: Exception, deadline: Deadline, doing: str) -> float:
        """Seconds to wait before the next attempt; raises the typed error when no retry is left."""
        if attempt >= self.max_retries or not retryable(exc, self._openai):
            raise self._error(exc, doing, deadline) from exc
        wait = retry_delay(attempt, exc)
        if wait >= deadline.remaining():
            raise BackendError(
                f"the server at {self.base_url} failed while {doing} ({self._error(exc, doing, deadline)}) and "
                f"a retry after {wait:.1f}s would pass request_timeout={self.request_timeout}s"
            ) from exc
        logger.info("retrying %s at %s in %.2fs (%s)", doing, self.base_url, wait, type(exc).__name__)
        return wait

    def _retrying(self, attempt_fn: Callable[[Any], Any], deadline: Deadline, doing: str) -> Any:
        attempt = 0
        while True:
            try:
                return attempt_fn(self._timeout(deadline))
            except self._openai.OpenAIError as exc:
                time.sleep(self._wait_before_retry(attempt, exc, deadline, doing))
                attempt += 1

    async def _aretrying(self, attempt_fn: Callable[[Any], Any], deadline: Deadline, doing: str) -> Any:
        attempt = 0
        while True:
            try:
                return await attempt_fn(self._timeout(deadline))
            except self._openai.OpenAIError as exc:
                await asyncio.sleep(self._wait_before_retry(attempt, exc, deadline, doing))
                attempt += 1

    # --- generation -----------------------------------------------------------------------------------
    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Send the request with ``stream=True`` and yield text as it arrives.

        Args:
            request: Token form (goes to ``/v1/completions`` as ids) or text/messages form.
            params: Decoding settings.

        Yields:
            Text deltas; the last chunk carries the :class:`BaseOutput` (usage from the server's report).

        Raises:
            PromptError: The request is empty.
            BackendError: The server cannot be reached, rejects the request, sends something that is not a
                complete answer stream, or does not finish within ``request_timeout``.

        """
        deadline = Deadline(self.request_timeout)
        progress = Progress(start=time.perf_counter())
        call = self._call(request, params)
        endpoint = self.client.chat.completions if call.chat else self.client.completions
        try:
            events = self._retrying(lambda t: endpoint.create(**call.kwargs, timeout=t), deadline, "generating")
        except BackendError as exc:
            if not self._positions_refused(call, exc):
                raise
            events = self._retrying(lambda t: endpoint.create(**call.kwargs, timeout=t), deadline, "generating")
        watchdog = threading.Timer(deadline.remaining(), events.response.close) if deadline.seconds else None
        try:
            if watchdog is not None:
                watchdog.daemon = True
                watchdog.start()
            self._check_reply(events.response, None)
            for event in events:
                text = absorb_event(event, call.chat, progress)
                if deadline.expired():
                    raise deadline.error(self.base_url, "the answer")
                if text:
                    yield StreamChunk(text)
        except Exception as exc:
            raise self._stream_error(exc, deadline) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
            events.close()
        yield StreamChunk("", output=self._output(call, progress))

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Native async :meth:`stream` with ``AsyncOpenAI``; the deadline cancels a hanging read."""
        deadline = Deadline(self.request_timeout)
        progress = Progress(start=time.perf_counter())
        call = await asyncio.to_thread(self._call, request, params)
        client = self.async_client()
        endpoint = client.chat.completions if call.chat else client.completions
        try:
            events = await self._aretrying(lambda t: endpoint.create(**call.kwargs, timeout=t), deadline, "generating")
        except BackendError as exc:
            if not self._positions_refused(call, exc):
                raise
            events = await self._aretrying(lambda t: endpoint.create(**call.kwargs, timeout=t), deadline, "generating")
        try:
            body = None if _is_event_stream(events.response) else await events.response.aread()
            self._check_reply(events.response, body)
            iterator = events.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(None if deadline.seconds is None else deadline.remaining()):
                        event = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise deadline.error(self.base_url, "the answer") from None
                text = absorb_event(event, call.chat, progress)
                if text:
                    yield StreamChunk(text)
        except Exception as exc:
            raise self._stream_error(exc, deadline) from exc
        finally:
            await events.close()
        yield StreamChunk("", output=self._output(call, progress))

    # --- helpers ------------------------------------------------------------------------------------
    def _positions_refused(self, call: _Call, exc: BackendError) -> bool:
        """A request with restored positions was refused (400/422): send it again without, as compacted."""
        if "extra_body" not in call.kwargs or status_of(exc.__cause__ or exc) not in (400, 422):
            return False
        logger.warning("the server at %s refused restored positions; sending compacted positions", self.base_url)
        self.restore_positions = False
        del call.kwargs["extra_body"]
        call.positions = "compacted"
        return True

    def _check_reply(self, response: Any, body: bytes | None) -> None:
        if body is None and not _is_event_stream(response):
            body = response.read()
        check_stream_reply(response, body, self.base_url)

    def _stream_error(self, exc: Exception, deadline: Deadline) -> SpecPrefillError:
        if isinstance(exc, SpecPrefillError):
            return exc
        if deadline.expired():
            return deadline.error(self.base_url, "the answer")
        if isinstance(exc, ValueError):  # json.JSONDecodeError of a malformed event
            return stream_format_error(exc, self.base_url)
        if isinstance(exc, self._openai.OpenAIError):
            return self._error(exc, "generating", deadline)
        return BackendError(
            f"the connection to {self.base_url} broke while streaming the answer ({type(exc).__name__}: {exc}); "
            "the answer is incomplete, retry the request"
        )

    def _call(self, request: BaseRequest, params: GenerationParams) -> _Call:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if request.token_ids is not None:
            ids = [int(t) for t in request.token_ids]
            if not ids:
                raise PromptError("the request has no token ids; nothing to send")
            length = request.original_length if request.original_length is not None else len(ids)
            positions = request.position_ids
            full = length == len(ids) and (positions is None or list(positions) == list(range(len(ids))))
            extra = None if full else self.restored_positions_body(request)
            mode: base.PositionMode = "full" if full else "original" if extra else "compacted"
            if extra:
                kwargs["extra_body"] = extra
            return _Call(chat=False, kwargs={**kwargs, "prompt": ids}, positions=mode, prompt_tokens=len(ids))
        if request.messages is not None:
            return _Call(True, {**kwargs, "messages": list(request.messages)}, "compacted", 0)
        if request.text is not None:
            return _Call(False, {**kwargs, "prompt": request.text}, "compacted", 0)
        raise PromptError("the request has neither token_ids, text nor messages")

    def _output(self, call: _Call, progress: Progress) -> base.BaseOutput:
        end = time.perf_counter()
        first = progress.first if progress.first is not None else end
        return base.BaseOutput(
            text="".join(progress.pieces),
            finish_reason=finish_reason(progress.finish, source=f"the server at {self.base_url}"),
            prompt_tokens=progress.prompt_tokens if progress.prompt_tokens is not None else call.prompt_tokens,
            completion_tokens=(
                progress.completion_tokens if progress.completion_tokens is not None else progress.chunks
            ),
            prefill_seconds=first - progress.start,
            total_seconds=end - progress.start,
            positions=call.positions,
            model=str(call.kwargs["model"]),
            started_at=progress.start,
        )

    def _error(self, exc: BaseException, doing: str, deadline: Deadline | None = None) -> BackendError:
        return translate_openai_error(self._openai, exc, doing, self.base_url, self._model, self.timeout, deadline)


def _is_event_stream(response: Any) -> bool:
    kind = str(response.headers.get("content-type", "")).split(";")[0].strip().lower()
    return kind == "text/event-stream"
