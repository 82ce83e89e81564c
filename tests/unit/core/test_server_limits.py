"""BodyLimitMiddleware: oversized bodies get 413 before the app reads them (plain ASGI, no server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from specprefill.errors import ConfigurationError
from specprefill.server.limits import (
    DEFAULT_MAX_BODY_BYTES,
    ENV_MAX_BODY_BYTES,
    BodyLimitMiddleware,
    configured_max_body_bytes,
)


class EchoApp:
    """Reads the whole body, then answers 200 with its length; records what it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.saw_disconnect = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect = True
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b"gone"})
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def run(app: Any, chunks: list[bytes], *, method: str = "POST", length: int | None = None) -> list[dict[str, Any]]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "method": method, "path": "/v1/completions", "headers": headers}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def status(sent: list[dict[str, Any]]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_declared_oversize_is_refused_without_calling_the_app() -> None:
    inner = EchoApp()
    sent = run(BodyLimitMiddleware(inner, max_body_bytes=10), [b"x" * 11], length=11)
    assert status(sent) == 413
    assert inner.calls == 0
    error = json.loads(sent[-1]["body"])["error"]
    assert error["code"] == 413 and ENV_MAX_BODY_BYTES in error["message"]


def test_body_at_the_limit_passes() -> None:
    inner = EchoApp()
    sent = run(BodyLimitMiddleware(inner, max_body_bytes=10), [b"x" * 10], length=10)
    assert status(sent) == 200 and sent[-1]["body"] == b"10"


def test_chunked_upload_is_cut_when_it_passes_the_limit() -> None:
    inner = EchoApp()
    sent = run(BodyLimitMiddleware(inner, max_body_bytes=10), [b"x" * 6, b"x" * 6, b"x" * 6])
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert inner.saw_disconnect  # the app stops reading; its own reply is dropped


def test_lying_content_length_is_still_counted() -> None:
    inner = EchoApp()
    sent = run(BodyLimitMiddleware(inner, max_body_bytes=10), [b"x" * 20], length=5)
    assert status(sent) == 413


def test_get_requests_and_limit_zero_pass_through() -> None:
    assert status(run(BodyLimitMiddleware(EchoApp(), max_body_bytes=1), [b"abc"], method="GET")) == 200
    assert status(run(BodyLimitMiddleware(EchoApp(), max_body_bytes=0), [b"x" * 100], length=100)) == 200


def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(BodyLimitMiddleware(app, max_body_bytes=1)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


@pytest.mark.parametrize(("raw", "expected"), [("", DEFAULT_MAX_BODY_BYTES), ("0", 0), ("1024", 1024)])
def test_limit_from_environment(raw: str, expected: int) -> None:
    environ = {ENV_MAX_BODY_BYTES: raw} if raw else {}
    assert configured_max_body_bytes(environ) == expected


@pytest.mark.parametrize("raw", ["-1", "lots", "1.5"])
def test_bad_environment_value_says_how_to_fix(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=ENV_MAX_BODY_BYTES):
        configured_max_body_bytes({ENV_MAX_BODY_BYTES: raw})


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        BodyLimitMiddleware(EchoApp(), max_body_bytes=-1)
