"""Fakes for the prune endpoint and its client (unit tests only): a scoring service and an in-memory ASGI bridge.

:class:`FakeService` has the service contract of ``specprefill.server.service.ScoringService`` (``settings``
and ``async run(fn, *, tokens)``), runs ``fn`` in a worker thread with a fake speculator, and can fail like the
real one (an error with a ``reason``). :func:`asgi_transport` / :func:`async_asgi_transport` turn an ASGI app
into httpx transports, so the real client talks to the real middleware without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from specprefill.errors import SpecPrefillError
from specprefill.server.endpoint import PruneEndpointMiddleware
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator

T = TypeVar("T")


class FakeUnavailableError(SpecPrefillError):
    """What a failing service raises (the real one raises ``ScoringUnavailableError`` with a ``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"scoring unavailable: {reason}")
        self.reason = reason


class FakeService:
    """Runs ``fn(speculator)`` in a worker thread; ``fail`` (a reason) makes every run raise instead."""

    def __init__(self, speculator: Speculator, *, config: dict[str, Any] | None = None, fail: str | None = None):
        self.speculator = speculator
        self.settings = ServerSettings(config=dict(config or {}))
        self.fail = fail
        self.tokens: list[int] = []

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        self.tokens.append(tokens)
        if self.fail is not None:
            raise FakeUnavailableError(self.fail)
        return await asyncio.to_thread(fn, self.speculator)


async def not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The wrapped app: answers 404 ``inner`` to everything (shows a request was passed through)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"inner"})


async def call_asgi(
    app: Any, request: httpx.Request, *, chunks: int = 1, disconnect: asyncio.Event | None = None
) -> httpx.Response:
    """Send an httpx request through an ASGI app in memory (the body in ``chunks`` pieces).

    After the body, ``receive`` waits as a connected client's does, until ``disconnect`` is set (if given).
    """
    body = request.read()
    step = max(1, -(-len(body) // chunks))
    pieces = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    scope = {
        "type": "http",
        "method": request.method,
        "path": request.url.path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await (disconnect or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if not sent:  # the app sent nothing: the client had gone
        return httpx.Response(499)
    start = sent[0]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return httpx.Response(start["status"], headers=start["headers"], content=content)


def middleware(service: Any, **kwargs: Any) -> PruneEndpointMiddleware:
    """The real middleware around :func:`not_found`, with ``service``."""
    return PruneEndpointMiddleware(not_found, service=service, **kwargs)


def asgi_transport(app: Any) -> httpx.MockTransport:
    """A sync httpx transport that answers through ``app`` (each request in a fresh event loop)."""
    return httpx.MockTransport(lambda request: asyncio.run(call_asgi(app, request)))


def async_asgi_transport(app: Any) -> httpx.MockTransport:
    """An async httpx transport that answers through ``app``."""

    async def handle(request: httpx.Request) -> httpx.Response:
        return await call_asgi(app, request)

    return httpx.MockTransport(handle)


def raw_transport(status: int, content: bytes) -> httpx.MockTransport:
    """A transport that answers every request with ``status`` and ``content`` (malformed replies)."""
    return httpx.MockTransport(lambda request: httpx.Response(status, content=content))


def failing_transport(exc: Exception) -> httpx.MockTransport:
    """A transport whose every request raises ``exc`` (e.g. ``httpx.ConnectError``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handle)
