"""``POST /specprefill/v1/prune`` inside vLLM's OpenAI server, as plain ASGI middleware.

Load it with ``--middleware specprefill.server.endpoint.PruneEndpointMiddleware`` (``specprefill serve`` does):
vLLM's api_server adds a middleware class with ``app.add_middleware(cls)``, so it wraps the whole app and
answers its one path itself, passing every other request through untouched. The request handling is
:func:`handle_prune`, an async function of the parsed body and a scoring service (anything with
``settings`` and ``async run(fn, *, tokens)``, see :class:`ScoringRunner`); the middleware only reads the
body (rejecting an oversized one before parsing), checks the API key and writes the JSON reply. Scoring
runs in the service's worker (:func:`prune_request`), never on the event loop.

Status codes: 200 with the reply (also when scoring was unavailable and the request allows the fallback:
everything kept, ``stats.fallback`` true); 400 for a malformed body or settings (``error.param`` names the
field); 401 without the server's API key; 405 for other methods; 413 for a body over
``SPECPREFILL_SERVER_MAX_PRUNE_BYTES`` (default 8 MiB); 503 when scoring is unavailable and the request
says ``"fallback": false``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import partial
from typing import Any, Protocol, TypeVar

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError, SpeculatorError
from specprefill.prompt.passages import Passage, layout_passages, score_passages, scored_windows
from specprefill.prompt.segments import check_segments
from specprefill.server.shared import get_service
from specprefill.spans import cut_spans, join_spans
from specprefill.speculator.base import Speculator
from specprefill.wire.prune import PRUNE_PATH, PruneReply, PruneRequest, WireFormatError, decode_json, encode_json
from specprefill.wire.stats import prune_stats_object, stats_object
from specprefill.wire.xargs import OverrideError, checked_overrides

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BODY_ENV",
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


class ScoringRunner(Protocol):
    """What :func:`handle_prune` needs of the scoring service (``specprefill.server.service.ScoringService``)."""

    settings: Any

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        """Run ``fn(speculator)`` off the event loop; raise (e.g. ``ScoringUnavailableError``) when it cannot."""
        ...


class EndpointUnavailableError(SpeculatorError):
    """The scoring service could not be built (``reason`` is ``"load_failed"``, as the service reports it)."""

    reason = "load_failed"


# --- request handling (no ASGI in it) --------------------------------------------------------------------
def request_config(settings: object, request: PruneRequest) -> SpecPrefillConfig:
    """The config of one request: the server's, then the request's ``config``, ``keep_rate`` and ``max_kept_tokens``.

    The server's is ``settings.prune_config()`` (:class:`~specprefill.server.settings.ServerSettings`: its
    ``config`` with the shortcuts applied); the defaults when the settings could not be loaded.

    Raises:
        OverrideError: A field is unknown, of the wrong JSON type or out of range (``field`` names it).

    """
    prune_config = getattr(settings, "prune_config", None)
    base = prune_config() if callable(prune_config) else SpecPrefillConfig()
    values = dict(request.config)
    names = {name: f"config.{name}" for name in request.config}
    for name in ("keep_rate", "max_kept_tokens"):  # the request's own fields win over its config
        if getattr(request, name) is not None:
            values[name], names[name] = getattr(request, name), name
    return checked_overrides(values, base=base, where=names)


def prune_request(speculator: Speculator, request: PruneRequest, config: SpecPrefillConfig) -> PruneReply:
    """Score and prune one request with ``speculator`` (runs in the scoring worker).

    A text prompt without a question prunes exactly as ``speculator.prune(prompt, config, protected_spans=...,
    segments=...)``; messages likewise, on the rendered chat. A text prompt with a question is laid out as one
    passage and the question (:mod:`specprefill.prompt.passages`: the question steers the look-ahead and is protected),
    and the kept spans are given in the prompt text.
    """
    if isinstance(request.prompt, str) and request.question is not None:
        return _prune_with_question(speculator, request, config)
    scored = speculator.score_prompt(
        request.prompt, config, protected_spans=request.protected_spans, segments=request.segments
    )
    result = speculator.select(scored, config)
    return PruneReply(
        text=result.text,
        kept_spans=result.kept_spans,
        stats=prune_stats_object(result.stats),
        scored=scored if request.return_scores else None,
        messages=result.messages,
    )


def _prune_with_question(speculator: Speculator, request: PruneRequest, config: SpecPrefillConfig) -> PruneReply:
    prompt = str(request.prompt)
    layout = layout_passages([Passage(prompt, protected=request.protected_spans)], request.question)
    scored = score_passages(speculator, layout, config, segments=[check_segments(request.segments)])
    start, end = scored_windows(scored, layout)[0]
    result = speculator.select(scored, config)
    spans = cut_spans(result.kept_spans, (start, end))  # relative to the prompt text
    source = (scored.text or "")[start:end]
    text = source if spans == [(0, len(source))] else join_spans(source, spans, config.gap_marker)
    return PruneReply(text, spans, prune_stats_object(result.stats), scored if request.return_scores else None)


def fallback_reply(request: PruneRequest, reason: str) -> PruneReply:
    """Everything kept, flagged: the text prompt whole (for messages no text, since nothing rendered them)."""
    if isinstance(request.prompt, str):
        return PruneReply(request.prompt, [(0, len(request.prompt))], stats_object(0, 0, fallback_reason=reason))
    return PruneReply(None, [], stats_object(0, 0, fallback_reason=reason), messages=request.prompt)


def _error(status: int, message: str, kind: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _input_error(exc: BaseException) -> BaseException | None:
    """The caller's mistake behind a failure, if it is one (the service wraps what ``fn`` raised as the cause)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, (PromptError, ConfigurationError)):
            return error
    return None


