"""The speculator's memory share beside a vLLM base: weights plus scoring peak, measured and fitted per token.

For each prompt length the speculator scores one prompt (``Speculator.score``: capturing prefill, look-ahead,
scoring) and the growth of memory over the loaded model is measured: ``torch.cuda.max_memory_allocated`` on
a GPU (exact), peak resident memory (sampled from /proc) on CPU (a lower bound: memory freed by an earlier
length and kept by the allocator is reused without growing it). A straight line through those peaks gives the
fixed and per-token parts; the KV cache's exact per-token size is printed beside it, for comparison. Then it
predicts the share at ``--target`` tokens and, with ``--gpu-gib``, the ``--gpu-memory-utilization`` that
leaves it free on GPU 0 beside a base at ``--tp`` GPUs (vLLM claims that fraction of every GPU).

Shapes build random-weight Llama speculators (no download): ``--speculator 8b --device cuda:0 --lengths
4096 8192 16384 --target 32768 --gpu-gib 80 --base 70b --tp 8`` on a lent GPU; ``--speculator 1b --dtype
bfloat16`` on CPU. Run: ``python -m benchmarks.speculator_memory --help``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.ttft_vllm import SHAPES, _prompt, _speculator

__all__ = ["MemoryRow", "fit_line", "kv_bytes_per_token", "main", "shape_parameters", "suggested_utilization"]

GIB = 2**30
CUDA_CONTEXT_GIB = 1.0
"""What the CUDA context and allocator slack of the speculator's process take beside its tensors (allowance)."""


@dataclass(frozen=True)
class MemoryRow:
    """One prompt length: the scoring peak over the loaded model."""

    tokens: int
    peak_extra_bytes: int
    kv_bytes: int


def shape_parameters(shape: Mapping[str, int]) -> int:
    """Parameters of a Llama-shaped model (untied embeddings): embeddings, attention, MLP, norms, LM head."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * shape["vocab_size"] * h + layers * per_layer + h


def kv_bytes_per_token(config: Any, element_bytes: int) -> int:
    """Keys and values of every layer for one token."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element_bytes)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``; one point gives a line through the origin."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def suggested_utilization(gpu_gib: float, speculator_gib: float) -> float:
    """The largest ``--gpu-memory-utilization`` (two decimals, rounded down) that leaves the speculator room."""
    return math.floor((gpu_gib - speculator_gib - CUDA_CONTEXT_GIB) / gpu_gib * 100) / 100


def _peak_meter(device: Any) -> Callable[[Callable[[], Any]], int]:
    import torch

    if device.type == "cuda":

        def cuda_peak(fn: Callable[[], Any]) -> int:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base)

        return cuda_peak
    from specprefill.bench.memory import track_peak_rss

    def cpu_peak(fn: Callable[[], Any]) -> int:
        gc.collect()
        with track_peak_rss() as mem:
            fn()
        return max(mem.peak_bytes - mem.start_bytes, 0)

    return cpu_peak


def measure(speculator: Any, lengths: Sequence[int]) -> list[MemoryRow]:
    """Score one prompt per length (shortest first, after a warm-up) and record each peak."""
    from specprefill import SpecPrefillConfig

    config = SpecPrefillConfig(min_prompt_tokens=0)
    model = speculator.model
    per_token = kv_bytes_per_token(model.config, next(model.parameters()).element_size())
    peak = _peak_meter(model.device)
    speculator.score(_prompt(64, seed=99), config)  # warm-up (kernels) that leaves little memory to reuse
    rows = []
    for n in sorted(lengths):
        extra = peak(partial(speculator.score, _prompt(n, seed=n), config))
        rows.append(MemoryRow(n, extra, per_token * (n + config.lookahead)))
        print(f"{n} tokens: peak +{extra / GIB:.3f} GiB", file=sys.stderr)
    return rows


def report(name: str, weights: int, rows: Sequence[MemoryRow], args: argparse.Namespace) -> str:
    """The measurements, the fitted line and the predictions, as Markdown."""
    intercept, slope = fit_line([r.tokens for r in rows], [r.peak_extra_bytes for r in rows])
    _, kv_slope = fit_line([r.tokens for r in rows], [r.kv_bytes for r in rows])
    lines = [
        f"speculator {name} on {args.device} ({args.dtype}): weights {weights / GIB:.2f} GiB",
        "",
        "| tokens | scoring peak over the loaded model GiB | of which KV cache GiB |",
        "|---|---|---|",
        *(f"| {r.tokens} | {r.peak_extra_bytes / GIB:.3f} | {r.kv_bytes / GIB:.3f} |" for r in rows),
        "",
        f"fit: {intercept / GIB:.3f} GiB + {slope / 1024:.1f} KiB per token "
        f"(KV cache alone: {kv_slope / 1024:.1f} KiB per token)",
    ]
    if args.target:
        total = weights + max(intercept, 0.0) + slope * args.target
        lines.append(f"predicted at {args.target} tokens: {total / GIB:.1f} GiB (weights + scoring peak)")
        if args.gpu_gib:
            util = suggested_utilization(args.gpu_gib, total / GIB)
            lines.append(
                f"on {args.gpu_gib:g} GiB GPUs: --gpu-memory-utilization {util:.2f} leaves it room on GPU 0 "
                f"({CUDA_CONTEXT_GIB:g} GiB allowed for its CUDA context)"
            )
            if args.base:
                shard = shape_parameters(SHAPES[args.base]) * 2 / args.tp / GIB
                kv = util * args.gpu_gib - shard
                lines.append(
                    f"base {args.base} at TP={args.tp} (bf16): {shard:.1f} GiB of weights per GPU, about "
                    f"{kv:.1f} GiB per GPU left for vLLM's KV cache and activations"
                )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speculator_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--speculator", default="smollm2-135m", help="model name/folder, or a shape (random weights)")
    parser.add_argument("--device", default="cpu", help='e.g. "cuda:0" (default cpu)')
    parser.add_argument("--dtype", default="bfloat16", help="speculator dtype (default bfloat16)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096], help="prompt lengths")
    parser.add_argument("--target", type=int, default=32768, help="length to predict the share at (0: none)")
    parser.add_argument("--gpu-gib", type=float, help="GPU memory, GiB, for the suggested utilization")
    parser.add_argument("--base", choices=sorted(SHAPES), help="base model shape, for its per-GPU weights")
    parser.add_argument("--tp", type=int, default=8, help="the base's tensor-parallel size (default 8)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if min(args.lengths) < 16 or args.target < 0 or args.tp < 1:
        parser.error("--lengths must be >= 16, --target >= 0 and --tp >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and print the report."""
    args = parse_args(argv)
    speculator = _speculator(args.speculator, args.device, args.dtype, max(max(args.lengths), args.target) + 64)
    weights = sum(p.numel() * p.element_size() for p in speculator.model.parameters())
    rows = measure(speculator, args.lengths)
    print(report(args.speculator, weights, rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"weights_bytes": weights, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
