"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, backed by a real model.

Serves ``GET /v1/models``, ``POST /v1/completions`` (string or token-id prompt), ``POST
/v1/chat/completions`` (both with SSE streaming and usage) and the vLLM-style ``POST /tokenize``. Generation
goes through :class:`specprefill.backends.transformers.TransformersBackend`, so answers come from the model.
Every request body is recorded in ``server.requests`` for assertions.

Fault injection: ``server.inject(path, Fault(...), ...)`` makes the next requests to ``path`` misbehave in
order (an HTTP error with headers, a stream cut without a finish reason, malformed JSON in a stream or a
plain body, an HTML page, an empty 200, a trickling stream, a hang); later requests are served normally.
With ``restores_positions=True`` the server also acts like a vLLM server with the specprefill plugin for
the position probe: a ``logprobs`` request answers a different log-probability when ``vllm_xargs`` carries
positions (it simulates the plugin's effect; generation itself is the backend's).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from specprefill.backends.base import BaseBackend, BaseRequest, GenerationParams, StreamChunk
from specprefill.errors import SpecPrefillError

__all__ = ["Fault", "LocalOpenAIServer"]

FaultKind = Literal["status", "truncate", "bad_json_stream", "bad_json", "html", "empty", "trickle", "hang"]


@dataclass(frozen=True)
class Fault:
    """One misbehaving reply.

    Args:
        kind: ``status`` (HTTP ``status`` with ``headers``), ``truncate`` (a stream of ``text`` that ends
            without a finish reason), ``bad_json_stream`` (a stream whose second event is not JSON),
            ``bad_json`` / ``html`` / ``empty`` (a 200 reply of that kind instead of a stream), ``trickle``
            (one piece of text every ``interval`` seconds for ``seconds``), ``hang`` (no answer for ``seconds``).
    """

    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "Hello wor"
    seconds: float = 5.0
    interval: float = 0.2


