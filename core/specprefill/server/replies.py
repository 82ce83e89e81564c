"""The ``specprefill`` stats object in vLLM's replies: beside ``usage``, or on the final chunk(s) of a stream.

It goes in the body, not in headers, because a stream's headers are sent before scoring finishes, and OpenAI
SDKs hand unknown body fields to the caller. A stream carries it once: on the closing usage chunk when the
request asked for one (``stream_options.include_usage``), else on every chunk with a ``finish_reason``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from specprefill.result import STATS_KEY
from specprefill.server.tickets import Ticket

__all__ = ["attach_stats"]


def attach_stats(result: Any, ticket: Ticket) -> Any:
    """The handler's result carrying the ticket's stats: beside ``usage``, or on a stream's final chunk."""
    if hasattr(result, "__aiter__"):
        return _stream_with_stats(result, ticket)
    stats = ticket.response_stats()
    if stats is not None and hasattr(result, "usage"):
        setattr(result, STATS_KEY, stats)
    return result


def _final_chunk(payload: str, *, usage_chunk: bool) -> bool:
    """Whether a stream chunk gets the stats: the closing usage chunk if one comes, else finish chunks.

    The usage chunk is the one with no choices (with ``continuous_usage_stats`` every chunk has a usage).
    """
    if usage_chunk:
        return '"choices":[]' in payload and '"usage":{' in payload
    return '"finish_reason"' in payload and payload.count('"finish_reason":null') < payload.count('"finish_reason"')


async def _stream_with_stats(stream: AsyncIterator[str], ticket: Ticket) -> AsyncIterator[str]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            is_data = isinstance(item, str) and item.startswith("data: {")
            if is_data and _final_chunk(item, usage_chunk=ticket.usage_chunk):
                item = _with_stats(item, ticket)
            yield item


def _with_stats(item: str, ticket: Ticket) -> str:
    stats = ticket.response_stats()
    if stats is None:
        return item
    try:
        chunk = json.loads(item[len("data: ") :])
    except ValueError:
        return item
    if not isinstance(chunk, dict) or "error" in chunk:
        return item
    chunk[STATS_KEY] = stats
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
