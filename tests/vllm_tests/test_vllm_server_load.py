"""The pruning server under hostile input and load, over real HTTP (issue 20).

Hostile settings, oversized maps and prompts get a typed 4xx naming what is wrong, while ``/health`` keeps
answering; an abandoned prune request does not hold the speculator; SIGTERM answers a waiting request with
a 503. Assertions are statuses, counts and orderings; the timings the issue quotes are printed by
``python -m benchmarks.body_limits`` and ``python -m benchmarks.serve_load``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("serving", "vllm_helpers")  # before the imports, so pytest_plugins sees them
from serving import ServerHandle, post_json, running_server  # noqa: E402
from vllm_helpers import needs_vllm  # noqa: E402

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["serving"]

MODEL = "smollm2-135m"


def document(n: int, seed: int = 0) -> str:
    return " ".join(f"Record {i + seed}: the barge {(i * 7 + seed) % 11} carried {3 + i % 5} crates." for i in range(n))


def chat_body(doc: str, **xargs: Any) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "Answer in a few words."},
        {"role": "user", "content": doc + "\n\nQuestion: how many crates did the barge in record 12 carry?"},
    ]
    body: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0.0}
    if xargs:
        body["vllm_xargs"] = xargs
    return body


def post(server: ServerHandle, path: str, payload: dict[str, Any] | bytes, timeout: float = 600) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, text, _ = post_json(server.root_url + path, data, timeout=timeout)
    return status, json.loads(text) if text.strip().startswith("{") else text


class HealthPoller:
    """Polls ``/health`` every 10 ms on a thread while the block runs; counts the answers."""

    def __init__(self, server: ServerHandle) -> None:
        self.url = server.root_url + "/health"
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    if response.status == 200:
                        self.latencies.append(time.perf_counter() - start)
            except OSError:
                pass
            self._stop.wait(0.01)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def health(spec_server: ServerHandle) -> Iterator[HealthPoller]:
    with HealthPoller(spec_server) as poller:
        yield poller
    assert poller.latencies, "/health never answered while the hostile requests ran"


@pytest.mark.parametrize(
    ("raw_xargs", "key"),
    [
        (b'{"specprefill_keep_rate": true}', "specprefill_keep_rate"),
        (b'{"specprefill_keeprate": 0.01}', "specprefill_keeprate"),
        (b'{"specprefill_max_kept_tokens": "lots"}', "specprefill_max_kept_tokens"),
    ],
)
def test_hostile_settings_are_a_400_naming_the_key(
    spec_server: ServerHandle, health: HealthPoller, raw_xargs: bytes, key: str
) -> None:
    body = json.dumps(chat_body(document(45))).encode()
    hostile = body[:-1] + b', "vllm_xargs": ' + raw_xargs + b"}"  # literal JSON, booleans included
    for path in ("/v1/chat/completions", "/v1/completions"):
        payload = hostile if path.endswith("chat/completions") else _completion(raw_xargs)
        status, reply = post(spec_server, path, payload)
        assert status == 400, reply
        assert key in json.dumps(reply), reply


def _completion(raw_xargs: bytes) -> bytes:
    body = json.dumps({"model": MODEL, "prompt": document(45), "max_tokens": 2}).encode()
    return body[:-1] + b', "vllm_xargs": ' + raw_xargs + b"}"


def test_a_huge_position_map_and_a_huge_prune_request_are_refused(
    spec_server: ServerHandle, health: HealthPoller
) -> None:
    runs = list(range(0, 3_600_000, 2))  # about 16 MB of JSON: far over the map limit in integers
    body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 1}
    body["vllm_xargs"] = {"specprefill_runs": runs, "specprefill_orig_len": 10**7}
    status, reply = post(spec_server, "/v1/completions", body)
    assert status == 413 and "specprefill_runs" in json.dumps(reply), reply
    status, reply = post(spec_server, "/specprefill/v1/prune", {"prompt": "word " * 40_000})  # 200,000 chars
    assert status == 413 and reply["error"]["type"] == "request_too_large", reply


def test_an_abandoned_prune_request_does_not_hold_the_speculator(spec_server: ServerHandle) -> None:
    """A client that gives up on a long prune request frees the speculator: the next chat is scored at once."""
    long_prompt = document(1300)  # about 25k tokens: under the prune endpoint's cap, long to score
    with pytest.raises(OSError):  # the client gives up after 3 s (the server would take far longer)
        urllib.request.urlopen(
            urllib.request.Request(
                spec_server.root_url + "/specprefill/v1/prune",
                data=json.dumps({"prompt": long_prompt}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=3,
        )
    time.sleep(1.0)
    sent = time.perf_counter()
    status, reply = post(spec_server, "/v1/chat/completions", chat_body(document(45)))
    waited = time.perf_counter() - sent
    stats = reply["specprefill"]
    assert status == 200 and stats["pruned"] and not stats["fallback"], stats
    # measured side by side: the chat took far less than scoring the abandoned prompt would have
    per_token = stats["speculator_seconds"] / stats["tokens_in"]
    assert waited < 0.5 * per_token * 25_000, (waited, per_token)


def test_sigterm_answers_a_waiting_request_with_a_503() -> None:
    """SIGTERM while requests wait for the speculator: they get a 503 at once, not a 500 at their deadline."""
    env = {"SPECPREFILL_SERVER_DEADLINE_SECONDS": "300", "SPECPREFILL_SERVER_COST_GUARD": "false"}
    with running_server(env=env) as server:
        results: list[tuple[int, Any, float]] = []

        def one(seed: int) -> None:
            start = time.perf_counter()
            status, reply = post(server, "/v1/chat/completions", chat_body(document(160, seed)), timeout=300)
            results.append((status, reply, time.perf_counter() - start))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]  # one scored, two queued
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        for thread in threads:
            thread.join(120)
        statuses = sorted(status for status, _, _ in results)
        assert 503 in statuses, (results, server.log_tail())
        assert all(status in (200, 503) for status in statuses), results
        for status, reply, _ in results:
            if status == 503:
                assert "shutting down" in json.dumps(reply), reply
        assert time.perf_counter() - signalled < 100, "the waiting requests were not answered before the server stopped"
