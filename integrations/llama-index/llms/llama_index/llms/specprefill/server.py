"""Server mode of :class:`~llama_index.llms.specprefill.SpecPrefillLLM`: a vLLM server prunes, ``OpenAILike`` talks.

:class:`SpecPrefillOpenAILike` is LlamaIndex's ``OpenAILike`` with the wire contract of server-side pruning
added: ``keep_rate`` / ``max_kept_tokens`` (fields or per-call keyword arguments) travel as ``vllm_xargs``,
streams ask for the usage chunk, and the server's stats object lands in every response's
``additional_kwargs["specprefill"]``. :class:`ServerCalls` runs ``SpecPrefillLLM``'s eight endpoints on it
and refuses answers without stats (:class:`~specprefill.wire.stats.ServerStatsError`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any, TypeVar, cast

from llama_index.core.base.llms.generic_utils import (
    astream_chat_response_to_completion_response,
    chat_response_to_completion_response,
    stream_chat_response_to_completion_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.llms.openai_like import OpenAILike  # type: ignore[import-untyped]

from specprefill.result import STATS_KEY
from specprefill.wire.stats import find_stats, missing_stats_error
from specprefill.wire.xargs import SERVER_OVERRIDES, openai_call_kwargs, served_model, server_xargs, with_xargs

__all__ = ["ServerCalls", "SpecPrefillOpenAILike", "server_call_kwargs", "server_llm"]

R = TypeVar("R", ChatResponse, CompletionResponse)


class SpecPrefillOpenAILike(OpenAILike):  # type: ignore[misc]
    """``OpenAILike`` (chat API) for a vLLM server that prunes prompts with Speculative Prefill."""

    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0, description="Keep rate sent per request.")
    max_kept_tokens: int | None = Field(default=None, ge=1, description="Kept-token cap sent per request.")

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised LlamaIndex components."""
        return "SpecPrefillOpenAILike"

    def _get_model_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        overrides = {name: kwargs.pop(name, getattr(self, name)) for name in SERVER_OVERRIDES}
        out: dict[str, Any] = super()._get_model_kwargs(**kwargs)
        body = with_xargs(out.get("extra_body"), server_xargs(caller="SpecPrefillLLM", **overrides))
        if body is not None:
            out["extra_body"] = body
        if out.get("stream"):
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        return out

    def _get_response_token_counts(self, raw_response: Any) -> dict[str, Any]:
        counts: dict[str, Any] = super()._get_response_token_counts(raw_response)
        body = raw_response if isinstance(raw_response, Mapping) else getattr(raw_response, "model_extra", None)
        stats = find_stats(body or {}, source=self.api_base)
        if stats is not None:
            counts[STATS_KEY] = stats
        for choice in getattr(raw_response, "choices", None) or ():
            if getattr(choice, "finish_reason", None):
                counts["finish_reason"] = choice.finish_reason
        return counts


def server_call_kwargs(defaults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """One call's keyword arguments for :class:`SpecPrefillOpenAILike` (``max_new_tokens`` -> ``max_tokens``).

    Args:
        defaults: The LLM's generation and pruning defaults (``max_new_tokens`` or ``max_tokens``).
        kwargs: The call's keyword arguments.

    Raises:
        ConfigurationError: ``protected_spans`` or a pruning setting only the server decides.

    """
    caller = "SpecPrefillLLM"
    merged = {**openai_call_kwargs(defaults, caller=caller), **openai_call_kwargs(kwargs, caller=caller)}
    return {key: value for key, value in merged.items() if value is not None}


def _with_raw_dict(response: R) -> R:
    """``response`` with ``raw`` as the server's JSON (a dict: ``raw["specprefill"]`` is the stats object)."""
    dump = getattr(response.raw, "model_dump", None)
    if dump is not None:
        response.raw = dump()
    return response


def server_llm(base_url: str, model: str | None, api_key: str | None, **fields: Any) -> SpecPrefillOpenAILike:
    """The ``OpenAILike`` client of server mode (``model=None``: the first one ``/v1/models`` lists).

    Args:
        base_url: API root including ``/v1``.
        model: Served model name.
        api_key: API key (None: ``$OPENAI_API_KEY``, else ``"EMPTY"``).
        **fields: Other :class:`SpecPrefillOpenAILike` fields (``timeout``, ``max_retries``, ``keep_rate``, ...).

    """
    key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    name = model or served_model(base_url, key, fields.get("timeout"))
    return SpecPrefillOpenAILike(
        model=name, api_base=base_url, api_key=key, is_chat_model=True, max_tokens=None, **fields
    )


class ServerCalls:
    """``SpecPrefillLLM``'s endpoints on a :class:`SpecPrefillOpenAILike` (no callbacks: the caller has them)."""

    def __init__(self, llm: SpecPrefillOpenAILike) -> None:
        self.llm = llm

    def _checked(self, response: R) -> R:
        if STATS_KEY not in response.additional_kwargs:
            raise missing_stats_error(self.llm.api_base)
        return _with_raw_dict(response)

    def _checked_stream(self, responses: Generator[R, None, None]) -> Generator[R, None, None]:
        seen = False
        for response in responses:
            seen = seen or STATS_KEY in response.additional_kwargs
            yield _with_raw_dict(response)
        if not seen:
            raise missing_stats_error(self.llm.api_base)

    async def _achecked_stream(self, responses: AsyncGenerator[R, None]) -> AsyncGenerator[R, None]:
        seen = False
        async for response in responses:
            seen = seen or STATS_KEY in response.additional_kwargs
            yield _with_raw_dict(response)
        if not seen:
            raise missing_stats_error(self.llm.api_base)

    def chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        """A chat answer with the stats in ``additional_kwargs``."""
        return self._checked(cast(ChatResponse, self.llm._chat(messages, **kwargs)))

    def complete(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CompletionResponse:
        """:meth:`chat` as a completion (``complete`` sends its prompt as a user message)."""
        return chat_response_to_completion_response(self.chat(messages, kwargs))

    def stream_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        """Streamed chat; the usage response at the end carries the stats."""
        return self._checked_stream(cast(ChatResponseGen, self.llm._stream_chat(messages, **kwargs)))

    def stream_complete(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CompletionResponseGen:
        """:meth:`stream_chat` as completions."""
        return stream_chat_response_to_completion_response(self.stream_chat(messages, kwargs))

    async def achat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        """Async :meth:`chat`."""
        return self._checked(cast(ChatResponse, await self.llm._achat(messages, **kwargs)))

    async def acomplete(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CompletionResponse:
        """Async :meth:`complete`."""
        return chat_response_to_completion_response(await self.achat(messages, kwargs))

    async def astream_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`."""
        return self._achecked_stream(cast(ChatResponseAsyncGen, await self.llm._astream_chat(messages, **kwargs)))

    async def astream_complete(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        return astream_chat_response_to_completion_response(await self.astream_chat(messages, kwargs))
