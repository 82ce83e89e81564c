"""``SpecPrefillLLM``: a LlamaIndex chat LLM whose prompts are pruned by a speculator before the base prefill.

In process it wraps a :class:`~specprefill.engine.SpecPrefillEngine` (any base backend: transformers, an
OpenAI-compatible server, vLLM) and speaks LlamaIndex's chat contract natively: messages go to the engine as
messages, so the chat template, the system prompt and the end of the final user message are protected from
pruning. In server mode a vLLM server prunes and LlamaIndex's ``OpenAILike`` talks to it (see
:mod:`llama_index.llms.specprefill.server`). Every response carries the pruning statistics in
``additional_kwargs["specprefill"]`` and the base token usage in ``additional_kwargs["prompt_tokens"]`` /
``["completion_tokens"]`` (read by LlamaIndex token counters).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import LLM

from specprefill.backends.openai import DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT
from specprefill.config import SpecPrefillConfig
from specprefill.engine import SpecPrefillEngine
from specprefill.engine.callargs import split_call_kwargs
from specprefill.errors import ConfigurationError
from specprefill.result import STATS_KEY
from specprefill.speculator.base import Speculator

from .convert import chat_response, completion_response, to_messages, user_chat, user_message
from .server import ServerCalls, server_call_kwargs, server_llm

__all__ = ["STATS_KEY", "SpecPrefillLLM"]

"""Key of the pruning statistics (:meth:`EngineStats.to_dict <specprefill.engine.EngineStats.to_dict>`) in
a response's ``additional_kwargs`` and ``raw``."""


