"""Request-size limit for the OpenAI server: huge bodies are refused before anyone parses them.

The position-map guard (:mod:`specprefill.vllm_plugin.guard`) bounds a map by the prompt before any work
proportional to its size, but FastAPI has parsed the JSON body by then: a run list of 10^7 integers is
about 80 MB of JSON and several seconds of parsing on the server's event loop, during which no other
request is served. :class:`BodyLimitMiddleware` refuses such a body from its ``Content-Length`` header
(or, for a chunked upload, as soon as the bytes received pass the limit) with HTTP 413 and an
OpenAI-style error object, before the body reaches the app.

The limit is the server setting ``max_body_bytes`` (``SPECPREFILL_SERVER_MAX_BODY_BYTES`` or the settings
file; default :data:`DEFAULT_MAX_BODY_BYTES`, 16 MiB; ``0`` turns it off). Raise it for large multimodal
requests (base64 images count in full).

It is a plain ASGI middleware: vLLM's ``--middleware specprefill.server.limits.BodyLimitMiddleware`` loads it
(``specprefill serve`` passes that flag), and so can any Starlette or FastAPI app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from specprefill.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ENV_MAX_BODY_BYTES", "BodyLimitMiddleware", "configured_max_body_bytes"]

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""16 MiB: a 128k-token prompt sent as token ids with a full position map is under 3 MB, while a list of
10^7 integers is at least 20 MB of JSON. Raise it for requests with many base64 images."""

ENV_MAX_BODY_BYTES = "SPECPREFILL_SERVER_MAX_BODY_BYTES"
"""Environment variable holding the limit in bytes (0 = no limit)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def configured_max_body_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The server settings' ``max_body_bytes`` (``SPECPREFILL_SERVER_MAX_BODY_BYTES`` or the settings file).

    Raises:
        ConfigurationError: The value (or another server setting) is invalid; the message names it.

    """
    from specprefill.server.settings import ServerSettings

    return ServerSettings.load(environ).max_body_bytes


def _declared_length(scope: Scope) -> int | None:
    """The ``Content-Length`` header as an int; None when absent or malformed (counted while reading)."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _error_body(limit: int, size: int | None) -> bytes:
    got = "more" if size is None else f"{size:,} bytes"
    message = (
        f"specprefill: request body too large: {got} over the server's limit of {limit:,} bytes. Send token ids or a "
        f"position map for a shorter prompt, or raise {ENV_MAX_BODY_BYTES} on the server."
    )
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": 413}}
    return json.dumps(payload).encode()


async def _reply_413(send: Send, limit: int, size: int | None) -> None:
    body = _error_body(limit, size)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware answering HTTP 413 to request bodies over a byte limit, before the app reads them.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: The limit; None reads the server settings (default 16 MiB).
            0 passes everything through.

    """

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = configured_max_body_bytes() if max_body_bytes is None else max_body_bytes
        if self.max_body_bytes < 0:
            raise ConfigurationError(f"max_body_bytes={max_body_bytes}: give a byte count >= 0")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body with 413; pass everything else to the app unchanged."""
        limit = self.max_body_bytes
        if scope.get("type") != "http" or scope.get("method") not in _BODY_METHODS or limit == 0:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _reply_413(send, limit, declared)
            return
        await self._counted(scope, receive, send, limit)

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
                        await _reply_413(send, limit, None)
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
