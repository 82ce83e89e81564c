"""Per-call keyword arguments: which are generation settings and which are pruning-config overrides.

Both integrations (and the engine itself) split a call's ``**kwargs`` with :func:`split_call_kwargs`, so
``max_tokens`` means the same everywhere and an unknown argument raises the same typed error everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import UnknownArgumentError

__all__ = ["GENERATION_ALIASES", "GENERATION_KEYS", "split_call_kwargs", "stop_tuple"]

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "stop", "seed")
"""Keyword arguments of :class:`~specprefill.backends.base.GenerationParams` (and of the engine calls)."""

GENERATION_ALIASES = {"max_tokens": "max_new_tokens"}
"""Accepted other spellings (OpenAI / LangChain style) and the name they stand for."""


def split_call_kwargs(kwargs: Mapping[str, Any], *, caller: str = "this call") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a call's keyword arguments into generation settings and config overrides.

    Args:
        kwargs: The call's keyword arguments (not modified).
        caller: Who was called, for the error message.

    Returns:
        ``(generation, overrides)``: ``generation`` holds :data:`GENERATION_KEYS` (``max_tokens`` renamed to
        ``max_new_tokens``), ``overrides`` holds :class:`~specprefill.SpecPrefillConfig` fields.

    Raises:
        UnknownArgumentError: An argument is neither; the message lists what is accepted. Also raised when
            both ``max_tokens`` and ``max_new_tokens`` are given with different values.

    """
    generation: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    unknown: list[str] = []
    fields = SpecPrefillConfig.model_fields
    for key, value in kwargs.items():
        name = GENERATION_ALIASES.get(key, key)
        if name in GENERATION_KEYS:
            if name in generation and generation[name] != value:
                raise UnknownArgumentError(
                    f"{caller} got both max_tokens={value!r} and max_new_tokens={generation[name]!r}; give one"
                )
            generation[name] = value
        elif key in fields:
            overrides[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnknownArgumentError(
            f"{caller} got unexpected argument(s) {sorted(unknown)}; it takes the generation settings "
            f"{sorted([*GENERATION_KEYS, *GENERATION_ALIASES])} and the SpecPrefillConfig fields {sorted(fields)}"
        )
    return generation, overrides


def stop_tuple(stop: str | Any | None) -> tuple[str, ...]:
    """``stop`` as a tuple of strings (one string, any iterable of strings, or None)."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(stop)
