"""``specprefill serve`` under load: pruning on and off, side by side, at several concurrency levels.

One run starts ONE server exactly as the README's serve line does (``specprefill serve smollm2-135m
--speculator smollm2-135m --keep-rate 0.3``, on a free port; options after ``--`` go to the launcher, which
passes the ones it does not know to vLLM), waits for ``/health`` and, for each ``--levels`` value N, sends N
concurrent streamed chat requests of about ``--tokens`` prompt tokens twice: with pruning on (no
``vllm_xargs``: the server's keep rate) and off (``{"specprefill_keep_rate": 1.0}``). Every request has its
own document and its own system line, so no request hits another's prefix cache. The server is stopped at
the end, also on an error or Ctrl-C. ``--url`` benchmarks a server that is already running instead.

Per level and setting it prints the requests pruned, passed through and fallen back (by ``fallback_reason``,
the code before any ``:``), read from the ``specprefill`` stats object on each stream's final chunk (the
closing ``usage`` chunk); a stream without that object is counted as ``no stats``, one whose object is
malformed or not on the final chunk as ``bad stats``, a request that raised as ``failed``: none of them is a
success. Then TTFT p50/p95 (request sent -> first streamed content token; a stream with no content counts
its ``finish_reason`` chunk and is flagged), requests/s (answered requests / wall time of the level), mean
prompt tokens in and kept, mean speculator seconds, and the pruned/off ratios of TTFT and requests/s
(below 1 is faster for TTFT, above 1 is more throughput). Every request generates exactly ``--max-tokens``
tokens (``ignore_eos``), so pruned and unpruned requests do the same decode work.

``--hostile`` adds a last phase: one ``POST /specprefill/v1/prune`` of ``--hostile-chars`` (200,000)
characters whose client gives up after ``--hostile-timeout`` seconds, then, ``--hostile-wait`` (40) seconds
after it was sent, one ordinary chat of ``--hostile-tokens`` (1,024) tokens; it reports whether that chat was
pruned (the server must have dropped the abandoned job instead of scoring it for minutes).

Full: ``python -m benchmarks.serve_load --hostile --out load.json``. Small, on a CPU launcher that does not
add its CPU flags itself: ``python -m benchmarks.serve_load --levels 2 4 --tokens 800 -- --enforce-eager
--gpu-memory-utilization 0.5 --kv-cache-memory-bytes 1073741824``. GPU test shape: ``--base 1.7b`` (dummy
weights, see :mod:`benchmarks.serve_ttft`) ``-- --device cuda:0 --gpu-memory-utilization 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serve_ttft import SERVE_SHAPES, SHAPE_ENV, _base_folder, _wait_healthy, make_prompts, percentile

__all__ = [
    "FAILED",
    "MALFORMED",
    "MISPLACED",
    "MISSING",
    "PASSED",
    "PRUNED",
    "HostileResult",
    "LevelRow",
    "count_outcomes",
    "hostile_document",
    "hostile_probe",
    "main",
    "outcome",
    "parse_args",
    "report_json",
    "root_url",
    "stats_problem",
    "summarize_level",
    "table",
    "with_ratios",
]

ROOT = Path(__file__).resolve().parents[1]

PRUNED = "pruned"
PASSED = "passed_through"
MISSING = "missing_stats"
"""The response carried no ``specprefill`` stats object at all."""
MALFORMED = "malformed_stats"
"""The stats object is not the documented shape (wrong types, contradictory fields)."""
MISPLACED = "misplaced_stats"
"""A stats object came on a chunk other than the stream's final one, or more than once."""
FAILED = "failed"
"""The request itself raised (HTTP error, disconnect, client timeout): no answer."""
FALLBACK_PREFIX = "fallback:"
"""Prefix of the outcome of a request that fell back, e.g. ``fallback:deadline``."""

OFF_XARGS: dict[str, Any] = {"specprefill_keep_rate": 1.0}
"""``vllm_xargs`` that turn pruning off for one request."""

