"""Field readers of the prune endpoint's wire form (:mod:`specprefill.wire.prune`): each checks one JSON value."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from specprefill.errors import SpecPrefillError
from specprefill.result import Message
from specprefill.spans import Span

__all__ = [
    "WireFormatError",
    "as_bool",
    "as_int",
    "as_ints",
    "as_list",
    "as_mapping",
    "as_messages",
    "as_number",
    "as_optional_str",
    "as_segments",
    "as_spans",
]


class WireFormatError(SpecPrefillError, ValueError):
    """A prune request or reply is not valid JSON of the expected shape; ``field`` names what is wrong."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def as_mapping(value: object, where: str) -> Mapping[str, Any]:
    """The value as a JSON object. Raises :class:`WireFormatError` naming ``where``."""
    if not isinstance(value, Mapping):
        raise WireFormatError(f"{where} must be a JSON object, got {type(value).__name__}", where)
    return value


def as_list(value: object, where: str) -> list[Any]:
    """The value as a JSON array. Raises :class:`WireFormatError` naming ``where``."""
    if not isinstance(value, list):
        raise WireFormatError(f"{where} must be a JSON array, got {type(value).__name__}", where)
    return value


def as_int(value: object, where: str) -> int:
    """The value as an integer (a boolean is not one). Raises :class:`WireFormatError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(f"{where} must be an integer, got {value!r:.40}", where)
    return value


def as_number(value: object, where: str) -> float:
    """The value as a finite number (a boolean is not one). Raises :class:`WireFormatError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireFormatError(f"{where} must be a finite number, got {value!r:.40}", where)
    return float(value)


def as_bool(value: object, where: str) -> bool:
    """The value as ``true`` or ``false``. Raises :class:`WireFormatError` naming ``where``."""
    if not isinstance(value, bool):
        raise WireFormatError(f"{where} must be true or false, got {value!r:.40}", where)
    return value


def as_optional_str(value: object, where: str) -> str | None:
    """The value as a string or None. Raises :class:`WireFormatError` naming ``where``."""
    if value is not None and not isinstance(value, str):
        raise WireFormatError(f"{where} must be a string or null, got {type(value).__name__}", where)
    return value


def as_ints(value: object, where: str, *, low: int, high: int | None = None) -> list[int]:
    """The value as an array of integers in ``[low, high]``. Raises :class:`WireFormatError` naming ``where``."""
    items = as_list(value, where)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            raise WireFormatError(f"{where} must hold integers in [{low}, {high or 'inf'}], got {v!r:.40}", where)
    return items


def as_spans(value: object, where: str, limit: int | None = None) -> list[Span]:
    """The value as ``[start, end]`` pairs, ``start <= end <= limit``; raises :class:`WireFormatError`."""
    out: list[Span] = []
    for item in as_list(value, where):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or not 0 <= item[0] <= item[1]
            or (limit is not None and item[1] > limit)
        ):
            bound = "" if limit is None else f" within [0, {limit}]"
            raise WireFormatError(
                f"{where} must hold [start, end] pairs with start <= end{bound}, got {item!r:.60}", where
            )
        out.append((item[0], item[1]))
    return out


def as_segments(value: object) -> list[int | Span]:
    """Caller segments: each a character offset or a ``[start, end]`` span."""
    out: list[int | Span] = []
    for item in as_list(value, "segments"):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            out.append(item)
        else:
            out.extend(as_spans([item], "segments"))
    return out


def as_messages(value: Sequence[Any], where: str) -> list[Message]:
    """The value as chat messages (objects with a string ``role``). Raises :class:`WireFormatError` naming ``where``."""
    out: list[Message] = []
    for i, m in enumerate(as_list(value, where)):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise WireFormatError(f"{where}[{i}] must be an object with a string 'role' and a 'content'", where)
        out.append(m)
    return out