def _estimate_tokens(request: PruneRequest) -> int:
    """A rough token count for the service's queue accounting (about 4 characters a token)."""
    if isinstance(request.prompt, str):
        chars = len(request.prompt) + len(request.question or "")
    else:
        chars = sum(len(str(m.get("content", ""))) for m in request.prompt)
    return chars // 4 + 1


async def handle_prune(body: object, service: ScoringRunner) -> tuple[int, dict[str, Any]]:
    """Answer one prune request: ``(status, JSON body)``; never raises for bad input or a failing speculator.

    Args:
        body: The parsed JSON body.
        service: The scoring service; :func:`prune_request` runs through ``service.run``.

    """
    try:
        request = PruneRequest.from_wire(body)
    except WireFormatError as exc:
        return _error(400, str(exc), "invalid_request_error", exc.field)
    try:
        config = request_config(service.settings, request)
    except OverrideError as exc:
        return _error(400, f"invalid settings: {exc}", "invalid_request_error", exc.field)
    work = partial(prune_request, request=request, config=config)
    try:
        reply = await service.run(work, tokens=_estimate_tokens(request))
    except Exception as exc:  # scoring unavailable (queue full, deadline, load failure, speculator error)
        bad_input = _input_error(exc)
        if bad_input is not None:
            return _error(400, str(bad_input), "invalid_request_error", "prompt")
        reason = f"{getattr(exc, 'reason', 'error')}: {type(exc).__name__}: {exc}"
        if not request.fallback:
            return _error(503, f"scoring is unavailable ({reason}); retry later", "scoring_unavailable")
        logger.warning("prune endpoint: scoring unavailable (%s); keeping everything", reason)
        return 200, fallback_reply(request, reason).to_wire()
    return 200, reply.to_wire()


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
            status, payload = await handle_prune(decode_json(body), service)
        except _RefusedError as exc:
            status, payload = _error(exc.status, str(exc), exc.kind)
            headers = exc.headers
        except WireFormatError as exc:
            status, payload = _error(400, str(exc), "invalid_request_error", exc.field)
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
