"""Scoring overhead: speculator plain prefill vs full SpecPrefill scoring, side by side in one run.

For each prompt length the same speculator runs (interleaved, after a warm-up):

* **plain** - one ordinary sdpa prefill forward pass (stock attention, no capture, no look-ahead);
* **specprefill** - everything scoring needs: capturing prefill, greedy look-ahead, per-layer scoring,
  pooling and reduction (``Speculator.score``).

It prints median seconds, their ratio (target <= 1.15 at 4k) and the peak resident-memory growth of
each, sampled from /proc. Run: ``specprefill bench overhead`` or ``python -m specprefill.bench.overhead``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from specprefill.bench.memory import track_peak_rss
from specprefill.config import SpecPrefillConfig

__all__ = ["OverheadRow", "filler_text", "main", "measure_overhead"]

_DESCRIPTION = "Scoring overhead: speculator plain prefill vs full SpecPrefill scoring, side by side."
_WORDS = tuple(
    "harbour ferry island lighthouse keeper storm winter ledger museum wing model ship baker rye bread "
    "caraway licence warden season council bridge river market square clock tower school library map "
    "archive letter captain crew cargo timber salt copper wool orchard mill road station signal".split()
)


@dataclass(frozen=True)
class OverheadRow:
    """One prompt length's measurements."""

    tokens: int
    plain_seconds: float
    specprefill_seconds: float
    ratio: float
    plain_peak_mib: float
    specprefill_peak_mib: float
    queries: int


def filler_text(n_words: int, seed: int = 0) -> str:
    """Deterministic natural-looking text (sentences of common words) for timing runs."""
    rng = random.Random(seed)
    sentences: list[str] = []
    count = 0
    while count < n_words:
        words = rng.choices(_WORDS, k=rng.randint(8, 16))
        sentences.append(" ".join(words).capitalize() + ".")
        count += len(words)
    return " ".join(sentences)


@contextlib.contextmanager
def _stock_attention(model: Any) -> Iterator[None]:
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    gc.collect()
    with track_peak_rss() as mem:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, mem.extra_mib


def measure_overhead(
    speculator: Any, lengths: Sequence[int], repeats: int = 3, config: SpecPrefillConfig | None = None
) -> list[OverheadRow]:
    """Measure plain prefill and SpecPrefill scoring at each length, interleaved.

    Args:
        speculator: An :class:`~specprefill.hf.HFSpeculator`.
        lengths: Prompt lengths in speculator tokens.
        repeats: Timed runs of each kind per length (medians are reported).
        config: Scoring settings (defaults: look-ahead 8, pool 13).

    Returns:
        One :class:`OverheadRow` per length.

    """
    from tqdm.auto import tqdm

    cfg = config or SpecPrefillConfig()
    text = filler_text(max(lengths) + 64)
    all_ids = speculator.encode(text)[0]
    rows = []
    bar = tqdm(total=len(lengths) * (2 * repeats + 2), desc="overhead", unit="run", disable=None)
    for n in lengths:
        ids = all_ids[:n]

        def plain(ids: list[int] = ids) -> None:
            with _stock_attention(speculator.model):
                speculator.plain_prefill(ids)

        def score(ids: list[int] = ids) -> Any:
            return speculator.score(ids, cfg)

        plain()
        queries = score().queries
        bar.update(2)
        plain_runs, score_runs = [], []
        for _ in range(repeats):
            plain_runs.append(_timed(plain))
            score_runs.append(_timed(score))
            bar.update(2)
        p = statistics.median(s for s, _ in plain_runs)
        s = statistics.median(s for s, _ in score_runs)
        rows.append(
            OverheadRow(
                tokens=n,
                plain_seconds=p,
                specprefill_seconds=s,
                ratio=s / p,
                plain_peak_mib=max(m for _, m in plain_runs),
                specprefill_peak_mib=max(m for _, m in score_runs),
                queries=queries,
            )
        )
    bar.close()
    return rows


def format_table(rows: Sequence[OverheadRow]) -> str:
    """Rows as a fixed-width text table."""
    head = (
        f"{'tokens':>7} {'plain s':>9} {'specprefill s':>14} {'ratio':>6} "
        f"{'plain peak MiB':>15} {'specprefill peak MiB':>21} {'queries':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.tokens:>7} {r.plain_seconds:>9.3f} {r.specprefill_seconds:>14.3f} {r.ratio:>6.3f} "
            f"{r.plain_peak_mib:>15.1f} {r.specprefill_peak_mib:>21.1f} {r.queries:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``specprefill bench overhead [--lengths 512 2048 4096] [--repeats 3] [--json]``."""
    parser = argparse.ArgumentParser(prog="specprefill bench overhead", description=_DESCRIPTION)
    parser.add_argument("--speculator", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lookahead", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    import torch

    from specprefill.models import load_speculator

    speculator = load_speculator(args.speculator, dtype=args.dtype)
    cfg = SpecPrefillConfig(lookahead=args.lookahead)
    rows = measure_overhead(speculator, args.lengths, args.repeats, cfg)
    meta = {
        "speculator": args.speculator,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "lookahead": args.lookahead,
        "pool_kernel": cfg.pool_kernel,
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"SpecPrefill scoring overhead (median of {args.repeats} runs; memory = peak RSS growth)")
        print(", ".join(f"{k}={v}" for k, v in meta.items()))
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
