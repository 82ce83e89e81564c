"""Turning a prompt (text, token ids or chat messages) into speculator tokens with protection marks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import EmptyPromptError, PromptError
from specprefill.result import Message
from specprefill.spans import Span, char_spans_to_token_mask, merge_spans

__all__ = [
    "Prompt",
    "PreparedPrompt",
    "locate_contents",
    "message_text",
    "plain_chat",
    "protection_for_messages",
    "validate_messages",
]

Prompt = str | Sequence[int] | Sequence[Message]
"""What ``Speculator.prune`` accepts: text, token ids, or chat messages."""


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as speculator tokens, with what must never be dropped."""

    input_ids: list[int]
    protected: npt.NDArray[np.bool_]
    text: str | None = None
    offsets: list[Span] | None = None
    messages: list[Message] | None = None
    content_spans: list[Span] | None = None


def message_text(message: Message) -> str:
    """The text of a message's content (a string, or a list of ``{"type": "text", "text": ...}`` parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise PromptError(
                    f"unsupported message content part {part!r}: only text parts can be pruned; "
                    "send images and other parts to the base model directly"
                )
        return "".join(parts)
    raise PromptError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def validate_messages(messages: Sequence[Any]) -> list[Message]:
    """Check chat messages and return them as plain dicts with string content.

    Raises:
        EmptyPromptError: No messages, or every message is empty.
        PromptError: A message is not a ``{"role", "content"}`` mapping.
    """
    if len(messages) == 0:
        raise EmptyPromptError("the message list is empty; pass at least one {'role': 'user', 'content': ...}")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PromptError(
                f"message {i} must be a dict with a string 'role' and a 'content', got {m!r:.80}"
            )
        out.append({**m, "content": message_text(m)})
    if not any(m["content"].strip() for m in out):
        raise EmptyPromptError("every message is empty; give the model something to read")
    return out


def locate_contents(rendered: str, contents: Sequence[str]) -> list[Span]:
    """Find each message content, in order, inside the chat-template rendering.

    Templates sometimes strip white space around contents, so a stripped match is tried too. A content
    that cannot be found gets the empty span ``(p, p)`` at the cursor (it is then treated as template).
    """
    spans: list[Span] = []
    cursor = 0
    for content in contents:
        for candidate in (content, content.strip()):
            pos = rendered.find(candidate, cursor) if candidate else -1
            if pos >= 0:
                spans.append((pos, pos + len(candidate)))
                cursor = pos + len(candidate)
                break
        else:
            spans.append((cursor, cursor))
    return spans


def protection_for_messages(
    offsets: Sequence[Span],
    text_length: int,
    messages: Sequence[Message],
    content_spans: Sequence[Span],
    config: SpecPrefillConfig,
) -> npt.NDArray[np.bool_]:
    """Protected-token mask for a rendered chat: template tokens, system prompt, and the final question."""
    n = len(offsets)
    protected = np.zeros(n, dtype=np.bool_)
    if config.protect_template:
        template = _complement(content_spans, text_length)
        protected |= char_spans_to_token_mask(offsets, template)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    for i, (m, span) in enumerate(zip(messages, content_spans, strict=True)):
        tokens = np.flatnonzero(char_spans_to_token_mask(offsets, [span]))
        if m["role"] in ("system", "developer"):
            limit = config.protect_system_tokens
            protected[tokens if limit is None else tokens[:limit]] = True
        elif i == last_user:
            limit = config.protect_question_tokens
            if limit is None:
                protected[tokens] = True
            elif limit > 0:
                protected[tokens[-limit:]] = True
    return protected


def _complement(spans: Sequence[Span], length: int) -> list[Span]:
    out: list[Span] = []
    cursor = 0
    for s, e in merge_spans(spans):
        if s > cursor:
            out.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < length:
        out.append((cursor, length))
    return out



def plain_chat(messages: Sequence[Message]) -> str:
    """A neutral chat layout for models without a chat template: ``Role: content`` blocks, then ``Assistant:``."""
    blocks = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:"])
