"""``ChatSpecPrefill``: a LangChain chat model whose prompts are pruned by a speculator before the base prefill.

The adapter only moves data between LangChain and :class:`specprefill.engine.SpecPrefillEngine`: messages go
in as chat dicts (the speculator protects the chat template, the system prompt and the end of the final user
message), the engine prunes and generates, and its numbers come back as ``usage_metadata`` and a
``response_metadata["specprefill"]`` block.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from specprefill.config import SpecPrefillConfig
from specprefill.engine import EngineResult, SpecPrefillEngine
from specprefill.speculator import Speculator

if TYPE_CHECKING:
    from specprefill.backends.base import BaseBackend

__all__ = ["DEFAULT_MODEL", "ChatSpecPrefill"]

DEFAULT_MODEL = "smollm2-135m"
"""The packaged embedded model (SmolLM2-135M-Instruct): default speculator, and default base in process."""

_GENERATION_KEYS = frozenset({"max_tokens", "max_new_tokens", "temperature", "top_p", "seed"})
_CALL_KEYS = frozenset({"model", "protected_spans", "response_format"})
_STRUCTURED_METHODS = ("json_schema", "json_mode", "function_calling")


@dataclass
class _Call:
    """One call's arguments, split for :meth:`SpecPrefillEngine.generate`."""

    engine: SpecPrefillEngine
    prompt: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