class SpecPrefillLLM(LLM):
    """A LlamaIndex chat LLM over Speculative Prefill: the speculator prunes, the base model generates.

    Server mode: ``SpecPrefillLLM(base_url="http://gpu-node:8000/v1", model=...)`` with no ``speculator`` and
    no ``engine`` sends the FULL prompt to a vLLM server that prunes (``specprefill serve``), with
    ``keep_rate`` / ``max_kept_tokens`` as ``vllm_xargs``, through LlamaIndex's ``OpenAILike``; no model is
    loaded here, and ``raw`` is the server's JSON. An answer without the server's stats raises
    :class:`~specprefill.wire.stats.ServerStatsError`. Otherwise give it a ready
    :class:`~specprefill.engine.SpecPrefillEngine`, or ``base_url`` plus a ``speculator`` to prune here and
    generate on any OpenAI-compatible server (an :class:`~specprefill.backends.openai.OpenAIBackend`). All
    eight endpoints are implemented and natively async. ``complete`` sends the prompt as one user message.

    Per call, keyword arguments may set generation (``max_new_tokens`` or ``max_tokens``, ``temperature``,
    ``top_p``, ``stop``, ``seed``, ``protected_spans``) and any :class:`~specprefill.config.SpecPrefillConfig`
    field (e.g. ``keep_rate=0.1``); anything else raises :class:`~specprefill.errors.UnknownArgumentError`
    (a :class:`~specprefill.errors.ConfigurationError`), as in ``ChatSpecPrefill``.

    Args:
        engine: The engine to use. Mutually exclusive with ``base_url``/``api_key``/``speculator``/``config``.
        base_url: OpenAI-compatible API root including ``/v1``, when no engine is given.
        model: Served model name for ``base_url`` (default: the server's first model); also the name in
            :attr:`metadata` (default: the base backend's model name).
        api_key: API key for ``base_url`` (default: ``$OPENAI_API_KEY``, else ``"EMPTY"``).
        speculator: Speculator (instance or name) that prunes in this process for ``base_url``; loaded on
            first use. None (default) with ``base_url``: server mode.
        config: Pruning settings for the engine built for ``base_url`` (not in server mode).
        timeout: Seconds ``base_url`` may stay silent during one attempt (None: no limit).
        request_timeout: Overall seconds per request to ``base_url``, retries and the streamed answer
            included (None: no limit; not applied in server mode, where ``timeout`` bounds each attempt).
        max_retries: Retries of failed requests to ``base_url`` (connection errors, 429, 5xx).
        context_window: Tokens the base model takes (prompt plus output; default: the base model's
            ``max_position_embeddings`` when known, else LlamaIndex's default). Pruned prompts keep their
            original positions, so the *unpruned* prompt must fit.
        **kwargs: Other fields: ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
            ``keep_rate``, ``max_kept_tokens``, and ``LLM`` fields such as ``system_prompt`` or
            ``callback_manager``.

    Raises:
        ConfigurationError: Neither or both of ``engine`` and ``base_url`` are given, or a field is invalid.

    Example:
        >>> base = TransformersBackend(speculator.model, speculator.tokenizer, name="smollm2-135m")
        >>> llm = SpecPrefillLLM(SpecPrefillEngine(speculator, base), keep_rate=0.3, max_new_tokens=64)
        >>> llm.chat([ChatMessage(role="user", content=long_text)]).additional_kwargs["specprefill"]

    """

    model: str = Field(default="", description="Base model name reported in the metadata.")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0, description="Base model context in tokens.")
    max_new_tokens: int = Field(default=256, ge=1, description="Most tokens generated per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 for greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0, description="Keep rate for every call.")
    max_kept_tokens: int | None = Field(default=None, ge=1, description="Kept-token cap for every call.")

    _engine: SpecPrefillEngine | None = PrivateAttr(default=None)
    _server_settings: dict[str, Any] | None = PrivateAttr(default=None)
    _server: ServerCalls | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        engine: SpecPrefillEngine | None = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        speculator: Speculator | str | None = None,
        config: SpecPrefillConfig | None = None,
        context_window: int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = 2,
        **kwargs: Any,
    ) -> None:
        if engine is None:
            if base_url is None:
                raise ConfigurationError(
                    "SpecPrefillLLM needs an engine: pass engine=SpecPrefillEngine(speculator, base) or "
                    "base_url='http://host:port/v1' of an OpenAI-compatible server"
                )
            if speculator is None:
                return self._init_server(base_url, model, api_key, config, context_window, timeout, max_retries, kwargs)
            from specprefill.backends.openai import OpenAIBackend

            backend = OpenAIBackend(
                model,
                base_url=base_url,
                api_key=api_key,
                timeout=timeout,
                request_timeout=request_timeout,
                max_retries=max_retries,
            )
            engine = SpecPrefillEngine(speculator, backend, config)
        elif not isinstance(engine, SpecPrefillEngine):
            raise ConfigurationError(f"engine must be a SpecPrefillEngine, got {type(engine).__name__}")
        elif base_url is not None or api_key is not None or config is not None:
            raise ConfigurationError(
                "base_url, api_key and config are for building an engine; with engine=... set them on the engine"
            )
        base = engine.base
        if context_window is None:
            known = getattr(base, "max_position_embeddings", None)
            context_window = int(known) if isinstance(known, int) and known > 0 else DEFAULT_CONTEXT_WINDOW
        name = model or base.model_name or base.kind
        self._init_fields({"model": name, "context_window": context_window, **kwargs})
        self._engine = engine

    def _init_fields(self, fields: dict[str, Any]) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid SpecPrefillLLM settings: {exc}") from exc

    def _init_server(
        self,
        base_url: str,
        model: str | None,
        api_key: str | None,
        config: SpecPrefillConfig | None,
        context_window: int | None,
        timeout: float | None,
        max_retries: int,
        kwargs: dict[str, Any],
    ) -> None:
        if config is not None:
            raise ConfigurationError(
                "config=... is for pruning in this process; in server mode the server owns the pruning settings "
                "(per call or as fields only keep_rate= and max_kept_tokens= travel to it)"
            )
        self._init_fields({"model": model or "", "context_window": context_window or DEFAULT_CONTEXT_WINDOW, **kwargs})
        server_call_kwargs({}, {"keep_rate": self.keep_rate, "max_kept_tokens": self.max_kept_tokens})
        self._server_settings = {
            "base_url": base_url, "model": model, "api_key": api_key, "timeout": timeout, "max_retries": max_retries
        }  # fmt: skip

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised LlamaIndex components."""
        return "SpecPrefillLLM"

    @property
    def server_mode(self) -> bool:
        """True when a vLLM server prunes (built with ``base_url`` and no ``speculator`` or ``engine``)."""
        return self._server_settings is not None

    @property
    def engine(self) -> SpecPrefillEngine:
        """The engine that prunes and generates (not in server mode: there the server does both).

        Raises:
            ConfigurationError: In server mode.

        """
        if self._engine is None:
            raise ConfigurationError("in server mode the server prunes and generates; there is no engine here")
        return self._engine

    def server_calls(self) -> ServerCalls:
        """Server mode's endpoints on an ``OpenAILike`` client, built on first use.

        Raises:
            ConfigurationError: Not in server mode, or the server lists no model.

        """
        if self._server_settings is None:
            raise ConfigurationError("server_calls() is for server mode: base_url=... without speculator")
        with self._lock:
            if self._server is None:
                self._server = ServerCalls(server_llm(**self._server_settings))
                self.model = self.model or self._server.llm.model
        return self._server

    def _server_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return server_call_kwargs(self._defaults(), kwargs)

    @property
    def metadata(self) -> LLMMetadata:
        """Context window, output length and model name; a chat model without function calling."""
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model,
        )

    # --- sync endpoints -----------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Prune the conversation and answer it.

        Args:
            messages: The conversation; text content only.
            **kwargs: Per-call generation settings and config fields (see the class docstring).

        Returns:
            The answer, with pruning statistics and token usage in ``additional_kwargs``.

        """
        if self.server_mode:
            return self.server_calls().chat(messages, self._server_args(kwargs))
        result = self.engine.generate(to_messages(messages), **self._call_args(kwargs))
        return chat_response(result.text, result.text, result)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Prune the prompt, sent as one user message, and answer it.

        Args:
            prompt: The prompt text.
            formatted: Ignored: the prompt is always sent as a user message through the chat template.
            **kwargs: Per-call generation settings and config fields.

        Returns:
            The completion, with pruning statistics and token usage in ``additional_kwargs``.

        """
        if self.server_mode:
            return self.server_calls().complete(user_chat(prompt), self._server_args(kwargs))
        result = self.engine.generate(user_message(prompt), **self._call_args(kwargs))
        return completion_response(result.text, result.text, result)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, streamed; the last response carries the statistics."""
        if self.server_mode:
            return self.server_calls().stream_chat(messages, self._server_args(kwargs))
        prompt = to_messages(messages)
        args = self._call_args(kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in self.engine.stream(prompt, **args):
                text += chunk.text
                yield chat_response(text, chunk.text, chunk.result)

        return gen()

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, streamed; the last response carries the statistics."""
        if self.server_mode:
            return self.server_calls().stream_complete(user_chat(prompt), self._server_args(kwargs))
        messages = user_message(prompt)
        args = self._call_args(kwargs)

        def gen() -> CompletionResponseGen:
            text = ""
            for chunk in self.engine.stream(messages, **args):
                text += chunk.text
                yield completion_response(text, chunk.text, chunk.result)

        return gen()

    # --- async endpoints ----------------------------------------------------------------------------
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat` (``engine.agenerate``)."""
        if self.server_mode:
            return await self.server_calls().achat(messages, self._server_args(kwargs))
        result = await self.engine.agenerate(to_messages(messages), **self._call_args(kwargs))
        return chat_response(result.text, result.text, result)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete` (``engine.agenerate``)."""
        if self.server_mode:
            return await self.server_calls().acomplete(user_chat(prompt), self._server_args(kwargs))
        result = await self.engine.agenerate(user_message(prompt), **self._call_args(kwargs))
        return completion_response(result.text, result.text, result)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat` (``engine.astream``)."""
        if self.server_mode:
            return await self.server_calls().astream_chat(messages, self._server_args(kwargs))
        prompt = to_messages(messages)
        args = self._call_args(kwargs)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for chunk in self.engine.astream(prompt, **args):
                text += chunk.text
                yield chat_response(text, chunk.text, chunk.result)

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete` (``engine.astream``)."""
        if self.server_mode:
            return await self.server_calls().astream_complete(user_chat(prompt), self._server_args(kwargs))
        messages = user_message(prompt)
        args = self._call_args(kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for chunk in self.engine.astream(messages, **args):
                text += chunk.text
                yield completion_response(text, chunk.text, chunk.result)

        return gen()

    # --- helpers ------------------------------------------------------------------------------------
    def _defaults(self) -> dict[str, Any]:
        """Generation and pruning defaults of this LLM, as call keyword arguments."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop) or None,
            "seed": self.seed,
            "keep_rate": self.keep_rate,
            "max_kept_tokens": self.max_kept_tokens,
        }

    def _call_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine keyword arguments: this LLM's defaults, overridden by the call's ``kwargs``."""
        args = self._defaults()
        rest = dict(kwargs)
        spans = rest.pop("protected_spans", None)
        generation, overrides = split_call_kwargs(rest, caller="SpecPrefillLLM")
        args.update(generation)
        args.update(overrides)
        if spans is not None:
            args["protected_spans"] = spans
        return args
