"""Base backend for OpenAI-compatible servers (vLLM, llama.cpp, TGI, the OpenAI API) via the ``openai`` client.

When the server uses the speculator's tokenizer (checked once by sending a probe string to the vLLM-style
``/tokenize`` endpoint), kept token ids go to ``/v1/completions`` as a token-id prompt. A stock server then
gives them fresh contiguous positions (``positions="compacted"``); restoring the original positions needs
server support, which plugs in at :meth:`OpenAIBackend.restored_positions_body`. With another tokenizer the
pruned messages go to ``/v1/chat/completions`` (plain prompts: the kept text to ``/v1/completions``).

Generation always streams internally, so ``prefill_seconds`` is a real time to first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from specprefill._deps import require
from specprefill.backends.base import (
    BaseBackend,
    BaseOutput,
    BaseRequest,
    GenerationParams,
    PositionMode,
    StreamChunk,
)
from specprefill.errors import BackendError, PromptError

__all__ = ["TOKENIZER_PROBE", "OpenAIBackend"]

logger = logging.getLogger("specprefill.openai")

TOKENIZER_PROBE = "Speculative prefill probe: naïve café, 12345 tokens → 東京 ✓ <b>ok</b>\n\tend."
"""Text tokenised by both the server and the speculator to decide whether they share a tokenizer."""


@dataclass
class _Call:
    """One prepared API call: which endpoint and its keyword arguments."""

    chat: bool
    kwargs: dict[str, Any]
    positions: PositionMode
    prompt_tokens: int


@dataclass
class _Progress:
    """What a stream has delivered so far."""

    start: float
    pieces: list[str] = field(default_factory=list)
    first: float | None = None
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks: int = 0


class OpenAIBackend(BaseBackend):
    """A model behind an OpenAI-compatible HTTP API as the base model.

    Args:
        model: Served model name; if omitted, the first model listed by ``/v1/models``.
        base_url: API root including ``/v1`` (default: ``$OPENAI_BASE_URL``, else the OpenAI API).
        api_key: API key (default: ``$OPENAI_API_KEY``, else ``"EMPTY"`` as local servers expect).
        timeout: Seconds before a request times out.
        max_retries: Retries of failed requests (connection errors, 429, 5xx).
        same_tokenizer: Force the same-tokenizer decision instead of probing ``/tokenize``.
        restore_positions: Whether the server restores original positions sent in ``vllm_xargs`` (a vLLM
            server with the specprefill plugin). None probes the server once, on the first pruned request.
        default_headers: Extra HTTP headers for every request.

    Example:
        >>> base = OpenAIBackend("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")

    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = 600.0,
        max_retries: int = 2,
        same_tokenizer: bool | None = None,
        restore_positions: bool | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._openai = require("openai")
        self._model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout = timeout
        self.max_retries = max_retries
        self.force_same_tokenizer = same_tokenizer
        self.restore_positions = restore_positions
        self._positions_lock = threading.Lock()
        self.default_headers = dict(default_headers or {})
        self.client = self._openai.OpenAI(
            api_key=self.api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=self.default_headers or None,
        )
        self.base_url = str(self.client.base_url).rstrip("/")
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._same: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    # --- clients and model ----------------------------------------------------------------------------
    def async_client(self) -> Any:
        """Return the ``AsyncOpenAI`` client of the running event loop (one per loop, created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._openai.AsyncOpenAI(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
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
            try:
                listed = [m.id for m in self.client.models.list()]
            except self._openai.OpenAIError as exc:
                raise self._error(exc, "listing models") from exc
            if not listed:
                raise BackendError(f"the server at {self.base_url} lists no models; pass model=... explicitly")
            self._model = str(listed[0])
        return self._model

    # --- tokenizer decision -----------------------------------------------------------------------------
    def tokenize_urls(self) -> list[str]:
        """Candidate URLs of a vLLM-style ``/tokenize`` endpoint: the server root, then under ``base_url``."""
        root = self.base_url.removesuffix("/v1")
        urls = [f"{root}/tokenize"]
        if root != self.base_url:
            urls.append(f"{self.base_url}/tokenize")
        return urls

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` by the server's tokenizer (no special tokens), or None if it cannot say.

        Args:
            text: Text to tokenise.

        Returns:
            The ids from ``POST /tokenize``, or None when the server has no such endpoint or fails.

        """
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        quiet = self.client.with_options(max_retries=0)
        for url in self.tokenize_urls():
            try:
                data = quiet.post(url, cast_to=object, body=body)
            except self._openai.OpenAIError as exc:
                logger.debug("tokenize at %s failed: %s", url, exc)
                continue
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                return [int(t) for t in tokens]
        return None

    def same_tokenizer(self, speculator: object) -> bool:
        """Whether the server tokenises like the speculator (probe string compared once, then cached).

        A server without ``/tokenize`` (or any error) counts as a different tokenizer, so the text path is
        used. The constructor's ``same_tokenizer`` overrides the probe.

        Args:
            speculator: A speculator with ``encode(text) -> (ids, offsets)``.

        Returns:
            True when both produce the same ids for :data:`TOKENIZER_PROBE`.

        """
        if self.force_same_tokenizer is not None:
            return self.force_same_tokenizer
        try:
            cached = self._same.get(speculator)
        except TypeError:
            cached = None
        if cached is not None:
            return cached
        encode = getattr(speculator, "encode", None)
        answer = False
        if callable(encode):
            try:
                server = self.tokenize(TOKENIZER_PROBE)
            except BackendError as exc:
                logger.info("tokenizer probe failed (%s); treating the tokenizers as different", exc)
                server = None
            answer = server is not None and list(encode(TOKENIZER_PROBE)[0]) == server
        logger.info("server %s %s the speculator's tokenizer", self.base_url, "shares" if answer else "does not share")
        with contextlib.suppress(TypeError):
            self._same[speculator] = answer
        return answer

    def restored_positions_body(self, request: BaseRequest) -> dict[str, Any] | None:
        """Extra request body that makes the server prefill at the original positions, or None.

        A vLLM server with the specprefill plugin (:mod:`specprefill.vllm_plugin`) takes the original
        positions in ``vllm_xargs`` plus a position-derived ``cache_salt``; whether this server does is
        probed once (:func:`~specprefill.vllm_plugin.remote.probe_position_support`) and cached. A stock
        server gives a token-id prompt contiguous positions, so None is returned and outputs report
        ``positions="compacted"``.

        Args:
            request: A token-form request with ``position_ids`` and ``original_length``.

        Returns:
            ``{"vllm_xargs": ..., "cache_salt": ...}`` when the server restores positions, else None.

        """
        from specprefill.vllm_plugin import remote

        if request.token_ids is None or not self._server_restores_positions(request.token_ids):
            return None
        return remote.positions_body(request.token_ids, request.position_ids, request.original_length)

    def _server_restores_positions(self, token_ids: list[int]) -> bool:
        if self.restore_positions is None:
            with self._positions_lock:
                if self.restore_positions is None:
                    from specprefill.vllm_plugin import remote

                    self.restore_positions = remote.probe_position_support(self.client, self.model, token_ids)
                    if not self.restore_positions:
                        logger.warning(
                            "the server at %s does not restore original positions (no specprefill vLLM plugin); "
                            "pruned prompts go at compacted positions (stats: positions='compacted')",
                            self.base_url,
                        )
        return bool(self.restore_positions)

    # --- generation -----------------------------------------------------------------------------------
    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Send the request and wait for the whole answer (streamed internally to time the first token).

        Args:
            request: Token form (goes to ``/v1/completions`` as ids) or text/messages form.
            params: Decoding settings.

        Returns:
            The output; ``prompt_tokens`` and ``completion_tokens`` come from the server's usage report.

        Raises:
            BackendError: The server cannot be reached or rejects the request.

        """
        output: BaseOutput | None = None
        for chunk in self.stream(request, params):
            output = chunk.output or output
        if output is None:  # pragma: no cover - stream always ends with an output
            raise BackendError("the stream ended without an output")
        return output

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Send the request with ``stream=True`` and yield text as it arrives.

        Args:
            request: Token form or text/messages form.
            params: Decoding settings.

        Yields:
            Text deltas; the last chunk carries the :class:`BaseOutput`.

        """
        call = self._call(request, params)
        progress = _Progress(start=time.perf_counter())
        endpoint = self.client.chat.completions if call.chat else self.client.completions
        try:
            events = endpoint.create(**call.kwargs)
            try:
                for event in events:
                    text = self._absorb(event, call.chat, progress)
                    if text:
                        yield StreamChunk(text)
            finally:
                events.close()
        except self._openai.OpenAIError as exc:
            raise self._error(exc, "generating") from exc
        yield StreamChunk("", output=self._output(call, progress))

    async def agenerate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Native async :meth:`generate` with ``AsyncOpenAI``."""
        output: BaseOutput | None = None
        async for chunk in self.astream(request, params):
            output = chunk.output or output
        if output is None:  # pragma: no cover - stream always ends with an output
            raise BackendError("the stream ended without an output")
        return output

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Native async :meth:`stream` with ``AsyncOpenAI``."""
        call = await asyncio.to_thread(self._call, request, params)
        progress = _Progress(start=time.perf_counter())
        client = self.async_client()
        endpoint = client.chat.completions if call.chat else client.completions
        try:
            events = await endpoint.create(**call.kwargs)
            try:
                async for event in events:
                    text = self._absorb(event, call.chat, progress)
                    if text:
                        yield StreamChunk(text)
            finally:
                await events.close()
        except self._openai.OpenAIError as exc:
            raise self._error(exc, "generating") from exc
        yield StreamChunk("", output=self._output(call, progress))

    # --- helpers ------------------------------------------------------------------------------------
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
            mode: PositionMode = "full" if full else "original" if extra else "compacted"
            if extra:
                kwargs["extra_body"] = extra
            return _Call(chat=False, kwargs={**kwargs, "prompt": ids}, positions=mode, prompt_tokens=len(ids))
        if request.messages is not None:
            return _Call(
                chat=True, kwargs={**kwargs, "messages": list(request.messages)}, positions="compacted", prompt_tokens=0
            )
        if request.text is not None:
            return _Call(chat=False, kwargs={**kwargs, "prompt": request.text}, positions="compacted", prompt_tokens=0)
        raise PromptError("the request has neither token_ids, text nor messages")

    @staticmethod
    def _absorb(event: Any, chat: bool, progress: _Progress) -> str:
        usage = getattr(event, "usage", None)
        if usage is not None:
            progress.prompt_tokens = getattr(usage, "prompt_tokens", None)
            progress.completion_tokens = getattr(usage, "completion_tokens", None)
        text = ""
        for choice in getattr(event, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue
            if chat:
                delta = getattr(choice, "delta", None)
                text = (getattr(delta, "content", None) or "") if delta is not None else ""
            else:
                text = getattr(choice, "text", None) or ""
            if getattr(choice, "finish_reason", None):
                progress.finish = str(choice.finish_reason)
            if text or progress.finish:
                progress.chunks += 1 if text else 0
                if progress.first is None:
                    progress.first = time.perf_counter()
        if text:
            progress.pieces.append(text)
        return text

    def _output(self, call: _Call, progress: _Progress) -> BaseOutput:
        end = time.perf_counter()
        first = progress.first if progress.first is not None else end
        return BaseOutput(
            text="".join(progress.pieces),
            finish_reason=progress.finish or "stop",
            prompt_tokens=progress.prompt_tokens if progress.prompt_tokens is not None else call.prompt_tokens,
            completion_tokens=(
                progress.completion_tokens if progress.completion_tokens is not None else progress.chunks
            ),
            prefill_seconds=first - progress.start,
            total_seconds=end - progress.start,
            positions=call.positions,
            model=str(call.kwargs["model"]),
        )

    def _error(self, exc: BaseException, doing: str) -> BackendError:
        openai = self._openai
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(
                f"the OpenAI-compatible server at {self.base_url} timed out while {doing} "
                f"(timeout={self.timeout}s); raise timeout=... or check the server load"
            )
        if isinstance(exc, openai.APIConnectionError):
            return BackendError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} while {doing} "
                f"({str(exc).rstrip('.')}). "
                "Is the server running, and is base_url right (it usually ends in /v1)?"
            )
        if isinstance(exc, openai.AuthenticationError):
            return BackendError(
                f"the server at {self.base_url} rejected the API key ({exc.status_code}); pass api_key=... "
                "or set OPENAI_API_KEY"
            )
        if isinstance(exc, openai.NotFoundError):
            return BackendError(
                f"the server at {self.base_url} answered 404 while {doing}: {_message(exc).rstrip('.')}. "
                f"Check the model name ({self._model!r}) and that base_url ends in /v1"
            )
        if isinstance(exc, openai.APIStatusError):
            return BackendError(
                f"the server at {self.base_url} answered {exc.status_code} while {doing}: {_message(exc)}"
            )
        return BackendError(f"the OpenAI client failed while {doing} ({self.base_url}): {exc}")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", exc))
