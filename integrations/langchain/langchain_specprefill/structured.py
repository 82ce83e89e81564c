"""Structured output for :class:`~langchain_specprefill.ChatSpecPrefill` by prompting (no constrained decoding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Literal, cast

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

__all__ = ["STRUCTURED_METHODS", "JsonByPromptMixin", "response_format_for", "structured_runnable"]

STRUCTURED_METHODS = ("json_schema", "json_mode", "function_calling")
"""Accepted ``method`` values; ``function_calling`` behaves like ``json_schema`` (there is no tool channel)."""


def response_format_for(schema: dict[str, Any] | type | None, method: str) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` that :func:`~langchain_specprefill.convert.json_instruction` reads.

    Raises:
        ValueError: Unknown ``method``, or a schema method without a schema.

    """
    if method not in STRUCTURED_METHODS:
        raise ValueError(f"method must be one of {list(STRUCTURED_METHODS)}, got {method!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f"method={method!r} needs a schema; pass one, or use method='json_mode'")
    json_schema = convert_to_json_schema(schema) if schema is not None else None
    if method == "json_mode" or json_schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"schema": json_schema}}


def structured_runnable(
    model: BaseChatModel,
    schema: dict[str, Any] | type | None,
    *,
    method: str,
    include_raw: bool,
    strict: bool | None,
) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
    """``model`` bound to answer in JSON, piped into the matching LangChain parser.

    Args:
        model: The chat model (its calls accept ``response_format``).
        schema: Pydantic class, TypedDict, JSON schema dict, or None (``json_mode``).
        method: One of :data:`STRUCTURED_METHODS`.
        include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of the parsed value.
        strict: Reported to tracing only (there is no server-side schema enforcement).

    Returns:
        The runnable.

    """
    bind_kwargs: dict[str, Any] = {"response_format": response_format_for(schema, method)}
    if schema is not None:  # for tracing: LangChain reports the schema to callbacks
        bind_kwargs["ls_structured_output_format"] = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    bound = model.bind(**bind_kwargs)
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


class JsonByPromptMixin:
    """``bind_tools`` (refused) and ``with_structured_output`` (by prompting) for a chat model without tools."""

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
        chat = cast(BaseChatModel, self)
        return structured_runnable(chat, schema, method=method, include_raw=include_raw, strict=strict)