class ChatSpecPrefill(BaseChatModel):
    r"""Chat model with Speculative Prefill: a small speculator prunes the prompt, the base prefills what is kept.

    Three ways to build it (none loads a model at construction; weights load on the first call):

    - In process, transformers base (default): ``ChatSpecPrefill(model="smollm2-135m")``. ``model`` is the
      base (an embedded name, a transformers folder, a ``.gguf`` file or a hub id); ``speculator`` the
      scorer. When both name the same model, its weights are loaded once and shared.
    - OpenAI-compatible server (vLLM, llama.cpp, TGI, ...): ``ChatSpecPrefill(base_url="http://host:8000/v1",
      model="served-name", api_key=...)``. The speculator still runs in this process; kept tokens go to the
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

    Tool calling is not supported: :meth:`bind_tools` raises ``NotImplementedError`` (neither base path has a
    tool channel; see its docstring). Structured output works by prompting: :meth:`with_structured_output`
    puts the JSON schema into the (protected) system prompt and parses the JSON answer.

    Example:
        >>> from langchain_specprefill import ChatSpecPrefill
        >>> chat = ChatSpecPrefill(keep_rate=0.3, max_tokens=64)
        >>> answer = chat.invoke([("system", "Answer briefly."), ("human", long_document + "\n\nQuestion: ...")])
        >>> answer.response_metadata["specprefill"]["keep_ratio"], answer.usage_metadata["input_tokens"]

    """

    model: str | None = Field(default=None, alias="model_name")
    """Base model: in process, an embedded name (default ``"smollm2-135m"``), a folder, ``.gguf`` file or hub
    id; with ``base_url``, the served model name (None: the first one ``/v1/models`` lists)."""

    speculator: str | Speculator = DEFAULT_MODEL
    """The speculator that scores prompt tokens: an embedded name, folder, hub id, or a loaded
    :class:`~specprefill.speculator.Speculator` (ignored when ``engine`` is given)."""

    engine: SpecPrefillEngine | None = Field(default=None, exclude=True)
    """A ready engine (any base backend, e.g. in-process vLLM). Overrides ``model``, ``speculator`` and
    ``base_url``; its config is the starting point for the pruning fields below."""

    base_url: str | None = None
    """Root of an OpenAI-compatible API including ``/v1``; when set, the base model is that server."""

    api_key: SecretStr | None = None
    """API key for ``base_url`` (None: ``$OPENAI_API_KEY``, else ``"EMPTY"`` as local servers expect)."""

    timeout: float | None = None
    """Seconds before a request to ``base_url`` times out (None: the backend's default of 600 s)."""

    max_retries: int = 2
    """Retries of failed requests to ``base_url``."""

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
    _extra_engines: dict[str, SpecPrefillEngine] = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _check_setup(self) -> Self:
        if self.engine is not None and self.base_url is not None:
            raise ValueError("give either engine=... or base_url=..., not both")
        if self.engine is not None and not isinstance(self.engine, SpecPrefillEngine):
            raise ValueError(f"engine must be a SpecPrefillEngine, got {type(self.engine).__name__}")
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
            return str(getattr(base, "model_name", None) or getattr(base, "_model", None) or base.name)
        if self.model:
            return self.model
        return DEFAULT_MODEL if self.base_url is None else "default"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        speculator = self.engine.speculator_name if self.engine is not None else _speculator_label(self.speculator)
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

        """
        if self.engine is not None:
            return self.engine
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._build_engine()
        return self._engine

    def _build_engine(self) -> SpecPrefillEngine:
        if self.base_url is not None:
            return SpecPrefillEngine(self.speculator, self._openai_backend(self.model))
        from specprefill.backends.transformers import TransformersBackend
        from specprefill.models import load_speculator

        base_name = self.model or DEFAULT_MODEL
        speculator = self.speculator
        if isinstance(speculator, str) and _same_model(speculator, base_name):
            # One model as both speculator and base: load the weights once and share them.
            speculator = load_speculator(speculator, device=self.device, dtype=self.dtype)
        shared_model = getattr(speculator, "model", None)
        tokenizer = getattr(speculator, "tokenizer", None)
        base: BaseBackend
        if isinstance(speculator, Speculator) and shared_model is not None and _same_model(speculator.name, base_name):
            base = TransformersBackend(shared_model, tokenizer, name=base_name)
        else:
            base = TransformersBackend.from_pretrained(base_name, device=self.device, dtype=self.dtype)
        return SpecPrefillEngine(speculator, base)

    def _openai_backend(self, model: str | None) -> BaseBackend:
        from specprefill.backends.openai import OpenAIBackend

        return OpenAIBackend(
            model,
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key is not None else None,
            timeout=self.timeout if self.timeout is not None else 600.0,
            max_retries=self.max_retries,
        )

    def _engine_for(self, model: str | None) -> SpecPrefillEngine:
        """The engine for a call, honouring a per-call ``model=`` (only possible with ``base_url``)."""
        main = self.get_engine()
        if model is None or model == self.model_label:
            return main
        if self.engine is not None or self.base_url is None:
            raise ValueError(
                f"model={model!r} per call needs an OpenAI-compatible server (base_url=...); this chat model "
                f"runs {self.model_label!r} in process. Build another ChatSpecPrefill for another model."
            )
        with self._lock:
            engine = self._extra_engines.get(model)
            if engine is None:
                engine = SpecPrefillEngine(main.speculator, self._openai_backend(model), main.config)
                self._extra_engines[model] = engine
        return engine

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

    def _split_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split call kwargs into engine kwargs and adapter options (``model``, ``response_format``)."""
        stops = stop if stop is not None else self.stop
        engine_kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_tokens,
            "temperature": float(self.temperature or 0.0),
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(stops) if stops else None,
            **self._pruning_overrides(),
        }
        options: dict[str, Any] = {}
        config_fields = SpecPrefillConfig.model_fields
        unknown = []
        for key, value in kwargs.items():
            if key in ("max_tokens", "max_new_tokens"):
                engine_kwargs["max_new_tokens"] = value if value is not None else self.max_tokens
            elif key == "temperature":
                engine_kwargs["temperature"] = float(value or 0.0)
            elif key in _GENERATION_KEYS or key in config_fields:
                engine_kwargs[key] = value
            elif key == "protected_spans":
                engine_kwargs["protected_spans"] = list(value or ())
            elif key in _CALL_KEYS:
                options[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise TypeError(
                f"ChatSpecPrefill got unexpected argument(s) {sorted(unknown)}; accepted per call: "
                f"{sorted(_GENERATION_KEYS | _CALL_KEYS)} and the SpecPrefillConfig fields {sorted(config_fields)}"
            )
        return engine_kwargs, options

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        engine_kwargs, options = self._split_kwargs(stop, kwargs)
        prompt = to_chat_dicts(messages)
        if options.get("response_format"):
            prompt = _with_instruction(prompt, json_instruction(options["response_format"]))
        return _Call(self._engine_for(options.get("model")), prompt, engine_kwargs)

    async def _aprepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        engine_kwargs, options = self._split_kwargs(stop, kwargs)
        prompt = to_chat_dicts(messages)
        if options.get("response_format"):
            prompt = _with_instruction(prompt, json_instruction(options["response_format"]))
        return _Call(await self._aengine_for(options.get("model")), prompt, engine_kwargs)

    # --- generation -----------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        result = call.engine.generate(call.prompt, **call.kwargs)
        return _chat_result(result, self.model_label)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = await self._aprepare(messages, stop, kwargs)
        result = await call.engine.agenerate(call.prompt, **call.kwargs)
        return _chat_result(result, self.model_label)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        for piece in call.engine.stream(call.prompt, **call.kwargs):
            chunk = _chunk(piece.text, piece.result, self.model_label)
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
        call = await self._aprepare(messages, stop, kwargs)
        async for piece in call.engine.astream(call.prompt, **call.kwargs):
            chunk = _chunk(piece.text, piece.result, self.model_label)
            if chunk is None:
                continue
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # --- tools and structured output ------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: ChatSpecPrefill has no tool-calling channel.

        The in-process bases (transformers, vLLM) decode plain text without a tool parser, and with an
        OpenAI-compatible server pruned prompts go to ``/v1/completions`` as token ids (or as plain chat
        messages), so tool definitions never reach the model. Use :meth:`with_structured_output` for JSON
        answers, or prune with :class:`~langchain_specprefill.SpecPrefillDocumentCompressor` in front of a
        tool-calling chat model.

        Raises:
            NotImplementedError: Always.

        """
        raise NotImplementedError(
            "ChatSpecPrefill does not support tool calling: its bases (transformers/vLLM in process, or an "
            "OpenAI-compatible server fed pruned token ids) have no tool channel. Use with_structured_output(...) "
            "for JSON answers, or SpecPrefillDocumentCompressor in front of a tool-calling chat model."
        )

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers parsed as JSON into ``schema``, by prompting (no constrained decoding).

        The JSON schema (or, for ``method="json_mode"``, just the demand for a JSON object) is added to the
        system prompt, which pruning never drops; the answer is parsed with LangChain's JSON parsers (code
        fences are tolerated). ``"function_calling"`` is accepted for compatibility and behaves like
        ``"json_schema"``, since there is no tool channel. A small base model may not produce valid JSON;
        parsing then raises ``OutputParserException`` (or, with ``include_raw=True``, reports it).

        Args:
            schema: A Pydantic class (results are instances of it), a TypedDict, or a JSON schema dict
                (results are dicts). Optional for ``method="json_mode"``.
            method: ``"json_schema"`` (schema in the prompt), ``"json_mode"`` (only "answer with a JSON
                object"; the prompt should describe the keys), or ``"function_calling"`` (as ``json_schema``).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}`` instead.
            strict: Accepted for interface compatibility; there is no server-side schema enforcement.
            **kwargs: Not supported; any extra argument raises ``ValueError``.

        Returns:
            A runnable producing the parsed answer.

        Raises:
            ValueError: Unknown ``method``, missing ``schema`` for a schema method, or extra arguments.

        """
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)} for with_structured_output")
        if method not in _STRUCTURED_METHODS:
            raise ValueError(f"method must be one of {list(_STRUCTURED_METHODS)}, got {method!r}")
        if schema is None and method != "json_mode":
            raise ValueError(f"method={method!r} needs a schema; pass one, or use method='json_mode'")
        json_schema = convert_to_json_schema(schema) if schema is not None else None
        if method == "json_mode" or json_schema is None:
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            response_format = {"type": "json_schema", "json_schema": {"schema": json_schema}}
        bind_kwargs: dict[str, Any] = {"response_format": response_format}
        if schema is not None:  # for tracing: LangChain reports the schema to callbacks
            trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
            bind_kwargs["ls_structured_output_format"] = trace
        bound = self.bind(**bind_kwargs)
        parser: Runnable[Any, Any]
        if isinstance(schema, type) and is_basemodel_subclass(schema):
            parser = PydanticOutputParser(pydantic_object=schema)
        else:
            parser = JsonOutputParser()
        if include_raw:
            parse_raw = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            no_parse = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=bound) | parse_raw.with_fallbacks([no_parse], exception_key="parsing_error")
        return bound | parser


