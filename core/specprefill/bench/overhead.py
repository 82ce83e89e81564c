"""Scoring overhead: speculator plain prefill vs full SpecPrefill scoring, side by side in one run.

For each prompt length the same speculator runs (interleaved, after a warm-up):

* **plain** - one ordinary sdpa prefill forward pass (stock attention, no capture, no look-ahead);
* **specprefill** - everything scoring needs: capturing prefill, greedy look-ahead, per-layer scoring,
  pooling and reduction (``Speculator.score``), once per look-ahead setting asked for
  (``--lookahead 8 1``): with look-ahead 1 no logits are read, so the prefill stops after the deepest
  layer the retrieval-head profile scores.

It prints median seconds, their ratio (targets: <= 1.05 at 4k and <= 1.20 at 1k tokens) and the peak
resident-memory growth of each, sampled from /proc. A second table times plain prefill with the speculator
loaded in the device's default dtype (:func:`specprefill.speculator.loading.default_dtype`), in float32 and
in bfloat16, side by side, with each load time, and says what the default picked (bf16 is ~4x slower than
float32 on CPUs without native bf16). Run: ``specprefill bench overhead`` or
``python -m specprefill.bench.overhead``.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from specprefill.bench.memory import track_peak_rss
from specprefill.config import SpecPrefillConfig

__all__ = ["DtypeRow", "OverheadRow", "filler_text", "format_dtype_table", "main", "measure_dtypes", "measure_overhead"]

_DESCRIPTION = "Scoring overhead: speculator plain prefill vs full SpecPrefill scoring, side by side."
_WORDS = tuple(
    "harbour ferry island lighthouse keeper storm winter ledger museum wing model ship baker rye bread "
    "caraway licence warden season council bridge river market square clock tower school library map "
    "archive letter captain crew cargo timber salt copper wool orchard mill road station signal".split()
)


@dataclass(frozen=True)
class OverheadRow:
    """One prompt length's measurements under one scoring setting."""

    tokens: int
    plain_seconds: float
    specprefill_seconds: float
    ratio: float
    plain_peak_mib: float
    specprefill_peak_mib: float
    queries: int
    lookahead: int = 4


@dataclass(frozen=True)
class DtypeRow:
    """Plain-prefill median seconds of one prompt length per loaded variant (``"default"``, dtype names)."""

    tokens: int
    seconds: dict[str, float] = field(default_factory=dict)


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
    speculator: Any,
    lengths: Sequence[int],
    repeats: int = 3,
    config: SpecPrefillConfig | None = None,
    *,
    configs: Sequence[SpecPrefillConfig] = (),
) -> list[OverheadRow]:
    """Measure plain prefill and SpecPrefill scoring at each length, interleaved.

    Args:
        speculator: An :class:`~specprefill.speculator.hf.HFSpeculator`.
        lengths: Prompt lengths in speculator tokens.
        repeats: Timed runs of each kind per length (medians are reported).
        config: Scoring settings (default: the library's defaults).
        configs: Several scoring settings instead, timed in turn within every repeat against the same
            plain prefill (e.g. look-ahead 8 and 1, side by side).

    Returns:
        One :class:`OverheadRow` per length and setting.

    """
    from tqdm.auto import tqdm

    settings = list(configs) or [config or SpecPrefillConfig()]
    text = filler_text(max(lengths) + 64)
    all_ids = speculator.encode(text)[0]
    rows = []
    per_length = (1 + len(settings)) * (repeats + 1)
    bar = tqdm(total=len(lengths) * per_length, desc="overhead", unit="run", disable=None)
    for n in lengths:
        ids = all_ids[:n]

        def plain(ids: list[int] = ids) -> None:
            with _stock_attention(speculator.model):
                speculator.plain_prefill(ids)

        scorers = [_scorer(speculator, ids, cfg) for cfg in settings]
        plain()
        queries = [score().queries for score in scorers]
        bar.update(1 + len(settings))
        plain_runs: list[tuple[float, float]] = []
        score_runs: list[list[tuple[float, float]]] = [[] for _ in settings]
        for _ in range(repeats):
            plain_runs.append(_timed(plain))
            for runs, score in zip(score_runs, scorers, strict=True):
                runs.append(_timed(score))
            bar.update(1 + len(settings))
        p = statistics.median(s for s, _ in plain_runs)
        for cfg, runs, q in zip(settings, score_runs, queries, strict=True):
            s = statistics.median(s for s, _ in runs)
            rows.append(
                OverheadRow(
                    tokens=n,
                    plain_seconds=p,
                    specprefill_seconds=s,
                    ratio=s / p,
                    plain_peak_mib=max(m for _, m in plain_runs),
                    specprefill_peak_mib=max(m for _, m in runs),
                    queries=q,
                    lookahead=cfg.lookahead,
                )
            )
    bar.close()
    return rows


def _scorer(speculator: Any, ids: list[int], config: SpecPrefillConfig) -> Callable[[], Any]:
    def score() -> Any:
        return speculator.score(ids, config)

    return score


def _plain_runner(speculator: Any, ids: list[int]) -> Callable[[], None]:
    def plain() -> None:
        with _stock_attention(speculator.model):
            speculator.plain_prefill(ids)

    return plain


