"""Conversions between LangChain and the engine: messages in, :class:`EngineResult` out, JSON instructions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from specprefill.engine import EngineResult
from specprefill.result import STATS_KEY

__all__ = ["chat_result", "json_instruction", "result_chunk", "to_chat_dicts", "with_instruction"]

"""Key of the engine statistics in ``response_metadata``."""


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
        return "Respond with a single JSON object that conforms to this JSON schema, and nothing else:\n" + json.dumps(
            schema, ensure_ascii=False
        )
    raise ValueError(f"response_format type must be 'json_object' or 'json_schema', got {kind!r}")


def with_instruction(prompt: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``prompt`` with ``instruction`` appended to its system message (or a new system message first)."""
    if prompt and prompt[0].get("role") == "system" and isinstance(prompt[0].get("content"), str):
        first = prompt[0]
        joined = f"{first['content']}\n\n{instruction}" if first["content"].strip() else instruction
        return [{**first, "content": joined}, *prompt[1:]]
    return [{"role": "system", "content": instruction}, *prompt]


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
        STATS_KEY: stats.to_dict(),
    }
    return usage, response_metadata


def chat_result(result: EngineResult, model_label: str) -> ChatResult:
    """The LangChain result of a finished engine call (usage and statistics in the metadata)."""
    usage, response_metadata = _metadata(result, model_label)
    message = AIMessage(content=result.text, usage_metadata=usage, response_metadata=response_metadata)
    generation = ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
    return ChatResult(generations=[generation], llm_output={"model_name": response_metadata["model_name"]})


def result_chunk(text: str, result: EngineResult | None, model_label: str) -> ChatGenerationChunk | None:
    """A streamed chunk (None for an empty middle piece); the last one carries usage and statistics."""
    if result is None:
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None
    usage, response_metadata = _metadata(result, model_label)
    message = AIMessageChunk(
        content=text, usage_metadata=usage, response_metadata=response_metadata, chunk_position="last"
    )
    return ChatGenerationChunk(message=message, generation_info={"finish_reason": result.finish_reason})
