"""Server mode of :class:`~langchain_specprefill.ChatSpecPrefill`: the vLLM server prunes, ``ChatOpenAI`` talks.

A vLLM server with the specprefill plugin and a speculator prunes every prompt it renders (chat template,
tools and structured outputs included), so the client only sends the full prompt plus per-request overrides
and reads the stats back. :class:`SpecPrefillServerChat` is langchain-openai's ``ChatOpenAI`` with exactly
that added; HTTP, retries, tool-call parsing, structured outputs and streaming stay ``ChatOpenAI``'s.
:class:`ServerModeMixin` routes ``ChatSpecPrefill`` to it when it was built with ``base_url=`` and no
``speculator``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.tools import BaseTool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, SecretStr

from specprefill.errors import ConfigurationError
from specprefill.result import STATS_KEY
from specprefill.wire.stats import find_stats, missing_stats_error
from specprefill.wire.xargs import SERVER_OVERRIDES, openai_call_kwargs, served_model, server_xargs, with_xargs

from .structured import JsonByPromptMixin

__all__ = ["ServerModeMixin", "SpecPrefillServerChat", "server_call_kwargs"]


class SpecPrefillServerChat(ChatOpenAI):
    """``ChatOpenAI`` for a vLLM server that prunes prompts with Speculative Prefill.

    Adds the per-request overrides ``keep_rate`` / ``max_kept_tokens`` (fields, or keyword arguments of a
    call) as ``vllm_xargs``, asks for usage on streams, and puts the server's stats object into
    ``response_metadata["specprefill"]`` (streaming: on the usage chunk, so the merged message has it).
    An answer without a valid stats object raises :class:`~specprefill.wire.stats.ServerStatsError`.
    """

    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Keep rate sent with every request (None: the server's default; 1.0 turns pruning off)."""

    max_kept_tokens: int | None = Field(default=None, ge=1)
    """Cap on kept tokens sent with every request (None: the server's default)."""

    stream_usage: bool | None = True
    """Ask for the usage chunk on streams: the server puts its stats on it."""

    @property
    def stats_source(self) -> str:
        """The server named in error messages."""
        return self.openai_api_base or "the OpenAI-compatible server"

    def _get_request_payload(
        self, input_: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        overrides = {name: kwargs.pop(name, getattr(self, name)) for name in SERVER_OVERRIDES}
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        body = with_xargs(payload.get("extra_body"), server_xargs(caller="ChatSpecPrefill", **overrides))
        if body is None:
            payload.pop("extra_body", None)
        else:
            payload["extra_body"] = body
        return payload

    def _create_chat_result(
        self, response: dict[str, Any] | Any, generation_info: dict[str, Any] | None = None
    ) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        body = response if isinstance(response, Mapping) else (getattr(response, "model_extra", None) or {})
        stats = find_stats(body, source=self.stats_source)
        if stats is not None:
            for generation in result.generations:
                generation.message.response_metadata[STATS_KEY] = stats
            result.llm_output = {**(result.llm_output or {}), STATS_KEY: stats}
        return result

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict[str, Any], default_chunk_class: type, base_generation_info: dict[str, Any] | None
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        stats = find_stats(chunk, source=self.stats_source)
        if stats is not None:
            if generation is None:
                generation = ChatGenerationChunk(message=default_chunk_class(content=""))
            generation.message.response_metadata[STATS_KEY] = stats
        return generation

    def _require_stats(self, result: ChatResult) -> ChatResult:
        if any(STATS_KEY not in g.message.response_metadata for g in result.generations):
            raise missing_stats_error(self.stats_source)
        return result

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        return self._require_stats(super()._generate(*args, **kwargs))

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        return self._require_stats(await super()._agenerate(*args, **kwargs))

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        seen = False
        for chunk in super()._stream(*args, **kwargs):
            seen = _stats_once(chunk, seen)
            yield chunk
        if not seen:
            raise missing_stats_error(self.stats_source)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        seen = False
        async for chunk in super()._astream(*args, **kwargs):
            seen = _stats_once(chunk, seen)
            yield chunk
        if not seen:
            raise missing_stats_error(self.stats_source)


def _stats_once(chunk: ChatGenerationChunk, seen: bool) -> bool:
    """Whether a stream has carried stats, with ``chunk``; later copies are dropped from ``chunk``.

    A server may repeat the object (finish-reason chunk and usage chunk); LangChain merges chunks by
    concatenating strings, so a second copy would turn ``"original"`` into ``"originaloriginal"``.
    """
    if STATS_KEY not in chunk.message.response_metadata:
        return seen
    if seen:
        del chunk.message.response_metadata[STATS_KEY]
    return True


def server_call_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A ``ChatSpecPrefill`` call's keyword arguments for :class:`SpecPrefillServerChat` (OpenAI names).

    Raises:
        ConfigurationError: ``protected_spans`` or another pruning setting, which only the server decides.

    """
    return openai_call_kwargs(kwargs, caller="ChatSpecPrefill")


class ServerModeMixin(JsonByPromptMixin):
    """``ChatSpecPrefill``'s server mode: a lazily built :class:`SpecPrefillServerChat` does the work."""

    if TYPE_CHECKING:
        base_url: str | None
        speculator: Any
        model: str | None
        _server_chat: SpecPrefillServerChat | None
        api_key: SecretStr | None
        timeout: float | None
        max_retries: int
        temperature: float | None
        max_tokens: int
        top_p: float
        seed: int | None
        stop: list[str] | None

        def _pruning_overrides(self) -> dict[str, Any]: ...

    @property
    def server_mode(self) -> bool:
        """True when a specprefill server prunes (``base_url`` given and no ``speculator`` in this process)."""
        return self.base_url is not None and self.speculator is None

    def server_settings(self) -> dict[str, Any]:
        """:class:`SpecPrefillServerChat` fields from this model's: generation and pruning defaults."""
        overrides = self._pruning_overrides()
        return {
            "api_key": self.api_key.get_secret_value() if self.api_key is not None else None,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            **{name: overrides.get(name) for name in SERVER_OVERRIDES},
        }

    def server_chat(self) -> SpecPrefillServerChat:
        """The ``ChatOpenAI`` client of server mode, built on first use (asks ``/v1/models`` when no ``model``).

        Raises:
            ConfigurationError: Not in server mode, or the server lists no model.

        """
        if not self.server_mode or self.base_url is None:
            raise ConfigurationError("server_chat() is for server mode: base_url=... and no speculator")
        if self._server_chat is None:
            settings = self.server_settings()
            api_key = settings["api_key"] or os.environ.get("OPENAI_API_KEY") or "EMPTY"
            model = self.model or served_model(self.base_url, api_key, settings["timeout"])
            self._server_chat = SpecPrefillServerChat(
                **{**settings, "model": model, "base_url": self.base_url, "api_key": api_key}
            )
        return self._server_chat

    async def aserver_chat(self) -> SpecPrefillServerChat:
        """:meth:`server_chat` without blocking the event loop on the first (``/v1/models``) call."""
        if self._server_chat is not None:
            return self._server_chat
        return await asyncio.to_thread(self.server_chat)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """In server mode: tools formatted by ``ChatOpenAI.bind_tools`` and sent to the server.

        The server renders them into the prompt, protects them from pruning, and parses tool calls; the
        result is this chat model bound with ``tools`` (and ``tool_choice``). Without a server, raises
        ``NotImplementedError`` (see :class:`~langchain_specprefill.structured.JsonByPromptMixin`).
        """
        if not self.server_mode:
            return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)
        binding = self.server_chat().bind_tools(tools, tool_choice=tool_choice, **kwargs)
        if not isinstance(binding, RunnableBinding):  # ChatOpenAI.bind_tools returns self.bind(...)
            raise TypeError(f"unexpected result of ChatOpenAI.bind_tools: {type(binding).__name__}")
        bound: Runnable[LanguageModelInput, AIMessage] = RunnableBinding(
            bound=cast(Runnable[LanguageModelInput, AIMessage], self), kwargs=dict(binding.kwargs)
        )
        return bound

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """In server mode, ``ChatOpenAI.with_structured_output`` through the server.

        With ``method="json_schema"`` vLLM's structured outputs constrain the answer; the raw message still
        carries the stats. Without a server, JSON by prompting (see
        :class:`~langchain_specprefill.structured.JsonByPromptMixin`).
        """
        if not self.server_mode:
            return super().with_structured_output(
                schema, method=method, include_raw=include_raw, strict=strict, **kwargs
            )
        runnable: Runnable[LanguageModelInput, dict[str, Any] | BaseModel] = self.server_chat().with_structured_output(
            schema, method=method, include_raw=include_raw, strict=strict, **kwargs
        )
        return runnable
