"""``SpecPrefillLLM``: a LlamaIndex chat LLM whose prompts are pruned by a speculator before the base prefill.

It wraps a :class:`~specprefill.engine.SpecPrefillEngine` (any base backend: transformers, an OpenAI-compatible
server, vLLM) and speaks LlamaIndex's chat contract natively: messages go to the engine as messages, so the
chat template, the system prompt and the end of the final user message are protected from pruning. Every
response carries the pruning statistics in ``additional_kwargs["specprefill"]`` and the base token usage
in ``additional_kwargs["prompt_tokens"]`` / ``["completion_tokens"]`` (read by LlamaIndex token counters).
"""

from __future__ import annotations

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
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import LLM

from specprefill.backends.openai import DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT
from specprefill.callargs import split_call_kwargs
from specprefill.config import SpecPrefillConfig
from specprefill.engine import EngineResult, SpecPrefillEngine
from specprefill.errors import ConfigurationError, PromptError
from specprefill.result import STATS_KEY, Message
from specprefill.speculator import Speculator

__all__ = ["STATS_KEY", "SpecPrefillLLM"]

"""Key of the pruning statistics (:meth:`EngineStats.to_dict <specprefill.engine.EngineStats.to_dict>`) in
a response's ``additional_kwargs`` and ``raw``."""

_ASSISTANT_ROLES = frozenset({MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL})


class SpecPrefillLLM(LLM):
    """A LlamaIndex chat LLM over Speculative Prefill: the speculator prunes, the base model generates.

    Give it a ready :class:`~specprefill.engine.SpecPrefillEngine`, or the address of an OpenAI-compatible
    server (vLLM, llama.cpp, TGI, ...) as ``base_url`` (and ``model``) to build one with an
    :class:`~specprefill.backends.openai.OpenAIBackend`. All eight endpoints are implemented; the async ones
    are natively async (``engine.agenerate`` / ``engine.astream``). ``complete`` sends the prompt as one user
    message.

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
        speculator: Speculator (instance or name) for ``base_url``; loaded on first use.
        config: Pruning settings for the engine built for ``base_url``.
        timeout: Seconds ``base_url`` may stay silent during one attempt (None: no limit).
        request_timeout: Overall seconds per request to ``base_url``, retries and the streamed answer
            included (None: no limit).
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

    _engine: SpecPrefillEngine = PrivateAttr()

    def __init__(
        self,
        engine: SpecPrefillEngine | None = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        speculator: Speculator | str = "smollm2-135m",
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
        fields: dict[str, Any] = {"model": name, "context_window": context_window, **kwargs}
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid SpecPrefillLLM settings: {exc}") from exc
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised LlamaIndex components."""
        return "SpecPrefillLLM"

    @property
    def engine(self) -> SpecPrefillEngine:
        """The engine that prunes and generates."""
        return self._engine

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
        result = self._engine.generate(_to_messages(messages), **self._call_args(kwargs))
        return _chat_response(result.text, result.text, result)

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
        result = self._engine.generate(_user(prompt), **self._call_args(kwargs))
        return _completion_response(result.text, result.text, result)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, streamed; the last response carries the statistics."""
        prompt = _to_messages(messages)
        args = self._call_args(kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in self._engine.stream(prompt, **args):
                text += chunk.text
                yield _chat_response(text, chunk.text, chunk.result)

        return gen()

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, streamed; the last response carries the statistics."""
        messages = _user(prompt)
        args = self._call_args(kwargs)

        def gen() -> CompletionResponseGen:
            text = ""
            for chunk in self._engine.stream(messages, **args):
                text += chunk.text
                yield _completion_response(text, chunk.text, chunk.result)

        return gen()

    # --- async endpoints ----------------------------------------------------------------------------
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat` (``engine.agenerate``)."""
        result = await self._engine.agenerate(_to_messages(messages), **self._call_args(kwargs))
        return _chat_response(result.text, result.text, result)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete` (``engine.agenerate``)."""
        result = await self._engine.agenerate(_user(prompt), **self._call_args(kwargs))
        return _completion_response(result.text, result.text, result)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat` (``engine.astream``)."""
        prompt = _to_messages(messages)
        args = self._call_args(kwargs)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for chunk in self._engine.astream(prompt, **args):
                text += chunk.text
                yield _chat_response(text, chunk.text, chunk.result)

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete` (``engine.astream``)."""
        messages = _user(prompt)
        args = self._call_args(kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for chunk in self._engine.astream(messages, **args):
                text += chunk.text
                yield _completion_response(text, chunk.text, chunk.result)

        return gen()

    # --- helpers ------------------------------------------------------------------------------------
    def _call_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine keyword arguments: this LLM's defaults, overridden by the call's ``kwargs``."""
        args: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop) or None,
            "seed": self.seed,
            "keep_rate": self.keep_rate,
            "max_kept_tokens": self.max_kept_tokens,
        }
        rest = dict(kwargs)
        spans = rest.pop("protected_spans", None)
        generation, overrides = split_call_kwargs(rest, caller="SpecPrefillLLM")
        args.update(generation)
        args.update(overrides)
        if spans is not None:
            args["protected_spans"] = spans
        return args


def _to_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex chat messages as ``{"role", "content"}`` dicts (text only)."""
    out: list[Message] = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None and message.blocks:
            raise PromptError(
                f"message {i} has no text content (only {[type(b).__name__ for b in message.blocks]}); "
                "SpecPrefillLLM prunes and sends text only"
            )
        role = "assistant" if message.role in _ASSISTANT_ROLES else message.role.value
        out.append({"role": role, "content": content or ""})
    return out


def _user(prompt: str) -> list[Message]:
    return [{"role": MessageRole.USER.value, "content": prompt}]


def _usage(result: EngineResult) -> dict[str, Any]:
    stats = result.stats
    return {
        "prompt_tokens": stats.base_prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.base_prompt_tokens + stats.completion_tokens,
    }


def _extras(result: EngineResult | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``additional_kwargs`` and ``raw`` of a response (empty for intermediate stream chunks)."""
    if result is None:
        return {}, None
    usage = _usage(result)
    stats = result.stats.to_dict()
    extra = {**usage, "finish_reason": result.finish_reason, STATS_KEY: stats}
    raw = {"text": result.text, "finish_reason": result.finish_reason, "usage": usage, STATS_KEY: stats}
    return extra, raw


def _chat_response(text: str, delta: str, result: EngineResult | None) -> ChatResponse:
    extra, raw = _extras(result)
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
        delta=delta,
        raw=raw,
        additional_kwargs=extra,
    )


def _completion_response(text: str, delta: str, result: EngineResult | None) -> CompletionResponse:
    extra, raw = _extras(result)
    return CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=extra)
