"""Honest replies for :class:`~specprefill.backends.openai.backend.OpenAIBackend`: what a stream delivered.

Every request has an overall deadline (:class:`specprefill.backends.retry.Deadline`) that covers retries,
``Retry-After`` waits and a stream that trickles; retries happen only before the first byte of an answer was
used. Replies that are not
a well-formed event stream (HTML, malformed JSON, nothing) become :class:`~specprefill.errors.BackendError`
naming what the server sent, and a stream that ends without a finish reason is an error, never a ``stop``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from specprefill.errors import BackendError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Progress",
    "absorb_event",
    "check_stream_reply",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a server may stay silent (no byte) during one attempt."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to establish a connection."""

DEFAULT_REQUEST_TIMEOUT = 600.0
"""Overall seconds per request, retries and streaming included."""

_SNIPPET = 160


@dataclass
class Progress:
    """What a stream has delivered so far."""

    start: float
    pieces: list[str] = field(default_factory=list)
    first: float | None = None
    finish: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks: int = 0


def absorb_event(event: Any, chat: bool, progress: Progress) -> str:
    """Take one parsed stream event into ``progress``; return its new text (choice 0 only)."""
    usage = getattr(event, "usage", None)
    if usage is not None:
        progress.prompt_tokens = getattr(usage, "prompt_tokens", None)
        progress.completion_tokens = getattr(usage, "completion_tokens", None)
    text = ""
    for choice in getattr(event, "choices", None) or []:
        if getattr(choice, "index", 0) != 0:
            continue
        if chat:
            delta = getattr(choice, "delta", None)
            text = (getattr(delta, "content", None) or "") if delta is not None else ""
        else:
            text = getattr(choice, "text", None) or ""
        if getattr(choice, "finish_reason", None):
            progress.finish = str(choice.finish_reason)
        if text or progress.finish:
            progress.chunks += 1 if text else 0
            if progress.first is None:
                progress.first = time.perf_counter()
    if text:
        progress.pieces.append(text)
    return text


def check_stream_reply(response: Any, body: bytes | None, where: str) -> None:
    """Refuse a 200 reply that is not an event stream, saying what the server sent.

    Args:
        response: The ``httpx.Response`` of a streaming request.
        body: The reply's bytes when it is not an event stream (read by the caller), else None.
        where: The server, for the message.

    Raises:
        BackendError: The reply is HTML, JSON, empty, or anything but ``text/event-stream``.

    """
    kind = str(response.headers.get("content-type", "")).split(";")[0].strip().lower()
    if kind == "text/event-stream":
        return
    data = body or b""
    snippet = data[:_SNIPPET].decode("utf-8", "replace")
    if not data.strip():
        what = f"an empty {kind or 'untyped'} reply"
    elif kind == "application/json":
        try:
            parsed = json.loads(data)
        except ValueError:
            what = f"malformed JSON ({snippet!r})"
        else:
            error = parsed.get("error") if isinstance(parsed, dict) else None
            what = f"a JSON error: {error}" if error else f"a JSON body instead of a stream ({snippet!r})"
    else:
        what = f"{kind or 'an untyped reply'} ({snippet!r})"
    raise BackendError(
        f"the server at {where} answered {response.status_code} with {what} where an event stream was expected; "
        "check that base_url points at an OpenAI-compatible API (it usually ends in /v1) and not at a proxy page"
    )


def stream_format_error(exc: BaseException, where: str) -> BackendError:
    """The error for an event stream whose data is not valid JSON."""
    return BackendError(
        f"the server at {where} sent a malformed event in the answer stream ({type(exc).__name__}: {exc}); "
        "the answer is incomplete. Check the server or any proxy in between"
    )
