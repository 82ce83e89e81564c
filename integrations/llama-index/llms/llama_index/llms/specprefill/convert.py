"""Conversions of :class:`~llama_index.llms.specprefill.SpecPrefillLLM`: LlamaIndex messages in, responses out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole

from specprefill.engine import EngineResult
from specprefill.errors import PromptError
from specprefill.result import STATS_KEY, Message

__all__ = ["chat_response", "completion_response", "to_messages", "user_chat", "user_message"]

_ASSISTANT_ROLES = frozenset({MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL})


def to_messages(messages: Sequence[ChatMessage]) -> list[Message]:
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


def user_chat(prompt: str) -> list[ChatMessage]:
    """``prompt`` as the one user message of a LlamaIndex conversation."""
    return [ChatMessage(role=MessageRole.USER, content=prompt)]


def user_message(prompt: str) -> list[Message]:
    """``prompt`` as the one user message of a conversation."""
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


def chat_response(text: str, delta: str, result: EngineResult | None) -> ChatResponse:
    """A chat response; the one with the engine ``result`` (last) carries usage and stats."""
    extra, raw = _extras(result)
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
        delta=delta,
        raw=raw,
        additional_kwargs=extra,
    )


def completion_response(text: str, delta: str, result: EngineResult | None) -> CompletionResponse:
    """A completion response; the one with the engine ``result`` (last) carries usage and stats."""
    extra, raw = _extras(result)
    return CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=extra)
