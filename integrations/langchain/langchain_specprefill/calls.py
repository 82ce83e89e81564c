"""Per-call plumbing of :class:`~langchain_specprefill.ChatSpecPrefill`: kwargs, prompt, per-model engines."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from specprefill.engine import SpecPrefillEngine
from specprefill.engine.callargs import split_call_kwargs

from .convert import json_instruction, to_chat_dicts, with_instruction

__all__ = ["ADAPTER_KEYS", "ChatCall", "EngineLRU", "chat_prompt", "engine_kwargs"]

ADAPTER_KEYS = ("model", "protected_spans", "response_format")
"""Per-call arguments the chat model handles itself (everything else goes to the engine)."""


@dataclass
class ChatCall:
    """One call's arguments, split for :meth:`SpecPrefillEngine.generate`."""

    engine: SpecPrefillEngine
    prompt: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


def engine_kwargs(
    defaults: Mapping[str, Any], stop: list[str] | None, kwargs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Engine keyword arguments for one call, and the adapter options among ``kwargs``.

    Args:
        defaults: The chat model's generation defaults and pruning overrides.
        stop: The ``stop`` argument of the call (wins over everything else when given).
        kwargs: The call's other keyword arguments.

    Returns:
        ``(engine_kwargs, options)``; options hold :data:`ADAPTER_KEYS` except ``protected_spans``.

    Raises:
        UnknownArgumentError: An unknown argument (also a ``TypeError``).

    """
    rest = dict(kwargs)
    options = {key: rest.pop(key) for key in ADAPTER_KEYS if key in rest}
    generation, overrides = split_call_kwargs(rest, caller="ChatSpecPrefill")
    out = {**defaults, **{k: v for k, v in generation.items() if v is not None or k in ("seed", "stop")}, **overrides}
    out["temperature"] = float(out.get("temperature") or 0.0)
    if stop is not None:
        out["stop"] = list(stop) or None
    out["protected_spans"] = list(options.pop("protected_spans", None) or ())
    return out, options


def chat_prompt(messages: list[BaseMessage], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages as chat dicts, with the JSON instruction of a ``response_format`` in the system prompt."""
    prompt = to_chat_dicts(messages)
    if options.get("response_format"):
        prompt = with_instruction(prompt, json_instruction(options["response_format"]))
    return prompt


class EngineLRU:
    """Engines for per-call model names, at most ``max_size`` of them (least recently used dropped first)."""

    def __init__(self) -> None:
        self._engines: OrderedDict[str, SpecPrefillEngine] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._engines)

    def get(self, model: str, create: Callable[[], SpecPrefillEngine], max_size: int) -> SpecPrefillEngine:
        """The engine for ``model``, created with ``create()`` when it is not cached."""
        with self._lock:
            engine = self._engines.get(model)
            if engine is not None:
                self._engines.move_to_end(model)
                return engine
            engine = self._engines[model] = create()
            while len(self._engines) > max_size:
                _, dropped = self._engines.popitem(last=False)
                dropped.close()
            return engine
