"""A scripted stand-in for a vLLM server that prunes with specprefill, on 127.0.0.1 (for unit tests only).

It speaks just enough of the OpenAI API for ``ChatOpenAI`` / ``OpenAILike`` (``/v1/models`` and
``/v1/chat/completions``, plain and SSE) and answers with the wire contract of server-side pruning: a
top-level ``"specprefill"`` stats object beside ``"usage"``; streams carry it on the chunk with the finish
reason and again on the usage chunk (``stream_options.include_usage``), as ``specprefill serve`` does. The
stats follow the request's ``vllm_xargs`` keep rate (``tokens_in`` 200, ``tokens_kept = round(200 *
keep_rate)``), so tests can see that overrides arrived. ``stats_mode`` breaks the contract on purpose:
``"missing"``, ``"not_object"``, ``"bad_types"``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest

__all__ = ["FakeVLLMServer", "StatsMode", "fake_vllm"]

StatsMode = Literal["ok", "missing", "not_object", "bad_types"]

TOKENS_IN = 200
SERVED = "served-model"


class FakeVLLMServer:
    """Background HTTP server (context manager); every request body lands in :attr:`requests`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.content = "Hello there friend"
        self.tool_calls: list[dict[str, Any]] | None = None
        self.stats_mode: StatsMode = "ok"
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """API root including ``/v1``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeVLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def stats_for(self, body: dict[str, Any]) -> Any:
        """The stats object (or a broken one) for a request ``body``."""
        keep = float((body.get("vllm_xargs") or {}).get("specprefill_keep_rate", 0.3))
        kept = round(TOKENS_IN * keep)
        stats = {
            "tokens_in": TOKENS_IN,
            "tokens_kept": kept,
            "keep_ratio": kept / TOKENS_IN,
            "speculator_seconds": 0.01,
            "positions": "original" if kept < TOKENS_IN else "none",
            "fallback": False,
            "fallback_reason": None,
            "pruned": kept < TOKENS_IN,
        }
        if self.stats_mode == "not_object":
            return "pruned"
        if self.stats_mode == "bad_types":
            return {**stats, "tokens_kept": "many", "pruned": 1}
        return stats

    def usage_for(self, body: dict[str, Any]) -> dict[str, int]:
        """Usage: the prompt counts the kept tokens, the answer one token per word."""
        stats = self.stats_for({**body})
        prompt = stats["tokens_kept"] if isinstance(stats, dict) and isinstance(stats["tokens_kept"], int) else 1
        completion = len(self.content.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def message(self) -> dict[str, Any]:
        """The assistant message of a non-streamed answer."""
        if self.tool_calls is not None:
            return {"role": "assistant", "content": None, "tool_calls": self.tool_calls}
        return {"role": "assistant", "content": self.content}

    def with_stats(self, payload: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """``payload`` with the stats object unless ``stats_mode`` is ``"missing"``."""
        return payload if self.stats_mode == "missing" else {**payload, "specprefill": self.stats_for(body)}

    def chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed chat completion."""
        finish = "tool_calls" if self.tool_calls is not None else "stop"
        payload = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model", SERVED),
            "choices": [{"index": 0, "message": self.message(), "finish_reason": finish}],
            "usage": self.usage_for(body),
        }
        return self.with_stats(payload, body)

    def chat_chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks of a streamed chat completion, the stats on the final one."""
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body.get("model")}
        words = self.content.split(" ")
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": (" " if i else "") + w} for i, w in enumerate(words)
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks[-1] = self.with_stats(chunks[-1], body)
        if (body.get("stream_options") or {}).get("include_usage"):  # the stats again, as the real server does
            chunks.append(self.with_stats({**base, "choices": [], "usage": self.usage_for(body)}, body))
        return chunks


@pytest.fixture
def fake_vllm() -> Iterator[FakeVLLMServer]:
    """A fresh scripted server on 127.0.0.1 (stats in every answer until ``stats_mode`` says otherwise).

    Test modules load it with ``pytest_plugins = ["fake_vllm_server"]`` (a ``conftest.py`` in a subfolder
    would shadow ``tests/conftest.py`` for ``from conftest import ...``).
    """
    with FakeVLLMServer() as server:
        yield server


def _handler(server: FakeVLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, payload: Any, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._json({"object": "list", "data": [{"id": SERVED, "object": "model", "owned_by": "me"}]})
            else:
                self._json({"error": {"message": "not found"}}, 404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            server.requests.append(body)
            if self.path != "/v1/chat/completions":
                self._json({"error": {"message": "not found"}}, 404)
            elif not body.get("stream"):
                self._json(server.chat_body(body))
            else:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in server.chat_chunks(body):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

    return Handler