class LocalOpenAIServer:
    """An OpenAI-compatible server in a background thread (use as a context manager).

    Args:
        backend: The model that answers.
        model_name: Name listed by ``/v1/models`` and accepted in requests.
        tokenize: Serve ``/tokenize`` (False: answer 404 there, like a server without it).
    """

    def __init__(
        self,
        backend: BaseBackend,
        model_name: str = "local-model",
        *,
        tokenize: bool = True,
        restores_positions: bool = False,
    ):
        self.backend = backend
        self.model_name = model_name
        self.tokenize = tokenize
        self.restores_positions = restores_positions
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.faults: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.closing = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="local-openai", daemon=True)

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``root_url + "/v1"``)."""
        return self.root_url + "/v1"

    def paths(self) -> list[str]:
        """Paths of the requests received so far, in order."""
        with self._lock:
            return [p for p, _ in self.requests]

    def record(self, path: str, body: dict[str, Any]) -> None:
        """Remember one request."""
        with self._lock:
            self.requests.append((path, body))

    def inject(self, path: str, *faults: Fault) -> None:
        """Make the next ``len(faults)`` requests to ``path`` (e.g. ``"/v1/completions"``) misbehave."""
        with self._lock:
            self.faults[path].extend(faults)

    def next_fault(self, path: str) -> Fault | None:
        """Take the next injected fault for ``path``, if any."""
        with self._lock:
            queue = self.faults.get(path)
            return queue.popleft() if queue else None

    def start(self) -> LocalOpenAIServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_state: LocalOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing -----------------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return None
        return body

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    # --- routes -------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        state = self.server_state
        if self.path.rstrip("/") == "/v1/models":
            state.record(self.path, {})
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": state.model_name, "object": "model", "created": 0, "owned_by": "specprefill-tests"}
                    ],
                },
            )
            return
        self._error(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        state = self.server_state
        body = self._body()
        if body is None:
            return
        path = self.path.rstrip("/")
        state.record(path, body)
        fault = state.next_fault(path)
        if fault is not None:
            self._fault(fault, chat=path.endswith("chat/completions"))
        elif path == "/v1/completions" and body.get("logprobs") and not body.get("stream"):
            self._probe_answer(body)
        elif path == "/tokenize" and state.tokenize:
            self._tokenize(body)
        elif path == "/v1/completions":
            self._generate(body, chat=False)
        elif path == "/v1/chat/completions":
            self._generate(body, chat=True)
        else:
            self._error(404, f"no route POST {self.path}", "not_found")

    # --- faults -------------------------------------------------------------------------------------
    def _plain(self, status: int, kind: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, fault: Fault, *, chat: bool) -> None:
        state = self.server_state
        kind = fault.kind
        if kind == "status":
            error = {"error": {"message": f"injected {fault.status}", "type": "server_error", "code": fault.status}}
            self._plain(fault.status, "application/json", json.dumps(error).encode(), fault.headers)
        elif kind == "bad_json":
            self._plain(200, "application/json", b'{"id": "cmpl-1", "choices": [{"text": "Hel')
        elif kind == "html":
            self._plain(200, "text/html; charset=utf-8", b"<html><body><h1>Welcome to nginx!</h1></body></html>")
        elif kind == "empty":
            self._plain(200, "application/json", b"")
        elif kind == "hang":
            state.closing.wait(fault.seconds)
        else:
            self._start_sse()
            piece = _piece(fault.text, chat=chat)
            self._event(piece)
            if kind == "bad_json_stream":
                self._event('{"choices": [{"index": 0, "text": "oops"')
            elif kind == "trickle":
                end = time.monotonic() + fault.seconds
                while time.monotonic() < end and not state.closing.wait(fault.interval):
                    self._event(piece)
            self._event("[DONE]")  # truncate: no event ever carried a finish reason

    def _probe_answer(self, body: dict[str, Any]) -> None:
        """A position-probe answer: logprobs that move when positions are restored (plugin simulation)."""
        state = self.server_state
        moved = bool(body.get("vllm_xargs"))
        value = -2.0 if (moved and state.restores_positions) else -1.0
        choice = {
            "index": 0,
            "text": "x",
            "finish_reason": "length",
            "logprobs": {"tokens": ["x"], "token_logprobs": [value], "top_logprobs": None, "text_offset": [0]},
        }
        self._send_json(
            200,
            {
                "id": "cmpl-probe",
                "object": "text_completion",
                "created": 0,
                "model": state.model_name,
                "choices": [choice],
                "usage": _usage(2, 1),
            },
        )

    def _tokenize(self, body: dict[str, Any]) -> None:
        backend = self.server_state.backend
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            self._error(400, "'prompt' must be a string")
            return
        tokenizer: Any = getattr(backend, "tokenizer", None)
        ids = tokenizer(prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))["input_ids"]
        limit = getattr(backend, "max_position_embeddings", None)
        self._send_json(200, {"tokens": list(ids), "count": len(ids), "max_model_len": limit})

    def _generate(self, body: dict[str, Any], *, chat: bool) -> None:
        state = self.server_state
        if body.get("model") != state.model_name:
            self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
            return
        try:
            request = self._request(body, chat=chat)
            stop = body.get("stop")
            params = GenerationParams(
                max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
                temperature=float(1.0 if body.get("temperature") is None else body["temperature"]),
                top_p=float(body.get("top_p") or 1.0),
                stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
                seed=body.get("seed"),
            )
        except (SpecPrefillError, TypeError, ValueError) as exc:
            self._error(400, str(exc))
            return
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:12]
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(rid, state.backend.stream(request, params), chat=chat, usage=usage)
            return
        try:
            out = state.backend.generate(request, params)
        except SpecPrefillError as exc:
            self._error(400, str(exc))
            return
        usage_dict = _usage(out.prompt_tokens, out.completion_tokens)
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "finish_reason": out.finish_reason,
                "logprobs": None,
            }
            self._send_json(
                200,
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": state.model_name,
                    "choices": [choice],
                    "usage": usage_dict,
                },
            )
        else:
            choice = {"index": 0, "text": out.text, "finish_reason": out.finish_reason, "logprobs": None}
            self._send_json(
                200,
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": state.model_name,
                    "choices": [choice],
                    "usage": usage_dict,
                },
            )

    def _request(self, body: dict[str, Any], *, chat: bool) -> BaseRequest:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise ValueError("'messages' must be a list")
            return BaseRequest(messages=messages)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return BaseRequest(text=prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            # a stock server: token ids get contiguous positions 0..n-1
            return BaseRequest(token_ids=prompt)
        raise ValueError("'prompt' must be a string or a list of token ids")

    def _stream(self, rid: str, chunks: Iterator[StreamChunk], *, chat: bool, usage: bool) -> None:
        state = self.server_state
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": kind, "created": created, "model": state.model_name, "choices": [choice]}

        try:
            first = next(chunks)
        except SpecPrefillError as exc:
            self._error(400, str(exc))
            return
        self._start_sse()
        if chat:
            self._event(event(None, None, role=True))
        chunk: StreamChunk | None = first
        while chunk is not None:
            if chunk.output is not None:
                if chunk.text:
                    self._event(event(chunk.text, None))
                self._event(event(None, chunk.output.finish_reason))
                if usage:
                    self._event(
                        {
                            "id": rid,
                            "object": kind,
                            "created": created,
                            "model": state.model_name,
                            "choices": [],
                            "usage": _usage(chunk.output.prompt_tokens, chunk.output.completion_tokens),
                        }
                    )
                break
            if chunk.text:
                self._event(event(chunk.text, None))
            chunk = next(chunks, None)
        self._event("[DONE]")


def _piece(text: str, *, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": None, "logprobs": None}
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": "fault-1", "object": kind, "created": 0, "model": "fault", "choices": [choice]}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
