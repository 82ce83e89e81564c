"""``ChatSpecPrefill``: a LangChain chat model whose prompts are pruned by a speculator before the base prefill.

In process, the adapter only moves data between LangChain and :class:`specprefill.engine.SpecPrefillEngine`:
messages go in as chat dicts (the speculator protects the chat template, the system prompt and the end of the
final user message), the engine prunes and generates, and its numbers come back as ``usage_metadata`` and a
``response_metadata["specprefill"]`` block. In server mode a vLLM server prunes and langchain-openai's
``ChatOpenAI`` does the talking (see :mod:`langchain_specprefill.server_chat`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from specprefill.backends.base import BaseBackend
from specprefill.backends.openai import DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT
from specprefill.config import SpecPrefillConfig
from specprefill.engine import SpecPrefillEngine
from specprefill.errors import ConfigurationError
from specprefill.speculator.base import Speculator

from .calls import ChatCall, EngineLRU, chat_prompt, engine_kwargs
from .convert import chat_result, json_instruction, result_chunk, to_chat_dicts
from .server_chat import ServerModeMixin, SpecPrefillServerChat, server_call_kwargs

__all__ = ["DEFAULT_MODEL", "ChatSpecPrefill", "json_instruction", "to_chat_dicts"]

DEFAULT_MODEL = "smollm2-135m"
"""The packaged embedded model (SmolLM2-135M-Instruct): default speculator, and default base in process."""


class ChatSpecPrefill(ServerModeMixin, BaseChatModel):
    r"""Chat model with Speculative Prefill: a small speculator prunes the prompt, the base prefills what is kept.

    Four ways to build it (none loads a model at construction; weights load on the first call):

    - Server mode, the speculator beside the base on a vLLM server that prunes (``specprefill serve``):
      ``ChatSpecPrefill(base_url="http://gpu-node:8000/v1", model="served-name", api_key=...)`` with no
      ``speculator``. The FULL prompt goes to the server with ``keep_rate`` / ``max_kept_tokens`` as
      ``vllm_xargs``; the server's stats come back in ``response_metadata["specprefill"]``. Requests go through
      langchain-openai's ``ChatOpenAI`` (:meth:`server_chat`), so :meth:`bind_tools` and
      :meth:`with_structured_output` work through the server (it protects the tools block from pruning).
      No model is loaded in this process. An answer without the server's stats raises
      :class:`~specprefill.wire.stats.ServerStatsError` (the server does not prune).
    - In process, transformers base (default): ``ChatSpecPrefill(model="smollm2-135m")``. ``model`` is the
      base (an embedded name, a transformers folder, a ``.gguf`` file or a hub id); ``speculator`` the
      scorer. When both name the same model, its weights are loaded once and shared.
    - Speculator here, base on any OpenAI-compatible server (vLLM, llama.cpp, TGI, ...):
      ``ChatSpecPrefill(base_url=..., model="served-name", speculator="smollm2-135m")``. Kept tokens go to the
      server as token ids when it shares the speculator's tokenizer (vLLM ``/tokenize`` probe), else the
      pruned messages go to ``/v1/chat/completions``.
    - Any prepared engine, e.g. with an in-process vLLM base: ``ChatSpecPrefill(engine=SpecPrefillEngine(...))``.

    Pruning settings are fields (``keep_rate``, ``max_kept_tokens``, ``min_prompt_tokens``, or a whole
    ``config``); every :class:`~specprefill.SpecPrefillConfig` field may also be given per call, e.g.
    ``chat.invoke(messages, keep_rate=0.1)`` or ``chat.bind(keep_rate=0.1)``. Generation kwargs per call:
    ``max_tokens`` (alias ``max_new_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop``.

    Results carry ``usage_metadata`` whose ``input_tokens`` are the tokens the base actually prefilled, and
    ``response_metadata["specprefill"]`` with the engine's statistics: ``tokens_in`` (original prompt length
    in speculator tokens), ``tokens_kept``, ``keep_ratio``, ``base_prompt_tokens``, ``speculator_seconds``,
    ``ttft_seconds``, ``positions``, ``pruned``, ``fallback``, ``fallback_reason`` and more.

    Outside server mode tool calling is not supported: :meth:`bind_tools` raises ``NotImplementedError``
    (neither base path has a tool channel), and :meth:`with_structured_output` works by prompting: it puts
    the JSON schema into the (protected) system prompt and parses the JSON answer.

    Example:
        >>> from langchain_specprefill import ChatSpecPrefill
        >>> chat = ChatSpecPrefill(keep_rate=0.3, max_tokens=64)
        >>> answer = chat.invoke([("system", "Answer briefly."), ("human", long_document + "\n\nQuestion: ...")])
        >>> answer.response_metadata["specprefill"]["keep_ratio"], answer.usage_metadata["input_tokens"]

    """

    model: str | None = Field(default=None, alias="model_name")
    """Base model: in process, an embedded name (default ``"smollm2-135m"``), a folder, ``.gguf`` file or hub
    id; with ``base_url``, the served model name (None: the first one ``/v1/models`` lists)."""

    speculator: str | Speculator | None = None
    """The speculator that scores prompt tokens in this process: an embedded name, folder, hub id, or a loaded
    :class:`~specprefill.speculator.base.Speculator` (None: ``"smollm2-135m"`` in process; with ``base_url``, None
    means server mode, where the server's speculator prunes). Ignored when ``engine`` is given."""

    engine: SpecPrefillEngine | None = Field(default=None, exclude=True)
    """A ready engine (any base backend, e.g. in-process vLLM). Overrides ``model``, ``speculator`` and
    ``base_url``; its config is the starting point for the pruning fields below."""

    base_url: str | None = None
    """Root of an OpenAI-compatible API including ``/v1``; when set, the base model is that server (and
    without a ``speculator``, that server prunes too: server mode)."""

    api_key: SecretStr | None = None
    """API key for ``base_url`` (None: ``$OPENAI_API_KEY``, else ``"EMPTY"`` as local servers expect)."""

    timeout: float | None = Field(default=DEFAULT_TIMEOUT, gt=0)
    """Seconds ``base_url`` may stay silent (connect, or between bytes of the answer) before a request
    fails; None waits forever."""

    request_timeout: float | None = Field(default=DEFAULT_REQUEST_TIMEOUT, gt=0)
    """Overall deadline of one request to ``base_url`` in seconds, retries and a slowly trickling stream
    included; None: no overall deadline. Not applied in server mode (``timeout`` bounds each attempt there)."""

    max_retries: int = Field(default=2, ge=0)
    """Retries of failed requests to ``base_url`` (connection errors, 429, 5xx), inside ``request_timeout``."""

    max_cached_engines: int = Field(default=8, ge=1)
    """Engines kept for per-call ``model=`` names (least recently used dropped first)."""

    device: str = "cpu"
    """torch device for models loaded in process."""

    dtype: str | None = None
    """torch dtype name for models loaded in process (None: bfloat16)."""

    keep_rate: float | None = None
    """Fraction of prunable chunks to keep, in (0, 1] (None: the config's value, 0.3 by default)."""

    max_kept_tokens: int | None = None
    """Absolute cap on kept unprotected tokens (None: the config's value)."""

    min_prompt_tokens: int | None = None
    """Prompts shorter than this many speculator tokens are not pruned (None: the config's value, 256)."""

    config: SpecPrefillConfig | None = None
    """Further pruning settings; only the fields set explicitly override the engine's config."""

    temperature: float | None = 0.0
    """Sampling temperature; 0 (or None) decodes greedily."""

    max_tokens: int = Field(default=256, ge=1, alias="max_new_tokens")
    """Most tokens to generate."""

    top_p: float = 1.0
    """Nucleus sampling mass."""

    seed: int | None = None
    """Sampling seed."""

    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Default stop strings (a call's ``stop`` replaces them)."""

    streaming: bool = False
    """Stream internally in ``invoke`` (callbacks then get every token)."""

    _engine: SpecPrefillEngine | None = PrivateAttr(default=None)
    _extra_engines: EngineLRU = PrivateAttr(default_factory=EngineLRU)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _server_chat: SpecPrefillServerChat | None = PrivateAttr(default=None)

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _check_setup(self) -> Self:
        if self.engine is not None and self.base_url is not None:
            raise ValueError("give either engine=... or base_url=..., not both")
        if self.engine is not None and not isinstance(self.engine, SpecPrefillEngine):
            raise ValueError(f"engine must be a SpecPrefillEngine, got {type(self.engine).__name__}")
        if self.server_mode:
            server_call_kwargs(self._pruning_overrides())  # only keep_rate / max_kept_tokens travel per request
        # Validate the pruning fields now, so a bad keep_rate fails at construction, not on the first call.
        start = self.engine.config if self.engine is not None else SpecPrefillConfig()
        start.with_overrides(**self._pruning_overrides())
        return self

    # --- LangChain identity ---------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "specprefill-chat"

    @property
    def model_label(self) -> str:
        """Name of the base model, without loading anything or contacting a server."""
        if self.engine is not None:
            base = self.engine.base
            return base.model_name or base.kind
        if self.model:
            return self.model
        return DEFAULT_MODEL if self.base_url is None else "default"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        if self.engine is not None:
            speculator = self.engine.speculator_name
        else:
            speculator = "server" if self.server_mode else _speculator_label(self.speculator or DEFAULT_MODEL)
        return {
            "model_name": self.model_label,
            "speculator": speculator,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "pruning": self._pruning_overrides(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="specprefill",
            ls_model_name=str(kwargs.get("model") or self.model_label),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, (int, float)):
            params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # --- engine ---------------------------------------------------------------------------------------
    def get_engine(self) -> SpecPrefillEngine:
        """The engine behind this chat model, built (and its models loaded) on first use.

        Returns:
            The :class:`~specprefill.engine.SpecPrefillEngine` given as ``engine``, or the one built from
            ``model`` / ``speculator`` / ``base_url``.

        Raises:
            ModelLoadError: A model cannot be loaded.
            ConfigurationError: Server mode, which has no engine in this process (see :meth:`server_chat`).

        """
        if self.server_mode:
            raise ConfigurationError("in server mode the server prunes and generates; use server_chat()")
        if self.engine is not None:
            return self.engine
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._build_engine()
        return self._engine

    def _build_engine(self) -> SpecPrefillEngine:
        speculator = self.speculator or DEFAULT_MODEL
        if self.base_url is not None:
            return SpecPrefillEngine(speculator, self._openai_backend(self.model))
        from specprefill.engine.factory import load_engine

        return load_engine(speculator, base=self.model or DEFAULT_MODEL, device=self.device, dtype=self.dtype)

    def _openai_backend(self, model: str | None) -> BaseBackend:
        from specprefill.backends.openai import OpenAIBackend

        return OpenAIBackend(
            model,
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key is not None else None,
            timeout=self.timeout,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
        )

    def _engine_for(self, model: str | None) -> SpecPrefillEngine:
        """The engine for a call, honouring a per-call ``model=`` (only possible with ``base_url``)."""
        main = self.get_engine()
        if model is None or model == self.model_label:
            return main
        if self.engine is not None or self.base_url is None:
            raise ConfigurationError(
                f"model={model!r} per call needs an OpenAI-compatible server (base_url=...); this chat model "
                f"runs {self.model_label!r} in process. Build another ChatSpecPrefill for another model."
            )
        return self._extra_engines.get(
            model,
            lambda: SpecPrefillEngine(main.speculator, self._openai_backend(model), main.config),
            self.max_cached_engines,
        )

    async def _aengine_for(self, model: str | None) -> SpecPrefillEngine:
        if self.engine is None and self._engine is None:
            # First call: loading weights takes seconds, keep the event loop free meanwhile.
            await asyncio.to_thread(self.get_engine)
        return await asyncio.to_thread(self._engine_for, model) if model is not None else self.get_engine()

    # --- call preparation -----------------------------------------------------------------------------
    def _pruning_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if self.config is not None:
            overrides.update({name: getattr(self.config, name) for name in self.config.model_fields_set})
        for name in ("keep_rate", "max_kept_tokens", "min_prompt_tokens"):
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        return overrides

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> ChatCall:
        call_kwargs, options = engine_kwargs(self._defaults(), stop, kwargs)
        return ChatCall(self._engine_for(options.get("model")), chat_prompt(messages, options), call_kwargs)

    async def _aprepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> ChatCall:
        call_kwargs, options = engine_kwargs(self._defaults(), stop, kwargs)
        return ChatCall(await self._aengine_for(options.get("model")), chat_prompt(messages, options), call_kwargs)

    def _defaults(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop) if self.stop else None,
            **self._pruning_overrides(),
        }

    # --- generation -----------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.server_mode:
            return self.server_chat()._generate(messages, stop, run_manager, **server_call_kwargs(kwargs))
        call = self._prepare(messages, stop, kwargs)
        result = call.engine.generate(call.prompt, **call.kwargs)
        return chat_result(result, self.model_label)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.server_mode:
            server = await self.aserver_chat()
            return await server._agenerate(messages, stop, run_manager, **server_call_kwargs(kwargs))
        call = await self._aprepare(messages, stop, kwargs)
        result = await call.engine.agenerate(call.prompt, **call.kwargs)
        return chat_result(result, self.model_label)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.server_mode:
            yield from self.server_chat()._stream(messages, stop, run_manager, **server_call_kwargs(kwargs))
            return
        call = self._prepare(messages, stop, kwargs)
        for piece in call.engine.stream(call.prompt, **call.kwargs):
            chunk = result_chunk(piece.text, piece.result, self.model_label)
            if chunk is None:
                continue
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.server_mode:
            server = await self.aserver_chat()
            async for server_chunk in server._astream(messages, stop, run_manager, **server_call_kwargs(kwargs)):
                yield server_chunk
            return
        call = await self._aprepare(messages, stop, kwargs)
        async for piece in call.engine.astream(call.prompt, **call.kwargs):
            chunk = result_chunk(piece.text, piece.result, self.model_label)
            if chunk is None:
                continue
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _speculator_label(speculator: str | Speculator) -> str:
    return speculator if isinstance(speculator, str) else speculator.name