def measure_dtypes(variants: Mapping[str, Any], lengths: Sequence[int], repeats: int = 3) -> list[DtypeRow]:
    """Time plain prefill of the same prompt with each speculator variant, interleaved per repeat.

    Args:
        variants: Label -> speculator (e.g. ``{"default": ..., "float32": ..., "bfloat16": ...}``); all share
            one tokenizer.
        lengths: Prompt lengths in tokens.
        repeats: Timed runs per variant and length after one warm-up (medians are reported).

    Returns:
        One :class:`DtypeRow` per length.

    """
    first = next(iter(variants.values()))
    all_ids = first.encode(filler_text(max(lengths) + 64))[0]
    rows = []
    for n in lengths:
        runners = {label: _plain_runner(spec, all_ids[:n]) for label, spec in variants.items()}
        for run in runners.values():
            run()
        times: dict[str, list[float]] = {label: [] for label in runners}
        for _ in range(repeats):
            for label, run in runners.items():
                times[label].append(_timed(run)[0])
        rows.append(DtypeRow(tokens=n, seconds={label: statistics.median(t) for label, t in times.items()}))
    return rows


def format_dtype_table(rows: Sequence[DtypeRow], picked: str, load_seconds: Mapping[str, float]) -> str:
    """Dtype rows as a fixed-width table; ``picked`` names the dtype the default resolved to.

    The last line gives each variant's load seconds; ``bf16/fp32`` is the bfloat16 over float32 time.
    """
    labels = list(rows[0].seconds) if rows else list(load_seconds)
    names = [f"default={picked}" if label == "default" else label for label in labels]
    widths = [max(len(name) + 2, 12) for name in names]
    ratio = "float32" in labels and "bfloat16" in labels

    def line(first: str, cells: Sequence[str], last: str = "") -> str:
        body = " ".join(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True))
        return f"{first:>7} {body}" + (f" {last:>10}" if ratio else "")

    head = line("tokens", [f"{name} s" for name in names], "bf16/fp32")
    lines = [head, "-" * len(head)]
    for r in rows:
        quotient = f"{r.seconds['bfloat16'] / r.seconds['float32']:.2f}" if ratio else ""
        lines.append(line(str(r.tokens), [f"{r.seconds[label]:.3f}" for label in labels], quotient))
    lines.append(line("load", [f"{load_seconds.get(label, float('nan')):.3f}" for label in labels]))
    return "\n".join(lines)


def format_table(rows: Sequence[OverheadRow]) -> str:
    """Rows as a fixed-width text table."""
    head = (
        f"{'tokens':>7} {'look-ahead':>10} {'plain s':>9} {'specprefill s':>14} {'ratio':>6} "
        f"{'plain peak MiB':>15} {'specprefill peak MiB':>21} {'queries':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.tokens:>7} {r.lookahead:>10} {r.plain_seconds:>9.3f} {r.specprefill_seconds:>14.3f} {r.ratio:>6.3f} "
            f"{r.plain_peak_mib:>15.1f} {r.specprefill_peak_mib:>21.1f} {r.queries:>8}"
        )
    return "\n".join(lines)


def _load_variants(name: str, device: str, dtypes: Sequence[str]) -> tuple[dict[str, Any], dict[str, float]]:
    from specprefill.speculator.loading import load_speculator

    variants: dict[str, Any] = {}
    load_seconds: dict[str, float] = {}
    for label in dtypes:
        start = time.perf_counter()
        variants[label] = load_speculator(name, device=device, dtype=None if label == "default" else label)
        load_seconds[label] = time.perf_counter() - start
    return variants, load_seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``specprefill bench overhead [--lengths 512 2048 4096] [--repeats 3] [--json]``."""
    parser = argparse.ArgumentParser(prog="specprefill bench overhead", description=_DESCRIPTION)
    parser.add_argument("--speculator", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="speculator dtype for the overhead table (default: the device's)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--lookahead",
        type=int,
        nargs="+",
        default=None,
        help="look-ahead of the scoring runs; several values are timed side by side (default: the config's)",
    )
    parser.add_argument("--no-dtypes", action="store_true", help="skip the default/float32/bfloat16 prefill table")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    import torch

    from specprefill.speculator.loading import default_dtype

    picked = str(default_dtype(args.device)).removeprefix("torch.")
    labels = ["default"] if args.no_dtypes else ["default", "float32", "bfloat16"]
    if args.dtype and args.dtype not in labels:
        labels.append(args.dtype)
    variants, load_seconds = _load_variants(args.speculator, args.device, labels)
    speculator = variants[args.dtype or "default"]
    configs = [SpecPrefillConfig(lookahead=k) for k in args.lookahead or [SpecPrefillConfig().lookahead]]
    rows = measure_overhead(speculator, args.lengths, args.repeats, configs=configs)
    compared: dict[str, Any] = {k: variants[k] for k in ("default", "float32", "bfloat16") if k in variants}
    dtype_rows = [] if args.no_dtypes else measure_dtypes(compared, args.lengths, args.repeats)
    meta = {
        "speculator": args.speculator,
        "device": args.device,
        "dtype": args.dtype or picked,
        "default_dtype": picked,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "lookahead": [c.lookahead for c in configs],
        "pool_kernel": configs[0].pool_kernel,
    }
    if args.json:
        payload = {"meta": meta, "rows": [asdict(r) for r in rows], "load_seconds": load_seconds}
        payload["dtype_rows"] = [asdict(r) for r in dtype_rows]
        print(json.dumps(payload, indent=2))
        return 0
    print(f"SpecPrefill scoring overhead (median of {args.repeats} runs; memory = peak RSS growth)")
    print(", ".join(f"{k}={v}" for k, v in meta.items()))
    print(format_table(rows))
    if dtype_rows:
        print(f"\nPlain prefill seconds by weight dtype (median of {args.repeats}; last line: load seconds);")
        print(f"dtype=None picked {picked} for {args.device} (torch CPU capability {meta['cpu_capability']})")
        print(format_dtype_table(dtype_rows, picked, {k: load_seconds[k] for k in compared}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