_INT_FIELDS = ("tokens_in", "tokens_kept")
_BOOL_FIELDS = ("fallback", "pruned")


# --- outcomes (pure) -----------------------------------------------------------------------------------------
def stats_problem(stats: object) -> str | None:
    """Why ``stats`` is not a well-formed stats object (None when it is one).

    Checked: a JSON object with integer ``tokens_in`` >= ``tokens_kept`` >= 0, a number ``speculator_seconds``
    >= 0, booleans ``fallback`` and ``pruned``, ``pruned`` exactly when tokens were dropped, and a non-empty
    string ``fallback_reason`` exactly when ``fallback`` is true.
    """
    if not isinstance(stats, Mapping):
        return f"not an object: {type(stats).__name__}"
    for name in _INT_FIELDS:
        value = stats.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name} is not a count: {value!r}"
    for name in _BOOL_FIELDS:
        if not isinstance(stats.get(name), bool):
            return f"{name} is not a boolean: {stats.get(name)!r}"
    seconds = stats.get("speculator_seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds >= 0:
        return f"speculator_seconds is not a duration: {seconds!r}"
    if stats["tokens_kept"] > stats["tokens_in"]:
        return f"tokens_kept {stats['tokens_kept']} > tokens_in {stats['tokens_in']}"
    if stats["pruned"] != (stats["tokens_kept"] < stats["tokens_in"]):
        return f"pruned={stats['pruned']} with {stats['tokens_kept']} of {stats['tokens_in']} tokens kept"
    reason = stats.get("fallback_reason")
    if (bool(reason) and isinstance(reason, str)) if stats["fallback"] else reason is None:
        return None
    return f"fallback={stats['fallback']} with fallback_reason {reason!r}"


def outcome(result: Mapping[str, Any]) -> str:
    """The outcome of one request from its record (see :func:`_send`).

    ``failed`` when the request raised; ``missing_stats`` without a stats object; ``misplaced_stats`` when
    it was not on the final chunk exactly once; ``malformed_stats`` (:func:`stats_problem`); else
    ``fallback:<code>`` (the ``fallback_reason`` up to its first ``:``, as ``/metrics`` counts it),
    ``pruned`` or ``passed_through``, in that order, as the server's ``/metrics`` decides.
    """
    if result.get("error"):
        return FAILED
    if "stats" not in result or result["stats"] is None:
        return MISSING
    if result.get("stats_seen", 1) != 1 or not result.get("stats_on_final", True):
        return MISPLACED
    stats = result["stats"]
    if stats_problem(stats) is not None:
        return MALFORMED
    if stats["fallback"]:
        return FALLBACK_PREFIX + str(stats["fallback_reason"]).split(":", 1)[0].strip()
    return PRUNED if stats["pruned"] else PASSED


def count_outcomes(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Requests per outcome (:func:`outcome`), sorted by name; outcomes that did not occur are absent."""
    return dict(sorted(Counter(outcome(r) for r in results).items()))


# --- rows (pure) ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelRow:
    """One concurrency level with pruning on or off."""

    concurrency: int
    pruning: str
    """``on`` (the server's keep rate) or ``off`` (``specprefill_keep_rate`` 1.0 per request)."""
    keep_rate: float | None
    """The keep rate pruned requests ran at (None: an already-running server's own default)."""
    requests: int
    pruned: int
    passed_through: int
    fallbacks: dict[str, int]
    """Requests that fell back, per ``fallback_reason`` code."""
    missing_stats: int
    malformed_stats: int
    misplaced_stats: int
    failed: int
    no_content: int
    """Answered streams without a content token (their TTFT is the ``finish_reason`` chunk's time)."""
    ttft_p50: float | None
    ttft_p95: float | None
    requests_per_second: float
    wall_seconds: float
    tokens_in: float | None
    """Mean ``tokens_in`` over the requests with a valid stats object (None: no such request)."""
    tokens_kept: float | None
    speculator_seconds: float | None
    ttft_p50_ratio: float | None = None
    """Pruning on / off at this level (on the ``on`` row only)."""
    ttft_p95_ratio: float | None = None
    requests_per_second_ratio: float | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)
    """The first distinct errors of failed requests and problems of malformed stats objects."""

    @property
    def fallback_total(self) -> int:
        """Requests that fell back, any reason."""
        return sum(self.fallbacks.values())

    @property
    def answered(self) -> int:
        """Requests that got an answer (whatever their stats)."""
        return self.requests - self.failed


def summarize_level(
    concurrency: int, pruning: str, keep_rate: float | None, results: Sequence[Mapping[str, Any]], wall: float
) -> LevelRow:
    """Counts, percentiles and means of one level's request records (see :func:`_send`)."""
    counts = count_outcomes(results)
    valid = [r["stats"] for r in results if outcome(r) not in (FAILED, MISSING, MISPLACED, MALFORMED)]
    ttfts = [float(r["ttft"]) for r in results if not r.get("error") and r.get("ttft") is not None]
    errors = [str(r["error"]) for r in results if r.get("error")]
    errors += [f"stats: {stats_problem(r['stats'])}" for r in results if outcome(r) == MALFORMED]

    def mean(name: str) -> float | None:
        return statistics.fmean(float(s[name]) for s in valid) if valid else None

    answered = len(results) - counts.get(FAILED, 0)
    return LevelRow(
        concurrency=concurrency,
        pruning=pruning,
        keep_rate=keep_rate,
        requests=len(results),
        pruned=counts.get(PRUNED, 0),
        passed_through=counts.get(PASSED, 0),
        fallbacks={k[len(FALLBACK_PREFIX) :]: v for k, v in counts.items() if k.startswith(FALLBACK_PREFIX)},
        missing_stats=counts.get(MISSING, 0),
        malformed_stats=counts.get(MALFORMED, 0),
        misplaced_stats=counts.get(MISPLACED, 0),
        failed=counts.get(FAILED, 0),
        no_content=sum(1 for r in results if not r.get("error") and r.get("no_content")),
        ttft_p50=percentile(ttfts, 50) if ttfts else None,
        ttft_p95=percentile(ttfts, 95) if ttfts else None,
        requests_per_second=answered / wall if wall > 0 else 0.0,
        wall_seconds=wall,
        tokens_in=mean("tokens_in"),
        tokens_kept=mean("tokens_kept"),
        speculator_seconds=mean("speculator_seconds"),
        errors=tuple(dict.fromkeys(errors))[:3],
    )


def _ratio(on: float | None, off: float | None) -> float | None:
    return on / off if on is not None and off else None


def with_ratios(rows: Sequence[LevelRow]) -> list[LevelRow]:
    """``rows`` with each ``on`` row's pruned/off ratios against the ``off`` row of the same concurrency."""
    off = {r.concurrency: r for r in rows if r.pruning == "off"}
    out = []
    for row in rows:
        base = off.get(row.concurrency)
        if row.pruning == "on" and base is not None:
            row = dataclasses.replace(
                row,
                ttft_p50_ratio=_ratio(row.ttft_p50, base.ttft_p50),
                ttft_p95_ratio=_ratio(row.ttft_p95, base.ttft_p95),
                requests_per_second_ratio=_ratio(row.requests_per_second, base.requests_per_second),
            )
        out.append(row)
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_COLUMNS = (
    "conc", "pruning", "pruned", "passed", "fallback", "no stats", "bad stats", "failed", "TTFT p50 s", "p95 s",
    "req/s", "tok in", "tok kept", "spec s", "p50 on/off", "p95 on/off", "req/s on/off", "fallback reasons",
)  # fmt: skip


def table(rows: Sequence[LevelRow]) -> str:
    """The side-by-side table: one line per level and setting (``bad stats``: malformed or misplaced)."""
    cells = [list(_COLUMNS)]
    for r in rows:
        reasons = " ".join(f"{k}={v}" for k, v in sorted(r.fallbacks.items())) or "-"
        cells.append([
            str(r.concurrency), r.pruning, str(r.pruned), str(r.passed_through), str(r.fallback_total),
            str(r.missing_stats), str(r.malformed_stats + r.misplaced_stats), str(r.failed), _fmt(r.ttft_p50, 2),
            _fmt(r.ttft_p95, 2), _fmt(r.requests_per_second, 3), _fmt(r.tokens_in, 0), _fmt(r.tokens_kept, 0),
            _fmt(r.speculator_seconds, 3), _fmt(r.ttft_p50_ratio, 2), _fmt(r.ttft_p95_ratio, 2),
            _fmt(r.requests_per_second_ratio, 2), reasons,
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    left = (1, len(_COLUMNS) - 1)  # the setting and the reasons are text
    lines = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


@dataclass(frozen=True)
class HostileResult:
    """The abandoned huge prune request and the ordinary chat after it."""

    prune_chars: int
    prune_reply: str
    """``gave up after N s`` (the client timed out, as intended), or what came back in time (``HTTP 200``)."""
    chat_delay_seconds: float
    """Seconds between sending the prune request and sending the chat."""
    chat_outcome: str
    """:func:`outcome` of the chat; the issue requires ``pruned``."""
    chat_ttft: float | None
    chat_stats: Any

    @property
    def chat_pruned(self) -> bool:
        """Whether the chat after the abandoned request was pruned (not a fallback)."""
        return self.chat_outcome == PRUNED


def report_json(setup: Mapping[str, Any], rows: Sequence[LevelRow], hostile: HostileResult | None) -> dict[str, Any]:
    """What ``--out`` writes: the setup, one object per row (with the derived totals) and the hostile phase."""
    return {
        "setup": dict(setup),
        "rows": [{**asdict(r), "fallback_total": r.fallback_total, "answered": r.answered} for r in rows],
        "hostile": None if hostile is None else {**asdict(hostile), "chat_pruned": hostile.chat_pruned},
    }


def root_url(url: str) -> str:
    """The server root of ``url`` (``http://h:8000/v1/`` -> ``http://h:8000``)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def hostile_document(chars: int) -> str:
    """Exactly ``chars`` characters of numbered records (the huge prompt of the hostile phase)."""
    parts: list[str] = []
    size, j = 0, 0
    while size < chars:
        part = f"Hostile record {j}: barge {(j * 7) % 13} carried {3 + (j * 5) % 17} crates of pears. "
        parts.append(part)
        size, j = size + len(part), j + 1
    return "".join(parts)[:chars]


# --- the server ---------------------------------------------------------------------------------------------
def _launcher() -> list[str]:
    """``specprefill`` beside this Python (the console script), else ``python -m specprefill.cli``."""
    script = Path(sys.executable).with_name("specprefill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "specprefill.cli"]


def server_command(args: argparse.Namespace, model: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The README's serve line for ``args`` on ``port``, then the options after ``--``; and its environment."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    speculator = args.speculator
    if speculator in SERVE_SHAPES:  # random weights of that shape, through a module:callable factory
        speculator, env[SHAPE_ENV] = "benchmarks.serve_ttft:shaped_speculator", args.speculator
    cmd = [*_launcher(), "serve", model, "--speculator", speculator, "--keep-rate", f"{args.keep_rate:g}"]
    cmd += ["--port", str(port)]
    if args.base in SERVE_SHAPES:
        cmd += ["--load-format", "dummy", "--served-model-name", f"dummy-{args.base}"]
    return cmd + list(args.server_args), env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (API server and engine core), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):  # engine-core children that outlived the API server
        os.killpg(process.pid, signal.SIGKILL)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def launched(args: argparse.Namespace) -> Iterator[str]:
    """Start the server, wait for ``/health``; yields its root URL; stops it on exit (error, Ctrl-C, SIGTERM)."""
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        port = _free_port()
        model = args.base
        if args.base in SERVE_SHAPES:
            max_len = max(args.tokens, args.hostile_tokens) + args.max_tokens + 512
            model = str(_base_folder(args.base, max_len, Path(tmp)))
        cmd, env = server_command(args, model, port)
        log_path = Path(args.log or Path(tmp) / "server.log")
        print(f"starting: {' '.join(cmd)}\n  (log: {log_path})", file=sys.stderr)
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            with log_path.open("wb") as log:  # its own session: Ctrl-C reaches us, and we stop the whole group
                process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                _wait_healthy(process, f"http://127.0.0.1:{port}/health", args.startup_timeout, log_path)
                yield f"http://127.0.0.1:{port}"
            finally:
                print("stopping the server", file=sys.stderr)
                _stop(process)
        finally:
            signal.signal(signal.SIGTERM, previous)


def served_model(root: str, api_key: str) -> str:
    """The first model id ``GET /v1/models`` lists."""
    request = urllib.request.Request(f"{root}/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return str(json.load(reply)["data"][0]["id"])


# --- the load -----------------------------------------------------------------------------------------------
async def _send(
    client: Any, model: str, messages: list[dict[str, str]], xargs: dict[str, Any] | None, max_tokens: int
) -> dict[str, Any]:
    """One streamed chat and its record.

    The record has ``ttft``, ``no_content``, ``stats`` (absent if none came), ``stats_seen``,
    ``stats_on_final`` and ``latency``; or ``error`` when the request raised.
    """
    record: dict[str, Any] = {"stats_seen": 0, "stats_on_final": False, "no_content": False}
    extra: dict[str, Any] = {"ignore_eos": True}
    if xargs is not None:
        extra["vllm_xargs"] = xargs
    start = time.perf_counter()
    finish: float | None = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra,
        )  # fmt: skip
        async for chunk in stream:
            now = time.perf_counter() - start
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None and choice.delta.content and "ttft" not in record:
                record["ttft"] = now
            if choice is not None and choice.finish_reason and finish is None:
                finish = now
            carried = "specprefill" in (chunk.model_extra or {})
            if carried:
                record["stats"] = chunk.model_extra["specprefill"]
                record["stats_seen"] += 1
            record["stats_on_final"] = carried  # true at the end only if the last chunk carried it
    except Exception as exc:  # any failure: one failed request, counted
        record["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return record
    record["latency"] = time.perf_counter() - start
    if "ttft" not in record:
        record["ttft"], record["no_content"] = finish, True
    return record


async def run_level(
    root: str, api_key: str, model: str, prompts: Sequence[list[dict[str, str]]], xargs: dict[str, Any] | None,
    concurrency: int, max_tokens: int, timeout: float,
) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """``prompts`` with ``concurrency`` in flight; the request records and the wall time."""
    import openai

    gate = asyncio.Semaphore(concurrency)

    async def one(client: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
        async with gate:
            return await _send(client, model, messages, xargs, max_tokens)

    async with openai.AsyncOpenAI(base_url=f"{root}/v1", api_key=api_key, max_retries=0, timeout=timeout) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client, p) for p in prompts))
        return list(results), time.perf_counter() - start


def _prompts(n: int, tokens: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` prompts of :func:`benchmarks.serve_ttft.make_prompts` whose system line is unique too."""
    prompts = make_prompts(n, tokens, seed)
    for i, messages in enumerate(prompts):
        messages[0]["content"] = f"[{seed}-{i}] {messages[0]['content']}"  # no two requests share a cache block
    return prompts


def hostile_probe(
    root: str, api_key: str, model: str, *, chars: int = 200_000, client_timeout: float = 2.0, wait: float = 40.0,
    tokens: int = 1024, max_tokens: int = 16, seed: int = 900,
) -> HostileResult:  # fmt: skip
    """One huge prune request the client abandons, then ``wait`` s after it was sent one ordinary chat."""
    from specprefill.wire.prune import PRUNE_PATH

    body = json.dumps({"prompt": hostile_document(chars)}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    request = urllib.request.Request(f"{root}{PRUNE_PATH}", data=body, headers=headers, method="POST")
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=client_timeout) as reply:
            reply.read()
            answer = f"HTTP {reply.status} after {time.monotonic() - sent:.1f} s (the client did not have to give up)"
    except urllib.error.HTTPError as exc:
        answer = f"HTTP {exc.code} after {time.monotonic() - sent:.1f} s"
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        gave_up = isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError)
        label = "gave up" if gave_up else f"failed ({type(reason).__name__}: {reason})"
        answer = f"{label} after {time.monotonic() - sent:.1f} s"
    print(f"hostile: {chars:,}-character prune request: {answer}; chat in {wait:.0f} s", file=sys.stderr)
    time.sleep(max(0.0, wait - (time.monotonic() - sent)))
    delay = time.monotonic() - sent
    results, _ = asyncio.run(run_level(root, api_key, model, _prompts(1, tokens, seed), None, 1, max_tokens, 3600.0))
    record = results[0]
    return HostileResult(chars, answer, delay, outcome(record), record.get("ttft"), record.get("stats"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (anything after ``--`` goes to ``specprefill serve``, and from it to vLLM)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this running server (http://host:port) instead of starting one")
    parser.add_argument("--model", help="served model name (default: the first one /v1/models lists)")
    parser.add_argument("--api-key", default="EMPTY", help="the server's --api-key (default: none)")
    parser.add_argument("--base", default="smollm2-135m", help=f"base model, or a shape ({', '.join(SERVE_SHAPES)})")
    parser.add_argument("--speculator", default="smollm2-135m", help="speculator model, or a shape (random weights)")
    parser.add_argument("--keep-rate", type=float, default=0.3, help="the started server's keep rate (default 0.3)")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 16, 32], help="concurrency levels (4 16 32)")
    parser.add_argument("--tokens", type=int, default=1536, help="prompt tokens per request (default 1536)")
    parser.add_argument("--rounds", type=int, default=1, help="requests per level = level x rounds (default 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    parser.add_argument("--request-timeout", type=float, default=3600.0, help="client timeout per request, s")
    parser.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds to wait for /health")
    parser.add_argument("--log", help="server log file (default: a temporary file)")
    parser.add_argument("--out", help="also write the rows (and the hostile phase) to this JSON file")
    hostile = parser.add_argument_group("hostile phase")
    hostile.add_argument("--hostile", action="store_true", help="end with the abandoned-huge-request check")
    hostile.add_argument("--hostile-chars", type=int, default=200_000, help="prune request size (200000)")
    hostile.add_argument("--hostile-timeout", type=float, default=2.0, help="its client gives up after (2 s)")
    hostile.add_argument("--hostile-wait", type=float, default=40.0, help="chat this long after it (40 s)")
    hostile.add_argument("--hostile-tokens", type=int, default=1024, help="prompt tokens of that chat (1024)")
    parser.add_argument("server_args", nargs="*", help="after --: options for specprefill serve and vLLM")
    args = parser.parse_args(argv)
    if not 0.0 < args.keep_rate < 1.0:
        parser.error("--keep-rate must be in (0, 1): 1.0 is the 'off' setting")
    if min(args.levels) < 1 or args.rounds < 1 or max(args.levels) * args.rounds > 999:
        parser.error("--levels and --rounds must be >= 1, with level x rounds < 1000 (one document each)")
    if min(args.tokens, args.hostile_tokens) < 300:
        parser.error("--tokens and --hostile-tokens must be >= 300 (shorter prompts are not pruned)")
    if args.max_tokens < 1 or args.hostile_chars < 1 or args.hostile_timeout <= 0 or args.hostile_wait < 0:
        parser.error("--max-tokens, --hostile-chars and --hostile-timeout must be positive")
    if args.url and args.server_args:
        parser.error("options after -- start a server; with --url the server is already running")
    return args


def _setup(args: argparse.Namespace, model: str) -> dict[str, Any]:
    return {
        "url": args.url, "model": model, "base": None if args.url else args.base,
        "speculator": None if args.url else args.speculator, "keep_rate": None if args.url else args.keep_rate,
        "levels": list(args.levels), "rounds": args.rounds, "tokens": args.tokens, "max_tokens": args.max_tokens,
        "server_args": list(args.server_args), "hostile": args.hostile,
    }  # fmt: skip


def _write(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def benchmark(args: argparse.Namespace, root: str) -> tuple[dict[str, Any], list[LevelRow], HostileResult | None]:
    """Warm up, run every level on and off, then the hostile phase; writes ``--out`` after every level."""
    model = args.model or served_model(root, args.api_key)
    setup = _setup(args, model)
    keep = None if args.url else args.keep_rate
    for seed, label, xargs in ((998, "on", None), (999, "off", OFF_XARGS)):  # lazy loads, compilation
        warm, _ = asyncio.run(run_level(root, args.api_key, model, _prompts(1, args.tokens, seed), xargs, 1, 2, 3600))
        print(f"warm-up ({label}): {outcome(warm[0])} {warm[0].get('error') or ''}", file=sys.stderr)
    rows: list[LevelRow] = []
    seed = 0
    for level in args.levels:
        for label, xargs in (("on", None), ("off", OFF_XARGS)):
            seed += 1
            prompts = _prompts(level * args.rounds, args.tokens, seed)
            results, wall = asyncio.run(
                run_level(root, args.api_key, model, prompts, xargs, level, args.max_tokens, args.request_timeout)
            )
            rows.append(summarize_level(level, label, keep if label == "on" else 1.0, results, wall))
            print(f"{level} concurrent, pruning {label}: {wall:.1f} s {count_outcomes(results)}", file=sys.stderr)
        rows = with_ratios(rows)
        _write(args.out, {**report_json(setup, rows, None), "complete": False})
    hostile = None
    if args.hostile:
        hostile = hostile_probe(
            root, args.api_key, model, chars=args.hostile_chars, client_timeout=args.hostile_timeout,
            wait=args.hostile_wait, tokens=args.hostile_tokens, max_tokens=args.max_tokens,
        )  # fmt: skip
    return setup, rows, hostile


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table; 1 if a request failed or lost its stats, or the hostile chat fell back."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = root_url(args.url) if args.url else stack.enter_context(launched(args))
        setup, rows, hostile = benchmark(args, root)
    where = args.url or f"base {args.base}, speculator {args.speculator}, keep {args.keep_rate:g}"
    print(f"{where}; model {setup['model']}; ~{args.tokens} prompt tokens, {args.max_tokens} generated, "
          f"{args.rounds} round(s) per level")  # fmt: skip
    print(table(rows))
    for row in rows:
        for error in row.errors:
            print(f"{row.concurrency} concurrent, pruning {row.pruning}: {error}")
    if hostile is not None:
        verdict = "PRUNED" if hostile.chat_pruned else f"NOT pruned ({hostile.chat_outcome})"
        print(f"hostile: {hostile.prune_chars:,}-character prune request: {hostile.prune_reply}; the chat sent "
              f"{hostile.chat_delay_seconds:.0f} s after it was {verdict}")  # fmt: skip
        print(f"hostile chat stats: {json.dumps(hostile.chat_stats)}")
    _write(args.out, {**report_json(setup, rows, hostile), "complete": True})
    bad = any(r.failed or r.missing_stats or r.malformed_stats or r.misplaced_stats for r in rows)
    return 1 if bad or (hostile is not None and not hostile.chat_pruned) else 0


if __name__ == "__main__":
    raise SystemExit(main())
