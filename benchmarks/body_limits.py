"""Huge position maps against a running server: each request's status and time, and how long /health stalls.

Starts nothing: give the ``--url`` of a running ``specprefill serve`` server. Sends ``--requests`` completion
requests at once, each with a ``vllm_xargs.specprefill_runs`` of ``--ints`` integers (default: as many as fill
``--mb`` megabytes of JSON, 16.0 MB, just under the 16 MiB body limit), while polling ``/health`` every 10 ms.
Prints each request's HTTP status and seconds, then the largest and median ``/health`` latency while they ran.
Compare against a server started with ``SPECPREFILL_SERVER_MAX_POSITION_INTS=0`` (map check off).

``python -m benchmarks.body_limits --url http://127.0.0.1:8000 --requests 4``
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Reply", "main", "map_request", "parse_args", "poll_health", "post"]

POLL_SECONDS = 0.01
"""Pause between two ``/health`` polls."""

_INT_BYTES = 9
"""JSON bytes per integer of the generated map: a 7-digit number and ``", "``."""


@dataclass(frozen=True)
class Reply:
    """One request's outcome."""

    status: int
    seconds: float
    detail: str


def map_request(model: str, ints: int) -> bytes:
    """A completion request whose position map holds ``ints`` 7-digit integers."""
    xargs = {"specprefill_runs": [1_000_000 + i % 9_000_000 for i in range(ints)], "specprefill_orig_len": 2**20}
    return json.dumps({"model": model, "prompt": "hi", "max_tokens": 1, "vllm_xargs": xargs}).encode()


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)


def post(url: str, path: str, body: bytes, timeout: float = 300.0) -> Reply:
    """POST ``body`` as JSON; the status, the seconds until the whole reply was read, and its error message."""
    conn = _connection(url, timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - start
    except OSError as exc:  # the server may close the connection before reading the whole body
        return Reply(0, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    try:
        error = json.loads(data).get("error") or {}
        detail = f"param={error.get('param')} {str(error.get('message', ''))[:100]}"
    except (ValueError, AttributeError):
        detail = data[:100].decode(errors="replace")
    return Reply(response.status, seconds, detail)


def poll_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """GET ``/health`` every :data:`POLL_SECONDS` until ``stop``, appending each reply's latency."""
    conn = _connection(url, 30.0)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
        except OSError:
            conn.close()
            conn = _connection(url, 30.0)
            continue
        latencies.append(time.perf_counter() - start)
        stop.wait(POLL_SECONDS)
    conn.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.body_limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=1, help="huge-map requests sent at once (default 1)")
    parser.add_argument("--mb", type=float, default=16.0, help="body size in megabytes (default 16.0)")
    parser.add_argument("--ints", type=int, help="integers in each map (default: as many as fill --mb)")
    parser.add_argument("--model", default="smollm2-135m", help="model name sent (default smollm2-135m)")
    parser.add_argument("--path", default="/v1/completions", help="route (default /v1/completions)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the results."""
    args = parse_args(argv)
    ints = args.ints if args.ints is not None else int(args.mb * 1e6) // _INT_BYTES
    body = map_request(args.model, ints)
    print(f"{args.requests} request(s) of {len(body) / 1e6:.1f} MB, {ints:,} integers each, to {args.url}{args.path}")
    stop, latencies = threading.Event(), list[float]()
    poller = threading.Thread(target=poll_health, args=(args.url, stop, latencies), daemon=True)
    poller.start()
    time.sleep(0.2)
    replies: list[Reply | None] = [None] * args.requests

    def send(i: int) -> None:
        replies[i] = post(args.url, args.path, body)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(args.requests)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    stop.set()
    poller.join()
    for i, reply in enumerate(replies):
        assert reply is not None
        print(f"request {i}: HTTP {reply.status} in {reply.seconds:.2f} s  {reply.detail}")
    if latencies:
        print(
            f"/health: {len(latencies)} polls, max {max(latencies) * 1e3:.0f} ms, "
            f"median {statistics.median(latencies) * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
