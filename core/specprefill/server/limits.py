"""Request-body limits for the OpenAI server: huge bodies and position maps are refused before any parse.

The position-map guard (:mod:`specprefill.vllm_plugin.guard`) bounds a map by the prompt before any work
proportional to its size, but FastAPI has parsed the JSON body by then, on the server's event loop: a 16 MB
run list (1.8 million integers) held the loop for 0.74 to 1.1 s, during which no other request (not even
``/health``) was served. :class:`BodyLimitMiddleware` refuses two kinds of body with HTTP 413 and an
OpenAI-style error object, before the body reaches the app:

* a body over ``max_body_bytes``, from its ``Content-Length`` header (or, for a chunked upload, as soon as the
  bytes received pass the limit);
* a body whose position map (``vllm_xargs.specprefill_runs``) holds more than ``max_position_ints`` integers.
  Only a body longer than :func:`scan_threshold` can hold such a map; the middleware reads it whole, scans
  it on a worker thread (one body at a time), then hands the app the very same messages.

The scan does not call ``json.loads``: parsing 16 MB of integers takes about 0.2 s inside one C call that
keeps the GIL, so even in a worker thread it stalls the event loop for as long. :func:`longest_runs` instead
finds the key with byte searches and counts the list's commas in slices of :data:`SCAN_SLICE_BYTES`, so no
single step holds the GIL for more than about a millisecond. It reads the key as JSON encoders write it
(``"specprefill_runs": [``), at any depth: the name is SpecPrefill's, and such a list costs as much to parse
anywhere. A key spelled with Unicode escapes, or past the first :data:`MAX_RUNS_KEYS` occurrences, is left to
the guard, as every map was before.

Settings (``SPECPREFILL_SERVER_*`` variables or the settings file, see :mod:`specprefill.server.settings`):
``max_body_bytes`` (default :data:`DEFAULT_MAX_BODY_BYTES`, 16 MiB; raise it for large multimodal requests,
base64 images count in full) and ``max_position_ints`` (default :data:`DEFAULT_MAX_POSITION_INTS`); ``0``
turns either check off.

It is a plain ASGI middleware: vLLM's ``--middleware specprefill.server.limits.BodyLimitMiddleware`` loads it
(``specprefill serve`` passes that flag), and so can any Starlette or FastAPI app.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from specprefill.errors import ConfigurationError
from specprefill.server.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_POSITION_INTS, ServerSettings
from specprefill.vllm_plugin.positions import XARG_RUNS

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_POSITION_INTS",
    "ENV_MAX_BODY_BYTES",
    "ENV_MAX_POSITION_INTS",
    "MAX_RUNS_KEYS",
    "RUNS_FIELD",
    "SCAN_SLICE_BYTES",
    "BodyLimitMiddleware",
    "configured_max_body_bytes",
    "configured_max_position_ints",
    "longest_runs",
    "scan_threshold",
]

ENV_MAX_BODY_BYTES = "SPECPREFILL_SERVER_MAX_BODY_BYTES"
"""Environment variable holding the limit in bytes (0 = no limit)."""

ENV_MAX_POSITION_INTS = "SPECPREFILL_SERVER_MAX_POSITION_INTS"
"""Environment variable holding the limit in integers (0 = no check)."""

RUNS_FIELD = f"vllm_xargs.{XARG_RUNS}"
"""The field a refused map is reported under (the error's ``param``)."""

SCAN_SLICE_BYTES = 1 << 20
"""Bytes one comma count covers (about 0.6 ms): between slices the scanning thread lets the event loop run."""

MAX_RUNS_KEYS = 16
"""Occurrences of the ``"specprefill_runs"`` key examined per body; a request carries one."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SCANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specprefill-body-scan")
"""The one thread that scans bodies. One at a time: each scanning thread takes turns with the event loop for
the GIL, so four concurrent scans would hold the loop up to four times as long."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_RUNS_KEY = json.dumps(XARG_RUNS).encode()
_LIST_AFTER_KEY = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\[")


def configured_max_body_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The server settings' ``max_body_bytes`` (``SPECPREFILL_SERVER_MAX_BODY_BYTES`` or the settings file).

    Raises:
        ConfigurationError: The value (or another server setting) is invalid; the message names it.

    """
    return ServerSettings.load(environ).max_body_bytes


def configured_max_position_ints(environ: Mapping[str, str] | None = None) -> int:
    """The server settings' ``max_position_ints`` (``SPECPREFILL_SERVER_MAX_POSITION_INTS`` or the settings file).

    Raises:
        ConfigurationError: The value (or another server setting) is invalid; the message names it.

    """
    return ServerSettings.load(environ).max_position_ints


def scan_threshold(max_position_ints: int) -> int | None:
    """Body size above which a body can hold a map of more than ``max_position_ints`` integers.

    Such a map has ``max_position_ints`` commas and one more digit at least, so a body of at most twice the
    limit in bytes cannot hold one and needs no scan.

    Returns:
        The size in bytes, or None when the check is off (limit 0).

    """
    return 2 * max_position_ints if max_position_ints > 0 else None


def longest_runs(body: bytes, *, slice_bytes: int = SCAN_SLICE_BYTES) -> int:
    """Items in the longest list given to a ``"specprefill_runs"`` key in a JSON body (0: none).

    Exact for a flat list of numbers, which is all the guard accepts; other lists are counted up to their
    first ``]`` (so a nested or string-holding list may be miscounted, and the guard refuses it anyway).
    Only the first :data:`MAX_RUNS_KEYS` occurrences of the key are examined. No step is proportional to more
    than ``slice_bytes`` of the body, apart from byte searches (about 2 ms for 16 MB).

    Args:
        body: The raw request body (not parsed; invalid JSON is scanned all the same).
        slice_bytes: Bytes per comma count.

    """
    longest = 0
    at = body.find(_RUNS_KEY)
    for _ in range(MAX_RUNS_KEYS):
        if at < 0:
            break
        resume = at + len(_RUNS_KEY)
        start = _list_start(body, at)
        if start is not None:
            end = body.find(b"]", start)
            resume = len(body) if end < 0 else end
            longest = max(longest, _list_items(body, start, resume, slice_bytes))
        at = body.find(_RUNS_KEY, resume)
    return longest


def _list_start(body: bytes, at: int) -> int | None:
    """Offset just past the ``[`` when the ``"specprefill_runs"`` at ``at`` is a key token whose value is a list."""
    match = _LIST_AFTER_KEY.match(body, at + len(_RUNS_KEY))
    return None if match is None or _escaped(body, at) else match.end()


def _escaped(body: bytes, at: int) -> bool:
    """Whether the quote at ``at`` follows an odd run of backslashes, i.e. lies inside a JSON string."""
    before = body[:at]
    return (len(before) - len(before.rstrip(b"\\"))) % 2 == 1


def _list_items(body: bytes, start: int, end: int, slice_bytes: int) -> int:
    """Comma-separated items in ``body[start:end]``, counting the commas one slice at a time."""
    commas = sum(body.count(b",", at, min(at + slice_bytes, end)) for at in range(start, end, slice_bytes))
    if commas:
        return commas + 1
    return 1 if body[start:end].strip() else 0


def _declared_length(scope: Scope) -> int | None:
    """The ``Content-Length`` header as an int; None when absent or malformed (counted while reading)."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _body_too_large(limit: int, size: int | None) -> str:
    got = "more" if size is None else f"{size:,} bytes"
    return (
        f"specprefill: request body too large: {got} over the server's limit of {limit:,} bytes. Send token ids or a "
        f"position map for a shorter prompt, or raise {ENV_MAX_BODY_BYTES} on the server."
    )


def _map_too_long(limit: int, items: int) -> str:
    return (
        f"specprefill: {RUNS_FIELD} holds {items:,} integers, over the server's limit of {limit:,} "
        f"({ENV_MAX_POSITION_INTS}). A position map needs at most one integer per prompt token; send a shorter "
        "prompt or coarser runs, or raise the limit on the server."
    )


def _error_body(message: str, param: str | None) -> bytes:
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": 413}}
    return json.dumps(payload).encode()


async def _reply_413(send: Send, message: str, param: str | None = None) -> None:
    body = _error_body(message, param)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_messages(receive: Receive, limit: int) -> tuple[list[Message], int]:
    """Receive the body's messages until the last one, a disconnect, or more than ``limit`` bytes (0: none).

    Returns:
        Every message received, in order, and the body bytes among them.

    """
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message.get("type") != "http.request":
            return messages, size
        size += len(message.get("body", b""))
        if (limit and size > limit) or not message.get("more_body", False):
            return messages, size


def _scan_messages(messages: Sequence[Message]) -> int:
    """:func:`longest_runs` of the body the messages carry (run in a worker thread)."""
    return longest_runs(b"".join(m.get("body", b"") for m in messages if m.get("type") == "http.request"))


def _replaying(messages: Sequence[Message], receive: Receive) -> Receive:
    """A receive channel giving ``messages`` first, unchanged, then whatever ``receive`` gives."""
    pending = deque(messages)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay


class BodyLimitMiddleware:
    """ASGI middleware answering HTTP 413 to oversized bodies and position maps, before the app reads them.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Body limit in bytes; None reads the server settings (default 16 MiB). 0: no limit.
        max_position_ints: Position-map limit in integers; None reads the server settings (default
            :data:`DEFAULT_MAX_POSITION_INTS`). 0: no check.

    Raises:
        ConfigurationError: A limit is negative, or a server setting is invalid.

    """

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None, max_position_ints: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = configured_max_body_bytes() if max_body_bytes is None else max_body_bytes
        self.max_position_ints = configured_max_position_ints() if max_position_ints is None else max_position_ints
        if self.max_body_bytes < 0:
            raise ConfigurationError(f"max_body_bytes={max_body_bytes}: give a byte count >= 0")
        if self.max_position_ints < 0:
            raise ConfigurationError(f"max_position_ints={max_position_ints}: give an integer count >= 0")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body or position map with 413; pass everything else to the app unchanged."""
        limit = self.max_body_bytes
        threshold = scan_threshold(self.max_position_ints)
        if scope.get("type") != "http" or scope.get("method") not in _BODY_METHODS or (not limit and threshold is None):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if limit and declared is not None and declared > limit:
            await _reply_413(send, _body_too_large(limit, declared))
        elif threshold is not None and (declared is None or declared > threshold):
            await self._scanned(scope, receive, send, threshold)
        elif limit:
            await self._counted(scope, receive, send, limit)
        else:
            await self.app(scope, receive, send)

    async def _scanned(self, scope: Scope, receive: Receive, send: Send, threshold: int) -> None:
        """Read the whole body; refuse it if too large or its map too long, else replay it to the app."""
        limit = self.max_body_bytes
        messages, size = await _read_messages(receive, limit)
        if limit and size > limit:
            await _reply_413(send, _body_too_large(limit, None))
            return
        if size > threshold and messages[-1].get("type") == "http.request":  # not when the client left
            items = await asyncio.get_running_loop().run_in_executor(_SCANNER, _scan_messages, messages)
            if items > self.max_position_ints:
                await _reply_413(send, _map_too_long(self.max_position_ints, items), RUNS_FIELD)
                return
        await self.app(scope, _replaying(messages, receive), send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app, counting body bytes as they arrive; past the limit the app sees a disconnect."""
        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _reply_413(send, _body_too_large(limit, None))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already; whatever the app answers to the disconnect is dropped
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
