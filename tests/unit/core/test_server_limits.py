"""BodyLimitMiddleware: oversized bodies and position maps get 413 before the app reads them (plain ASGI, no server)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from specprefill.errors import ConfigurationError
from specprefill.server import limits
from specprefill.server.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_POSITION_INTS,
    ENV_MAX_BODY_BYTES,
    ENV_MAX_POSITION_INTS,
    RUNS_FIELD,
    BodyLimitMiddleware,
    configured_max_body_bytes,
    configured_max_position_ints,
    longest_runs,
    scan_threshold,
)


class EchoApp:
    """Reads the whole body, then answers 200 with its length; records what it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.saw_disconnect = False
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            self.messages.append(message)
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


def requests(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]


def run(app: Any, chunks: list[bytes], *, method: str = "POST", length: int | None = None) -> list[dict[str, Any]]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "method": method, "path": "/v1/completions", "headers": headers}
    pending = requests(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def status(sent: list[dict[str, Any]]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def error(sent: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(json.loads(sent[-1]["body"])["error"])


def map_body(n_ints: int, *, pad: int = 0) -> bytes:
    """A completion request whose position map holds ``n_ints`` integers (``pad`` bytes of prompt text)."""
    runs = [7] * n_ints
    request = {"model": "m", "prompt": "x" * pad, "vllm_xargs": {"specprefill_runs": runs, "specprefill_orig_len": 9}}
    return json.dumps(request).encode()


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def limited(app: Any, *, body_bytes: int = 0, ints: int = 0) -> BodyLimitMiddleware:
    """The middleware with explicit limits (never the environment's)."""
    return BodyLimitMiddleware(app, max_body_bytes=body_bytes, max_position_ints=ints)


def test_declared_oversize_is_refused_without_calling_the_app() -> None:
    inner = EchoApp()
    sent = run(limited(inner, body_bytes=10), [b"x" * 11], length=11)
    assert status(sent) == 413
    assert inner.calls == 0
    error = json.loads(sent[-1]["body"])["error"]
    assert error["code"] == 413 and ENV_MAX_BODY_BYTES in error["message"]


def test_body_at_the_limit_passes() -> None:
    inner = EchoApp()
    sent = run(limited(inner, body_bytes=10), [b"x" * 10], length=10)
    assert status(sent) == 200 and sent[-1]["body"] == b"10"


def test_chunked_upload_is_cut_when_it_passes_the_limit() -> None:
    inner = EchoApp()
    sent = run(limited(inner, body_bytes=10), [b"x" * 6, b"x" * 6, b"x" * 6])
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert inner.saw_disconnect  # the app stops reading; its own reply is dropped


def test_lying_content_length_is_still_counted() -> None:
    inner = EchoApp()
    sent = run(limited(inner, body_bytes=10), [b"x" * 20], length=5)
    assert status(sent) == 413


def test_get_requests_and_limit_zero_pass_through() -> None:
    assert status(run(limited(EchoApp(), body_bytes=1, ints=1), [b"abc"], method="GET")) == 200
    assert status(run(limited(EchoApp()), [b"x" * 100], length=100)) == 200


def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(limited(app, body_bytes=1, ints=1)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


@pytest.mark.parametrize(("raw", "expected"), [("", DEFAULT_MAX_BODY_BYTES), ("0", 0), ("1024", 1024)])
def test_limit_from_environment(raw: str, expected: int) -> None:
    environ = {ENV_MAX_BODY_BYTES: raw} if raw else {}
    assert configured_max_body_bytes(environ) == expected


@pytest.mark.parametrize("raw", ["-1", "lots", "1.5"])
def test_bad_environment_value_says_how_to_fix(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=ENV_MAX_BODY_BYTES):
        configured_max_body_bytes({ENV_MAX_BODY_BYTES: raw})


@pytest.mark.parametrize("limits_", [{"max_body_bytes": -1}, {"max_position_ints": -1}])
def test_negative_limit_is_refused(limits_: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        BodyLimitMiddleware(EchoApp(), **{"max_body_bytes": 0, "max_position_ints": 0, **limits_})


# --- position maps -----------------------------------------------------------------------------------------


def test_map_over_the_int_limit_is_refused_naming_the_field() -> None:
    inner = EchoApp()
    body = map_body(101)
    sent = run(limited(inner, body_bytes=len(body), ints=100), split(body, 64), length=len(body))
    assert status(sent) == 413 and inner.calls == 0
    err = error(sent)
    assert err["param"] == RUNS_FIELD == "vllm_xargs.specprefill_runs"
    assert "101 integers" in err["message"] and "limit of 100" in err["message"]
    assert ENV_MAX_POSITION_INTS in err["message"] and err["code"] == 413


def test_map_at_the_limit_passes_with_the_same_messages_replayed() -> None:
    inner = EchoApp()
    body = map_body(100, pad=500)
    chunks = split(body, 64)
    sent = run(limited(inner, ints=100), chunks, length=len(body))
    assert status(sent) == 200 and sent[-1]["body"] == str(len(body)).encode()
    assert inner.messages == requests(chunks)  # same chunks, same order, nothing added
    assert b"".join(m["body"] for m in inner.messages) == body


def test_chunked_body_without_content_length_is_scanned() -> None:
    over, under = EchoApp(), EchoApp()
    assert status(run(limited(over, ints=100), split(map_body(150), 50))) == 413 and over.calls == 0
    body = map_body(60)
    assert status(run(limited(under, ints=100), split(body, 50))) == 200
    assert b"".join(m["body"] for m in under.messages) == body


def test_chunked_body_over_the_byte_limit_is_refused_while_buffering() -> None:
    inner = EchoApp()
    sent = run(limited(inner, body_bytes=100, ints=10), [b"x" * 60, b"x" * 60, b"x" * 60])
    assert status(sent) == 413 and inner.calls == 0
    assert ENV_MAX_BODY_BYTES in error(sent)["message"] and error(sent)["param"] is None


def test_small_bodies_are_not_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(messages: Any) -> int:
        raise AssertionError("scanned")

    monkeypatch.setattr(limits, "_scan_messages", fail)
    body = map_body(100)  # longer than the limit of 1,000 ints would need: 2,001 bytes at least
    assert len(body) <= scan_threshold(1000)  # type: ignore[operator]
    assert status(run(limited(EchoApp(), ints=1000), [body], length=len(body))) == 200
    assert status(run(limited(EchoApp(), ints=1000), split(body, 100))) == 200  # chunked: buffered, not scanned


def test_client_gone_while_buffering_reaches_the_app_as_a_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(messages: Any) -> int:
        raise AssertionError("a body nobody waits for was scanned")

    monkeypatch.setattr(limits, "_scan_messages", fail)
    inner = EchoApp()
    scope = {"type": "http", "method": "POST", "headers": []}
    pending = [{"type": "http.request", "body": b"x" * 10, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(limited(inner, ints=1)(scope, receive, send))
    assert inner.saw_disconnect and inner.messages[0]["body"] == b"x" * 10


def test_scan_runs_off_the_event_loop_while_other_coroutines_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan waits until a ticker task on the loop has advanced: that only ends if it runs off the loop."""
    real_scan = limits._scan_messages
    ticks = 0
    scanning = threading.Event()
    ticked = threading.Event()
    seen: dict[str, Any] = {}

    def slow_scan(messages: Any) -> int:
        seen["thread"] = threading.get_ident()
        seen["ticks_before"] = ticks
        scanning.set()
        seen["ticked"] = ticked.wait(timeout=10)  # only a guard against hanging; the loop sets it at once
        seen["ticks_after"] = ticks
        return real_scan(messages)

    monkeypatch.setattr(limits, "_scan_messages", slow_scan)
    body = map_body(5000)

    async def main() -> list[dict[str, Any]]:
        nonlocal ticks
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                if scanning.is_set():
                    ticked.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        seen["loop_thread"] = threading.get_ident()
        sent: list[dict[str, Any]] = []
        pending = requests(split(body, 4096))

        async def receive() -> dict[str, Any]:
            return pending.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "headers": [(b"content-length", str(len(body)).encode())]}
        await limited(EchoApp(), ints=1000)(scope, receive, send)
        done = True
        await task
        return sent

    sent = asyncio.run(main())
    assert status(sent) == 413 and error(sent)["param"] == RUNS_FIELD
    assert seen["ticked"] and seen["ticks_after"] > seen["ticks_before"]
    assert seen["thread"] != seen["loop_thread"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"vllm_xargs": {"specprefill_runs": [0, 3, 10, 2], "specprefill_orig_len": 12}}', 4),
        (b'{"vllm_xargs":{"specprefill_runs"\n :\t[ 5 ]}}', 1),
        (b'{"vllm_xargs": {"specprefill_runs": []}}', 0),
        (b'{"vllm_xargs": {"specprefill_runs": "0,1,2"}}', 0),  # not a list: the guard answers it
        (b'{"prompt": "hello, world"}', 0),
        (b'{"prompt": "say \\"specprefill_runs\\": [1, 2, 3]"}', 0),  # inside a string
        (b'{"x\\"specprefill_runs": [1, 2, 3]}', 0),  # a key ending in an escaped quote
        (b'{"a\\\\": 1, "specprefill_runs": [1, 2, 3]}', 3),  # a string ending in a backslash before it
        (b'{"specprefill_runs": [1, 2], "vllm_xargs": {"specprefill_runs": [1, 2, 3, 4, 5, 6]}}', 6),  # longest
        (b'{"vllm_xargs": {"specprefill_runs": [1, 2, 3', 3),  # truncated: counted to the end
    ],
)
def test_longest_runs(body: bytes, expected: int) -> None:
    assert longest_runs(body) == expected


def test_longest_runs_counts_across_slices() -> None:
    body = map_body(1001)
    assert {longest_runs(body, slice_bytes=size) for size in (1, 7, 64, 1 << 20)} == {1001}
    assert (
        longest_runs(json.dumps({"vllm_xargs": {"specprefill_runs": list(range(10**6, 10**6 + 999))}}).encode()) == 999
    )


def test_longest_runs_examines_a_bounded_number_of_keys() -> None:
    decoys = ", ".join(f'"k{i}": {{"specprefill_runs": [1]}}' for i in range(limits.MAX_RUNS_KEYS))
    body = ("{" + decoys + ', "vllm_xargs": {"specprefill_runs": [1, 2, 3]}}').encode()
    assert longest_runs(body) == 1  # left to the guard


def test_scan_threshold_is_the_smallest_body_that_can_break_the_limit() -> None:
    assert scan_threshold(0) is None
    smallest = b"[" + b",".join([b"0"] * 4) + b"]"  # 4 ints: over a limit of 3 in the fewest bytes
    assert len(smallest) - 2 == scan_threshold(3) + 1  # type: ignore[operator]


@pytest.mark.parametrize(("raw", "expected"), [("", DEFAULT_MAX_POSITION_INTS), ("0", 0), ("1000", 1000)])
def test_int_limit_from_environment(raw: str, expected: int) -> None:
    environ = {ENV_MAX_POSITION_INTS: raw} if raw else {}
    assert configured_max_position_ints(environ) == expected


@pytest.mark.parametrize("raw", ["-1", "lots", "1.5"])
def test_bad_int_limit_says_how_to_fix(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=ENV_MAX_POSITION_INTS):
        configured_max_position_ints({ENV_MAX_POSITION_INTS: raw})
