"""One HTTP request's pruning context: its settings, checked strictly, and the messages it was rendered from.

Pure (no vLLM import): the request hooks (:mod:`specprefill.server.hooks`) build a :class:`Ticket` for every
chat, completion and Responses API request before any work, so a bad per-request setting is an HTTP 400
naming the key. Strict means: an unknown or misspelt ``specprefill_*`` key in ``vllm_xargs`` is refused (with
the closest known key), and so is a JSON ``true``/``false`` where a number belongs, although vLLM's request
model turns those into 1/0 before anyone sees them (:func:`raw_booleans` reads the raw body for it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.messages import message_text
from specprefill.result import Message
from specprefill.vllm_plugin.positions import XARG_LENGTH, XARG_RUNS
from specprefill.wire.stats import merge_stats
from specprefill.wire.xargs import (
    SERVER_OVERRIDES,
    XARG_RETURN_KEPT,
    OverrideError,
    overrides_from_xargs,
    wants_kept_runs,
)

__all__ = [
    "KNOWN_XARGS",
    "XARG_PREFIX",
    "Ticket",
    "chat_messages",
    "check_xarg_keys",
    "maybe_booleans",
    "raw_booleans",
    "responses_messages",
    "ticket_for",
]

XARG_PREFIX = "specprefill_"
"""Every ``vllm_xargs`` key of specprefill starts with this; other keys belong to others and pass."""

KNOWN_XARGS = frozenset({*SERVER_OVERRIDES.values(), XARG_RETURN_KEPT, XARG_RUNS, XARG_LENGTH})
"""The ``specprefill_*`` keys a request may carry."""

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})

NUMBER_XARGS = frozenset(SERVER_OVERRIDES.values())
"""Keys whose value must be a JSON number (a boolean is refused although vLLM reads it as 1 or 0)."""


@dataclass
class Ticket:
    """One HTTP request's pruning context, shared by its handler and the ``generate`` calls it makes."""

    config: SpecPrefillConfig
    """The request's pruning config: the server's with the request's ``vllm_xargs`` overrides."""
    messages: list[Message] | None = None
    """The text messages the prompt was rendered from (None: a plain completion prompt, or non-text parts)."""
    kept_runs: bool = False
    """The stats carry ``kept_runs``."""
    usage_chunk: bool = False
    """The stream ends with a usage chunk (``stream_options.include_usage``): the stats go there, once."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The stats object of every prompt the request ran, by vLLM request id."""

    def response_stats(self) -> dict[str, Any] | None:
        """The stats object of the response (merged over the prompts of a batched completion request)."""
        return merge_stats([self.stats[k] for k in sorted(self.stats)])


def check_xarg_keys(xargs: Mapping[str, Any] | None) -> None:
    """Refuse an unknown ``specprefill_*`` key (a typo must not pass silently at the default settings).

    Raises:
        OverrideError: The first unknown key; the message names the closest known one.

    """
    for key in sorted(xargs or {}):
        if key.startswith(XARG_PREFIX) and key not in KNOWN_XARGS:
            close = difflib.get_close_matches(key, sorted(KNOWN_XARGS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OverrideError(f"{key} is not a specprefill setting{hint} (known: {sorted(KNOWN_XARGS)})", key)


def raw_booleans(body: bytes, keys: Sequence[str]) -> list[str]:
    """Which of ``keys`` hold a JSON ``true`` or ``false`` in the raw request body.

    A key inside a JSON string (a message that quotes it) has its quotes escaped and does not match.
    """
    found = []
    for key in keys:
        pattern = rb'(?<!\\)"' + re.escape(key.encode()) + rb'"\s*:\s*(?:true|false)\b'
        if re.search(pattern, body):
            found.append(key)
    return found


def chat_messages(messages: Sequence[Any]) -> list[Message] | None:
    """OpenAI chat messages as ``{"role", "content": text}`` dicts, or None when one holds non-text parts.

    Assistant turns with only tool calls get empty content (their rendering is template, so protected).
    """
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            return None
        try:
            text = message_text(dict(m))
        except PromptError:  # images, audio, ...: token ids hold placeholders; do not prune
            return None
        out.append({"role": m["role"], "content": text})
    return out


def responses_messages(instructions: str | None, items: str | Sequence[Any]) -> list[Message] | None:
    """A Responses API request's ``instructions`` and ``input`` as chat messages (None: non-text input).

    Input items that are not messages (tool calls and their outputs) are left out: their rendering is
    template text, which is protected. ``input_text`` / ``output_text`` parts are text.
    """
    out: list[Message] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for item in items:
        data = item if isinstance(item, Mapping) else getattr(item, "model_dump", lambda: None)()
        if not isinstance(data, Mapping) or not isinstance(data.get("role"), str):
            continue
        content = data.get("content")
        if isinstance(content, list):
            if not all(isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS for part in content):
                return None  # images, files, ...: the token ids hold placeholders; do not prune
            content = [{"type": "text", "text": part.get("text", "")} for part in content]
        out.append({"role": data["role"], "content": content})
    return chat_messages(out)


def maybe_booleans(request: Any) -> list[str]:
    """The number keys whose value is 0 or 1: JSON booleans after vLLM's parsing, or real numbers (see the body)."""
    xargs = getattr(request, "vllm_xargs", None) or {}
    return sorted(key for key in NUMBER_XARGS if xargs.get(key) in (0, 1))


def ticket_for(
    request: Any, base: SpecPrefillConfig, *, messages: list[Message] | None, raw_body: bytes | None = None
) -> Ticket:
    """The ticket of one request: its checked settings and messages.

    Args:
        request: vLLM's parsed request (``vllm_xargs``, ``stream_options``).
        base: The server's pruning config.
        messages: The text messages the prompt is rendered from (None: none, or not text).
        raw_body: The request body as sent, to refuse JSON booleans vLLM has already turned into numbers
            (needed only when :func:`maybe_booleans` names a key).

    Raises:
        OverrideError: An unknown ``specprefill_*`` key, a boolean or out-of-range setting; ``field`` names
            the key.

    """
    xargs = getattr(request, "vllm_xargs", None) or {}
    check_xarg_keys(xargs)
    ambiguous = maybe_booleans(request)
    if raw_body is not None and ambiguous:
        for key in raw_booleans(raw_body, ambiguous):
            raise OverrideError(f"{key} must be a number, got a JSON boolean", key)
    config = overrides_from_xargs(xargs, base)
    usage_chunk = bool(getattr(getattr(request, "stream_options", None), "include_usage", False))
    return Ticket(config=config, messages=messages, kept_runs=wants_kept_runs(xargs), usage_chunk=usage_chunk)
