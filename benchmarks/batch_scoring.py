"""What a batched speculator forward buys: B prompts scored one by one vs in one padded batch, side by side.

For each batch size, in one run, on the same speculator and the same prompts (interleaved, after a warm-up):

* **one by one** - ``Speculator.score`` per prompt (what the scoring service does without ``batch_forward``);
* **batched** - ``HFSpeculator.score_many`` with ``batch_forward`` on (the CUDA default): padded prefill and
  look-ahead steps shared by the batch (:mod:`specprefill.speculator.batching`).

It prints median seconds per batch, prompts per second, the speed-up and the largest importance difference
between the two (float rounding only). Shapes build random-weight Llama speculators (no download):
``--speculator 1b --device cuda:0 --dtype bfloat16 --tokens 4096`` on a lent GPU, ``--speculator
smollm2-135m`` (the packaged model) on CPU. ``--spread 0.5`` gives prompt lengths from 50% to 100% of
``--tokens`` (padding then costs work; the speculator splits a batch whose padding would pass 25%).

Run: ``python -m benchmarks.batch_scoring --help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.ttft_vllm import _prompt, _speculator

__all__ = ["BatchRow", "main", "measure", "prompt_lengths"]


@dataclass(frozen=True)
class BatchRow:
    """One batch size's measurements (seconds are medians over the repeats)."""

    batch: int
    tokens: int
    one_by_one_seconds: float
    batched_seconds: float
    speedup: float
    max_abs_diff: float


def prompt_lengths(batch: int, tokens: int, spread: float) -> list[int]:
    """``batch`` lengths evenly from ``(1 - spread) * tokens`` to ``tokens`` (all ``tokens`` when spread is 0)."""
    if batch == 1 or spread == 0:
        return [tokens] * batch
    low = tokens * (1 - spread)
    return [round(low + (tokens - low) * i / (batch - 1)) for i in range(batch)]


def _median_seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(speculator: Any, batches: Sequence[int], tokens: int, spread: float, repeats: int) -> list[BatchRow]:
    """Score each batch size both ways (interleaved repeats) and compare the importances."""
    import numpy as np

    from specprefill import SpecPrefillConfig

    config = SpecPrefillConfig(min_prompt_tokens=0)
    sync = _synchronizer(speculator)
    rows = []
    for b in batches:
        prompts = [_prompt(n, seed=i) for i, n in enumerate(prompt_lengths(b, tokens, spread))]
        work = [(p, config) for p in prompts]
        speculator.batch_forward = True
        speculator.score_many(work[:2])  # warm-up of both paths
        alone_t, alone = _median_seconds(partial(_one_by_one, speculator, work), repeats, sync)
        together_t, together = _median_seconds(partial(speculator.score_many, work), repeats, sync)
        diff = max(float(np.abs(a.importance - t.importance).max()) for a, t in zip(alone, together, strict=True))
        rows.append(BatchRow(b, tokens, alone_t, together_t, alone_t / together_t, diff))
        print(f"batch {b}: one by one {alone_t:.3f}s, batched {together_t:.3f}s", file=sys.stderr)
    return rows


def _one_by_one(speculator: Any, work: Sequence[tuple[list[int], Any]]) -> list[Any]:
    return [speculator.score(ids, config) for ids, config in work]


def _synchronizer(speculator: Any) -> Callable[[], None]:
    import torch

    device = speculator.model.device
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def table(rows: Sequence[BatchRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| batch | tokens | one by one s | batched s | prompts/s one by one | prompts/s batched | speed-up "
        "| max diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.batch} | {r.tokens} | {r.one_by_one_seconds:.3f} | {r.batched_seconds:.3f} | "
            f"{r.batch / r.one_by_one_seconds:.2f} | {r.batch / r.batched_seconds:.2f} | {r.speedup:.2f}x | "
            f"{r.max_abs_diff:.1e} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--speculator", default="smollm2-135m", help="model name/folder, or a shape (random weights)")
    parser.add_argument("--device", default="cpu", help='e.g. "cuda:0" (default cpu)')
    parser.add_argument("--dtype", default="float32", help="speculator dtype (default float32)")
    parser.add_argument("--tokens", type=int, default=1024, help="prompt tokens (the longest, with --spread)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8], help="batch sizes (default 2 4 8)")
    parser.add_argument("--spread", type=float, default=0.0, help="length spread in [0, 1) (default 0: equal)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per setting (default 3)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if not 0 <= args.spread < 1 or args.tokens < 16 or min(args.batches) < 1 or args.repeats < 1:
        parser.error("--spread must be in [0, 1), --tokens >= 16, --batches >= 1 and --repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    speculator = _speculator(args.speculator, args.device, args.dtype, args.tokens + 64)
    rows = measure(speculator, args.batches, args.tokens, args.spread, args.repeats)
    print(f"speculator {args.speculator} on {args.device} ({args.dtype}), {args.tokens} tokens, "
          f"spread {args.spread}, {args.repeats} repeats, {platform.processor() or platform.machine()}")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