# --- message conversion -------------------------------------------------------------------------------
def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as ``{"role", "content"}`` dicts (OpenAI format, text content as one string).

    Args:
        messages: The conversation.

    Returns:
        Chat dicts for :meth:`SpecPrefillEngine.generate`; non-text content parts are kept as parts, which
        the speculator then rejects with a clear :class:`~specprefill.PromptError`.

    """
    return list(convert_to_openai_messages(list(messages), text_format="string"))


def json_instruction(response_format: dict[str, Any]) -> str:
    """The system-prompt instruction that asks for JSON matching an OpenAI-style ``response_format``.

    Args:
        response_format: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
            {"schema": {...}}}``.

    Returns:
        The instruction text.

    Raises:
        ValueError: Unknown ``response_format`` type.

    """
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond with a single JSON object and nothing else."
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec) if isinstance(spec, dict) else spec
        return (
            "Respond with a single JSON object that conforms to this JSON schema, and nothing else:\n"
            + json.dumps(schema, ensure_ascii=False)
        )
    raise ValueError(f"response_format type must be 'json_object' or 'json_schema', got {kind!r}")


def _with_instruction(prompt: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    if prompt and prompt[0].get("role") == "system" and isinstance(prompt[0].get("content"), str):
        first = prompt[0]
        joined = f"{first['content']}\n\n{instruction}" if first["content"].strip() else instruction
        return [{**first, "content": joined}, *prompt[1:]]
    return [{"role": "system", "content": instruction}, *prompt]


# --- results ------------------------------------------------------------------------------------------
def _speculator_label(speculator: str | Speculator) -> str:
    return speculator if isinstance(speculator, str) else speculator.name


def _same_model(a: str, b: str) -> bool:
    from specprefill.models import EMBEDDED_MODELS

    aliases = {"default": DEFAULT_MODEL, "embedded": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL}

    def canonical(name: str) -> str:
        key = name.strip().lower()
        key = aliases.get(key, key)
        return key if key in EMBEDDED_MODELS else name

    return canonical(a) == canonical(b)


def _metadata(result: EngineResult, model_label: str) -> tuple[UsageMetadata, dict[str, Any]]:
    stats = result.stats
    usage = UsageMetadata(
        input_tokens=stats.base_prompt_tokens,
        output_tokens=stats.completion_tokens,
        total_tokens=stats.base_prompt_tokens + stats.completion_tokens,
    )
    response_metadata = {
        "model_name": stats.base_model or model_label,
        "model_provider": "specprefill",
        "finish_reason": result.finish_reason,
        "specprefill": stats.to_dict(),
    }
    return usage, response_metadata


def _chat_result(result: EngineResult, model_label: str) -> ChatResult:
    usage, response_metadata = _metadata(result, model_label)
    message = AIMessage(content=result.text, usage_metadata=usage, response_metadata=response_metadata)
    generation = ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
    return ChatResult(generations=[generation], llm_output={"model_name": response_metadata["model_name"]})


def _chunk(text: str, result: EngineResult | None, model_label: str) -> ChatGenerationChunk | None:
    if result is None:
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None
    usage, response_metadata = _metadata(result, model_label)
    message = AIMessageChunk(
        content=text, usage_metadata=usage, response_metadata=response_metadata, chunk_position="last"
    )
    return ChatGenerationChunk(message=message, generation_info={"finish_reason": result.finish_reason})
