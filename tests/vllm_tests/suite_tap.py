"""What the suite server did with every chat request the standard suites sent: recorded in the HTTP client, checked.

The suites drive stock clients (``ChatOpenAI``, ``OpenAILike``) and the integrations' server modes, which
all speak through the ``openai`` SDK and so through httpx. :class:`ExchangeTap` patches httpx's two
transports for one test: every ``/v1/chat/completions`` request to the suite server gets
``vllm_xargs.specprefill_return_kept = true`` added (it makes the server list the kept positions in its stats
and changes nothing else), and the response's ``specprefill`` stats are read as the client reads the body
(JSON, or every SSE event of a stream), without changing it. :meth:`ExchangeTap.problems` then checks each
exchange:

- the answer carries the stats (once in a stream), it was scored (``speculator_seconds > 0``: not passed
  through as short) and nothing fell back;
- it was pruned (``tokens_kept < tokens_in``), unless its message contents hold a single token, which a keep
  rate cannot cut (``ceil(0.5 * 1) = 1``): then every token is kept;
- the kept positions are ``tokens_kept`` many and, when the request has tools, hold every token of the rendered
  tools block (``# Tools`` to the end of that system turn; the server's ``/tokenize`` renders the same request).

Counts per client go to the end-of-run summary (:func:`summary`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from specprefill.vllm_plugin.positions import decode_runs

MODEL = "smollm2-135m"
CHAT_PATH = "/v1/chat/completions"
TOOLS_START = "# Tools"
"""Where the suite template's tools block begins (it ends with its system turn's ``<|im_end|>``)."""

_COUNTS: dict[str, Counter[str]] = {}
_LOCK = threading.Lock()


@dataclass
class Exchange:
    """One chat request to the suite server and what came back."""

    body: dict[str, Any]
    status: int = 0
    stats: list[dict[str, Any]] = field(default_factory=list)
    """Every ``specprefill`` object of the answer (a stream must carry exactly one)."""
    raw: bytearray = field(default_factory=bytearray)
    done: bool = False

    def finish(self, content_type: str) -> None:
        if self.done:
            return
        self.done = True
        text = self.raw.decode(errors="replace")
        if "text/event-stream" in content_type:
            events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        else:
            events = [text]
        objects = []
        for event in events:
            with contextlib.suppress(ValueError):  # [DONE], or an event cut off by an early close
                objects.append(json.loads(event))
        self.stats = [o["specprefill"] for o in objects if isinstance(o, dict) and "specprefill" in o]


class _SyncTap(httpx.SyncByteStream):
    def __init__(self, inner: Any, exchange: Exchange, content_type: str) -> None:
        self.inner, self.exchange, self.content_type = inner, exchange, content_type

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.exchange.raw.extend(chunk)
            yield chunk
        self.exchange.finish(self.content_type)

    def close(self) -> None:  # clients may close a stream after its [DONE] without reading on
        self.exchange.finish(self.content_type)
        self.inner.close()


class _AsyncTap(httpx.AsyncByteStream):
    def __init__(self, inner: Any, exchange: Exchange, content_type: str) -> None:
        self.inner, self.exchange, self.content_type = inner, exchange, content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.exchange.raw.extend(chunk)
            yield chunk
        self.exchange.finish(self.content_type)

    async def aclose(self) -> None:
        self.exchange.finish(self.content_type)
        await self.inner.aclose()


class ExchangeTap:
    """Records the chat exchanges of one test with the server at ``root_url`` (see the module docstring)."""

    def __init__(self, root_url: str, label: str) -> None:
        self.root = httpx.URL(root_url)
        self.label = label
        self.exchanges: list[Exchange] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch httpx's transports until the test ends (``monkeypatch`` undoes it)."""
        sync_send, async_send = httpx.HTTPTransport.handle_request, httpx.AsyncHTTPTransport.handle_async_request
        tap = self

        def handle_request(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
            if not tap._ours(request):
                return sync_send(transport, request)
            request, exchange = tap._begin(request)
            response = sync_send(transport, request)
            exchange.status = response.status_code
            response.stream = _SyncTap(response.stream, exchange, response.headers.get("content-type", ""))
            return response

        async def handle_async_request(transport: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
            if not tap._ours(request):
                return await async_send(transport, request)
            request, exchange = tap._begin(request)
            response = await async_send(transport, request)
            exchange.status = response.status_code
            response.stream = _AsyncTap(response.stream, exchange, response.headers.get("content-type", ""))
            return response

        monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
        monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)

    def _ours(self, request: httpx.Request) -> bool:
        url = request.url
        return (url.host, url.port) == (self.root.host, self.root.port) and url.path == CHAT_PATH

    def _begin(self, request: httpx.Request) -> tuple[httpx.Request, Exchange]:
        body = json.loads(request.read())
        xargs = dict(body.get("vllm_xargs") or {})
        xargs["specprefill_return_kept"] = True
        sent = {**body, "vllm_xargs": xargs}
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
        content = json.dumps(sent).encode()
        new = httpx.Request(request.method, request.url, headers=headers, content=content)
        new.extensions = request.extensions
        exchange = Exchange(body=body)
        with _LOCK:
            self.exchanges.append(exchange)
        return new, exchange

    # --- checks ------------------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every way an exchange of this test broke the rules of the module docstring (empty: all is well)."""
        out: list[str] = []
        for n, exchange in enumerate(self.exchanges):
            where = f"request {n + 1} ({_describe(exchange.body)})"
            found = _problems_of(self.root, exchange)
            out.extend(f"{where}: {p}" for p in found)
            _count(self.label, exchange, found)
        return out

    def pruned(self) -> list[dict[str, Any]]:
        """The stats of this test's exchanges (one per exchange that had any)."""
        return [e.stats[0] for e in self.exchanges if e.stats]


def _problems_of(root: httpx.URL, exchange: Exchange) -> list[str]:
    if exchange.status != 200:
        return [f"HTTP {exchange.status}: {exchange.raw[:300].decode(errors='replace')}"]
    if not exchange.done:
        return ["the answer was never read to its end"]
    if len(exchange.stats) != 1 or any(s != exchange.stats[0] for s in exchange.stats):
        return [f"expected one specprefill stats object, got {exchange.stats}"]
    stats = exchange.stats[0]
    problems = []
    if stats["fallback"] or stats["fallback_reason"] is not None:
        problems.append(f"fell back: {stats['fallback_reason']}")
    if not stats["speculator_seconds"] > 0:
        problems.append(f"not scored (passed through as short?): {stats}")
    kept = decode_runs(stats.get("kept_runs") or [])
    if len(kept) != stats["tokens_kept"]:
        problems.append(f"kept_runs hold {len(kept)} positions, tokens_kept is {stats['tokens_kept']}")
    contents = content_tokens(exchange.body.get("messages") or [])
    if contents >= 2 and not stats["tokens_kept"] < stats["tokens_in"]:
        problems.append(f"not pruned although its contents hold {contents} tokens: {stats}")
    if contents < 2 and stats["tokens_kept"] != stats["tokens_in"]:
        problems.append(f"a single content token, yet {stats['tokens_in'] - stats['tokens_kept']} tokens dropped")
    if exchange.body.get("tools"):
        block = tools_block(root, exchange.body, stats["tokens_in"])
        missing = sorted(set(block) - set(kept))
        if len(block) < 20 or missing:
            problems.append(f"tools block of {len(block)} tokens not kept whole: positions {missing[:20]} dropped")
    return problems


def _describe(body: dict[str, Any]) -> str:
    last = (body.get("messages") or [{}])[-1]
    text = last.get("content") if isinstance(last, dict) else None
    tools = f", {len(body['tools'])} tools" if body.get("tools") else ""
    return f"{len(body.get('messages') or [])} messages{tools}, last {str(text)[:40]!r}"


def _count(label: str, exchange: Exchange, problems: list[str]) -> None:
    stats = exchange.stats[0] if exchange.stats else {}
    with _LOCK:
        counts = _COUNTS.setdefault(label, Counter())
        counts["requests"] += 1
        counts["pruned"] += bool(stats.get("pruned"))
        counts["scored, one content token: all kept"] += bool(stats) and not stats.get("pruned")
        counts["with tools (block kept whole)"] += bool(exchange.body.get("tools")) and not problems
        counts["with problems"] += bool(problems)
        counts["tokens in"] += int(stats.get("tokens_in", 0))
        counts["tokens kept"] += int(stats.get("tokens_kept", 0))


def summary(terminalreporter: Any) -> None:
    """The per-client counts of every checked exchange (call from ``pytest_terminal_summary``)."""
    if not _COUNTS:
        return
    terminalreporter.section("specprefill: what the suite server did with the suites' chat requests")
    for label, counts in sorted(_COUNTS.items()):
        terminalreporter.write_line(f"{label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# --- the tokenizer's view -------------------------------------------------------------------------------------
@functools.cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from specprefill.speculator.loading import cached_dense_dir, resolve_model_dir

    return AutoTokenizer.from_pretrained(str(cached_dense_dir(MODEL) or resolve_model_dir(MODEL)))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def content_tokens(messages: list[dict[str, Any]]) -> int:
    """Tokens of all message contents (what the suite server may prune), each content tokenised alone."""
    tokenizer = _tokenizer()
    return sum(len(tokenizer.encode(_text_of(m.get("content")), add_special_tokens=False)) for m in messages)


def tools_block(root: httpx.URL, body: dict[str, Any], tokens_in: int) -> list[int]:
    """Token positions of the rendered tools block of the chat request ``body`` (the server renders it)."""
    request = {"model": MODEL, "messages": body["messages"], "tools": body["tools"], "add_generation_prompt": True}
    reply = httpx.post(str(root.copy_with(path="/tokenize")), json=request, timeout=60)
    reply.raise_for_status()
    ids = reply.json()["tokens"]
    assert len(ids) == tokens_in, f"/tokenize gave {len(ids)} tokens, the chat request had {tokens_in}"
    tokenizer = _tokenizer()
    rendered = tokenizer.decode(ids)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == ids, "the rendering does not tokenise back into the server's ids"
    start = rendered.index(TOOLS_START)
    end = rendered.index("<|im_end|>", start) + len("<|im_end|>")
    return [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """This module is a plugin of the suite modules (``pytest_plugins``): print the counts at the end."""
    summary(terminalreporter)
