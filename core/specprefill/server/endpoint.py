"""``POST /specprefill/v1/prune`` inside vLLM's OpenAI server, as plain ASGI middleware.

Load it with ``--middleware specprefill.server.endpoint.PruneEndpointMiddleware`` (``specprefill serve`` does):
vLLM's api_server adds a middleware class with ``app.add_middleware(cls)``, so it wraps the whole app and
answers its one path itself, passing every other request through untouched. The request handling is
:mod:`specprefill.server.prune_requests`; the middleware only reads the body (rejecting an oversized one
before parsing, and parsing a large one off the event loop), checks the API key, gives the scoring up when
the client disconnects, and writes the JSON reply. Scoring runs in the service's worker, never on the event
loop.

Status codes: 200 with the reply (also when scoring was unavailable and the request allows the fallback:
everything kept, ``stats.fallback`` true); 400 for a malformed body or settings (``error.param`` names the
field); 401 without the server's API key; 405 for other methods; 413 for a body over
``SPECPREFILL_SERVER_MAX_PRUNE_BYTES`` (default 8 MiB) or a prompt over ``SPECPREFILL_SERVER_MAX_PRUNE_TOKENS``
tokens (default 32,768; estimated from the characters at once, then counted exactly before scoring); 503
when scoring is unavailable and the request says ``"fallback": false``. Admission is the scoring service's:
a prompt that cannot be scored before the deadline, given the work queued ahead, falls back at once
(``over_budget``). ``stats.fallback_reason`` is a stable code; the details go to the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeVar

from specprefill.server.prune_requests import (
    MAX_TOKENS_ENV,
    EndpointUnavailableError,
    ScoringRunner,
    error_body,
    fallback_reply,
    handle_prune,
    prune_request,
    request_config,
)
from specprefill.server.shared import get_service
from specprefill.speculator.base import Speculator
from specprefill.wire.prune import PRUNE_PATH, WireFormatError, decode_json, encode_json

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BODY_ENV",
    "MAX_TOKENS_ENV",
    "PRUNE_PATH",
    "EndpointUnavailableError",
    "PruneEndpointMiddleware",
    "ScoringRunner",
    "fallback_reply",
    "handle_prune",
    "prune_request",
    "request_config",
]

logger = logging.getLogger("specprefill.server")


MAX_BODY_ENV = "SPECPREFILL_SERVER_MAX_PRUNE_BYTES"
"""Environment variable with the largest accepted request body, in bytes."""

DEFAULT_MAX_BODY_BYTES = 8 * 2**20
"""Largest accepted request body when :data:`MAX_BODY_ENV` is not set (8 MiB)."""

T = TypeVar("T")
Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- ASGI -------------------------------------------------------------------------------------------------
class _RefusedError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, dict(headers or {})


class _Unavailable:
    """Stands in for a scoring service that could not be built: every run fails with the reason."""

    settings = None

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        raise EndpointUnavailableError(f"the scoring service could not start: {self.exc}") from self.exc


def _default_service() -> ScoringRunner:
    try:
        service: ScoringRunner = get_service()
    except Exception as exc:  # no service module, no speculator configured, settings invalid
        logger.warning("prune endpoint: no scoring service (%s: %s)", type(exc).__name__, exc)
        return _Unavailable(exc)
    return service


class PruneEndpointMiddleware:
    """ASGI middleware answering ``POST /specprefill/v1/prune``; every other request goes to the app.

    Args:
        app: The wrapped ASGI app (vLLM's FastAPI app).
        service: The scoring service (default: ``specprefill.server.shared.get_service()``, looked up on the
            first request).
        max_body_bytes: Largest accepted body (default: :data:`MAX_BODY_ENV` or 8 MiB).
        api_keys: Accepted bearer tokens (default: the server's ``--api-key`` values or ``VLLM_API_KEY``; no
            key configured means no check, as for vLLM's own routes).

    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: ScoringRunner | None = None,
        max_body_bytes: int | None = None,
        api_keys: list[str] | None = None,
    ) -> None:
        self.app = app
        self._service = service
        self.max_body_bytes = max_body_bytes or _env_bytes()
        self._api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the prune path; pass everything else through."""
        path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
        if scope.get("type") != "http" or path != PRUNE_PATH:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        try:
            body = await self._read(scope, receive)
            service = self._service or _default_service()
            if not isinstance(service, _Unavailable):
                self._service = service  # kept once built; a missing service is looked up again next time
            parsed = await asyncio.to_thread(decode_json, body) if len(body) > _PARSE_OFF_LOOP else decode_json(body)
            answer = await _unless_disconnected(handle_prune(parsed, service), receive)
            if answer is None:  # the client went away: its scoring was given up, nobody reads a reply
                return
            status, payload = answer
        except _RefusedError as exc:
            status, payload = error_body(exc.status, str(exc), exc.kind)
            headers = exc.headers
        except WireFormatError as exc:
            status, payload = error_body(400, str(exc), "invalid_request_error", exc.field)
        await _send_json(send, status, payload, headers)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        if scope.get("method") != "POST":
            raise _RefusedError(405, f"{PRUNE_PATH} takes POST", "method_not_allowed", {"allow": "POST"})
        header = _headers(scope)
        if not self._authorised(scope, header.get("authorization", "")):
            raise _RefusedError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        declared = header.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _RefusedError(
                    400, "the client disconnected before sending the whole body", "invalid_request_error"
                )
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> _RefusedError:
        return _RefusedError(
            413,
            f"the body is larger than {self.max_body_bytes:,} bytes; send less text or raise {MAX_BODY_ENV}",
            "request_too_large",
        )

    def _authorised(self, scope: Scope, authorization: str) -> bool:
        keys = self._api_keys if self._api_keys is not None else _server_api_keys(scope)
        if not keys:
            return True
        scheme, _, token = authorization.partition(" ")
        digest = hashlib.sha256(token.encode()).digest()
        matches = [secrets.compare_digest(digest, hashlib.sha256(k.encode()).digest()) for k in keys]
        return scheme.lower() == "bearer" and any(matches)


_PARSE_OFF_LOOP = 1 << 20
"""Bodies longer than this (1 MiB) are parsed in a worker thread, so the event loop keeps serving."""


async def _unless_disconnected(work: Awaitable[T], receive: Receive) -> T | None:
    """``work``'s result, or None (and ``work`` cancelled, so its scoring is given up) once the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (after the whole body was read, that is all ``receive`` reports)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _env_bytes() -> int:
    """:data:`MAX_BODY_ENV` as a positive int; the default (with a warning) when it is not one."""
    raw = os.environ.get(MAX_BODY_ENV, "")
    if raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    if raw:
        logger.warning("%s=%r is not a positive number of bytes; using %d", MAX_BODY_ENV, raw, DEFAULT_MAX_BODY_BYTES)
    return DEFAULT_MAX_BODY_BYTES


def _server_api_keys(scope: Scope) -> list[str]:
    """The API keys vLLM checks on its own routes: ``--api-key`` values, else ``VLLM_API_KEY``."""
    state = getattr(scope.get("app"), "state", None)
    args = getattr(state, "args", None) if state is not None else None
    keys = getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY", "")]
    return [k for k in keys if k]


def _headers(scope: Scope) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers", [])}


async def _send_json(send: Send, status: int, payload: dict[str, Any], extra: Mapping[str, str]) -> None:
    body = encode_json(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
