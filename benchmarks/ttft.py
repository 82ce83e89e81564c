"""TTFT on CPU: full prompt vs SpecPrefill (and selector baselines), measured side by side in one run.

The base is a Llama-architecture model with the shape of SmolLM2-1.7B (hidden 2048, 24 layers, 32 heads,
32 KV heads, MLP 8192, vocabulary 49152, tied embeddings; bf16) and **random weights: the timings are
real, the outputs meaningless**. It uses the SmolLM2 tokenizer, so the embedded SmolLM2-135M speculator
shares its vocabulary and kept tokens go to the base at their original positions.

For each prompt length the base prefills the full prompt, and for each keep rate each method runs its
selector and the base prefills only the kept tokens; runs are interleaved and medians reported.
TTFT = selector seconds + base prefill seconds (to the first token). The ceiling is the paper's
``1 / (keep_rate + r)`` with ``r`` = speculator FLOPs / base FLOPs at that length (see
:mod:`benchmarks.metrics` for the FLOP formulas).

Run: ``python -m benchmarks.ttft `` or ``python -m benchmarks.ttft`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.metrics import ModelShape, prefill_flops, speculator_flops, speedup_ceiling

__all__ = [
    "BASE_SHAPES",
    "DESCRIPTION",
    "TTFTOptions",
    "TTFTRow",
    "build_random_base",
    "configure_parser",
    "main",
    "options_from_args",
    "run_from_args",
    "run_ttft",
    "speculator_config",
]

DESCRIPTION = (
    "CPU time to first token of a SmolLM2-1.7B-shaped base with random weights (timing only): full prompt vs "
    "SpecPrefill and selector baselines at the same keep rates, side by side, with the FLOP ceiling."
)

BASE_SHAPES: dict[str, dict[str, int]] = {
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 8192,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
    },
    "tiny": {  # for the CI smoke run only
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
    },
}
"""Base shapes (Llama architecture, tied embeddings, rope theta 130000 as in SmolLM2-1.7B)."""

TTFT_METHODS = ("specprefill-lah8", "specprefill-lah1", "head-tail", "random", "rag")


@dataclass
class TTFTOptions:
    """Settings of one TTFT run (see ``--help``)."""

    out: str = "results"
    speculator: str = "smollm2-135m"
    base_shape: str = "smollm2-1.7b"
    lengths: list[int] = field(default_factory=lambda: [2048, 4096])
    keep_rates: list[float] = field(default_factory=lambda: [0.1, 0.3])
    methods: list[str] = field(default_factory=lambda: ["specprefill-default", "specprefill-lah8", "head-tail"])
    repeats: int = 2
    seed: int = 0
    plots: bool = True
    threads: int | None = None


@dataclass(frozen=True)
class TTFTRow:
    """Median timings of one method at one length and keep rate (``method == "full"``: the whole prompt)."""

    tokens: int
    method: str
    keep_rate: float
    kept_tokens: int
    keep_ratio: float
    method_seconds: float
    base_prefill_seconds: float
    ttft_seconds: float
    full_ttft_seconds: float
    speedup: float
    flop_ratio: float
    """Speculator FLOPs / base FLOPs at this length (the speculator with this row's look-ahead, or 8)."""
    ceiling: float
    """``1 / (keep_rate + flop_ratio)`` (the paper's formula, nominal keep rate)."""
    fraction_of_ceiling: float
    """``speedup / ceiling``."""
    ceiling_achieved: float
    """``1 / (keep_ratio + flop_ratio)`` with the keep ratio actually achieved (protected question included)."""
    runs: int


def build_random_base(shape_name: str, tokenizer: Any, seed: int = 0) -> tuple[Any, ModelShape]:
    """A bf16 Llama model of the given shape with random weights, built fast (no per-module init).

    Weights are allocated without initialisation, then every matrix is filled by tiling one seeded block
    of N(0, 0.02) values (norm weights are 1); rotary tables are computed normally. Only for timing.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    shape = BASE_SHAPES[shape_name]
    config = LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 130000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    model_cls: Any = LlamaForCausalLM
    with torch.device("meta"):
        model: Any = model_cls(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(seed)
    block = (torch.randn(1 << 20, generator=generator) * 0.02).to(torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.view(-1)
            if name.endswith("norm.weight"):
                flat.fill_(1.0)
                continue
            for start in range(0, flat.numel(), block.numel()):
                end = min(start + block.numel(), flat.numel())
                flat[start:end].copy_(block[: end - start])
    model.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as in SmolLM2 (to_empty unties them)
    model.eval()
    return model, ModelShape.from_config(config, name=f"{shape_name} (random weights)")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_ttft(opts: TTFTOptions, *, progress: bool | None = None) -> dict[str, Any]:
    """Run the TTFT benchmark and return a JSON-ready result (``meta``, ``rows``)."""
    import torch
    from tqdm.auto import tqdm

    from benchmarks.catalog import build_method
    from benchmarks.corpus import load_corpus
    from benchmarks.methods import PreparedSample, prepare_sample
    from benchmarks.runinfo import machine_info, set_threads, timestamp, versions
    from benchmarks.tasks import generate_sample
    from specprefill.backends.base import BaseRequest, GenerationParams
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.speculator.loading import load_speculator

    started = time.perf_counter()
    set_threads(opts.threads)
    speculator = load_speculator(opts.speculator)
    t_build = time.perf_counter()
    model, base_shape = build_random_base(opts.base_shape, speculator.tokenizer, opts.seed)
    build_seconds = time.perf_counter() - t_build
    base = TransformersBackend(model, speculator.tokenizer, name=base_shape.name)
    spec_shape = ModelShape.from_config(speculator.model.config, name=speculator.name)
    skipped: dict[str, str] = {}
    resources: dict[str, Any] = {"speculator": speculator, "seed": opts.seed}
    methods = []
    for name in opts.methods:
        try:
            if name == "rag":
                from specprefill.embeddings import PackagedEmbedder, packaged_minilm_dir

                packaged_minilm_dir()
                resources["embed"] = PackagedEmbedder().embed
            methods.append(build_method(name, **resources))
        except (ImportError, OSError, ValueError, RuntimeError) as exc:  # ConfigurationError is a ValueError
            skipped[name] = str(exc)
    count = speculator.count_tokens
    corpus = load_corpus(count_tokens=count)
    prepared: dict[int, PreparedSample] = {}
    for n in opts.lengths:
        sample = generate_sample("niah_single", n, opts.seed, corpus, count_tokens=count)
        prepared[n] = prepare_sample(sample, speculator.encode_with_specials)
    params = GenerationParams(max_new_tokens=1)

    def prefill(p: PreparedSample, kept: Sequence[int]) -> float:
        gc.collect()
        request = BaseRequest(
            token_ids=[p.input_ids[i] for i in kept], position_ids=[int(i) for i in kept], original_length=p.n_tokens
        )
        return float(base.generate(request, params).prefill_seconds)

    # warm-up: kernels and allocator, short prompts
    warm = prepared[min(opts.lengths)]
    prefill(warm, list(range(min(256, warm.n_tokens))))
    speculator.score(warm.input_ids[:256], speculator_config(8))

    full_runs: dict[int, list[float]] = {n: [] for n in opts.lengths}
    runs: dict[tuple[int, str, float], list[tuple[float, float, int]]] = {}
    total = opts.repeats * len(opts.lengths) * (1 + len(methods) * len(opts.keep_rates))
    bar = tqdm(total=total, desc="ttft", unit="run", disable=None if progress is None else not progress)
    for _ in range(opts.repeats):
        for n in opts.lengths:
            p = prepared[n]
            bar.set_postfix_str(f"{p.n_tokens} full")
            full_runs[n].append(prefill(p, list(range(p.n_tokens))))
            bar.update(1)
            for method in methods:
                for rate in opts.keep_rates:
                    bar.set_postfix_str(f"{p.n_tokens} {method.name} {rate}")
                    gc.collect()
                    selection = method.select(p, [rate])[0]
                    base_s = prefill(p, [int(i) for i in selection.kept])
                    runs.setdefault((n, method.name, rate), []).append((selection.seconds, base_s, len(selection.kept)))
                    bar.update(1)
    bar.close()

    rows: list[TTFTRow] = []
    for n in opts.lengths:
        p = prepared[n]
        full = _median(full_runs[n])
        base_flops = prefill_flops(base_shape, p.n_tokens)
        rows.append(
            TTFTRow(
                p.n_tokens,
                "full",
                1.0,
                p.n_tokens,
                1.0,
                0.0,
                full,
                full,
                full,
                1.0,
                0.0,
                1.0,
                1.0,
                1.0,
                len(full_runs[n]),
            )
        )
        for method in methods:
            config = getattr(method, "config", None)
            lookahead = int(config.lookahead) if config is not None else 0
            ratio = speculator_flops(spec_shape, p.n_tokens, lookahead) / base_flops if lookahead else 0.0
            for rate in opts.keep_rates:
                got = runs[(n, method.name, rate)]
                sel_s = _median([g[0] for g in got])
                base_s = _median([g[1] for g in got])
                ttft = _median([g[0] + g[1] for g in got])
                ceiling = speedup_ceiling(rate, ratio)
                rows.append(
                    TTFTRow(
                        tokens=p.n_tokens,
                        method=method.name,
                        keep_rate=rate,
                        kept_tokens=got[-1][2],
                        keep_ratio=got[-1][2] / p.n_tokens,
                        method_seconds=sel_s,
                        base_prefill_seconds=base_s,
                        ttft_seconds=ttft,
                        full_ttft_seconds=full,
                        speedup=full / ttft,
                        flop_ratio=ratio,
                        ceiling=ceiling,
                        fraction_of_ceiling=(full / ttft) / ceiling,
                        ceiling_achieved=speedup_ceiling(got[-1][2] / p.n_tokens, ratio),
                        runs=len(got),
                    )
                )
    meta = {
        "bench": "ttft",
        "options": asdict(opts),
        "note": "base has random weights: timing only",
        "base_shape": asdict(base_shape),
        "base_parameters": int(sum(p.numel() for p in model.parameters())),
        "speculator": speculator.name,
        "speculator_shape": asdict(spec_shape),
        "speculator_parameters": int(sum(p.numel() for p in speculator.model.parameters())),
        "dtype": str(next(model.parameters()).dtype),
        "skipped": skipped,
        "flop_formula": "prefill(n) = 2 n P + 2 L n^2 d_q + 2 d V; decode(c) = 2 P + 4 L c d_q + 2 d V; speculator = "
        "prefill(n) + sum_{j=1}^{lah-1} decode(n+j) + 2 L H lah n d_h; r = speculator / base prefill(n); "
        "ceiling = 1 / (keep_rate + r)",
        "versions": versions(),
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "wall": {"build_base_seconds": build_seconds, "total_seconds": time.perf_counter() - started},
        "finished": timestamp(),
    }
    del model
    return {"meta": meta, "rows": [asdict(r) for r in rows]}


def speculator_config(lookahead: int) -> Any:
    """Default config with the given look-ahead."""
    from specprefill.config import SpecPrefillConfig

    return SpecPrefillConfig(lookahead=lookahead)


# --- command line ---------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the TTFT benchmark's options to a parser."""
    parser.add_argument(
        "--preset",
        choices=["full", "smoke"],
        default="full",
        help="'full' (2k/4k tokens, 1.7B-shaped base) or 'smoke' (tiny base, CI)",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder (default results/)")
    parser.add_argument("--speculator", default=None, metavar="NAME")
    parser.add_argument("--base-shape", choices=sorted(BASE_SHAPES), default=None)
    parser.add_argument("--lengths", nargs="+", type=int, default=None, metavar="N")
    parser.add_argument("--keep-rates", nargs="+", type=float, default=None, metavar="R")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=TTFT_METHODS,
        default=None,
        metavar="METHOD",
        help="selectors timed against the full prompt (default specprefill-lah8 head-tail): " + ", ".join(TTFT_METHODS),
    )
    parser.add_argument("--repeats", type=int, default=None, metavar="K", help="interleaved runs (median)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")


_SMOKE = {
    "base_shape": "tiny",
    "lengths": [512],
    "keep_rates": [0.1, 0.3],
    "repeats": 1,
    "methods": ["specprefill-lah8", "head-tail"],
}


def options_from_args(args: argparse.Namespace) -> TTFTOptions:
    """Preset values overridden by whatever was given on the command line."""
    values: dict[str, Any] = dict(_SMOKE) if args.preset == "smoke" else {}
    for key in ("out", "speculator", "base_shape", "lengths", "keep_rates", "methods", "repeats", "seed", "threads"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    values["plots"] = not args.no_plots
    return TTFTOptions(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments: write JSON, report and plots; print the table."""
    from benchmarks import report
    from benchmarks.runinfo import command_line

    opts = options_from_args(args)
    result = run_ttft(opts)
    result["meta"]["command"] = command_line("python -m benchmarks.ttft", opts, skip=("plots",))
    files = report.save_and_report(Path(opts.out), "ttft", result, plots=opts.plots)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.ttft_summary(result))
        print("\nwrote " + ", ".join(str(f) for f in files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks.ttft [--preset smoke] ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ttft", description=DESCRIPTION)
    configure_parser(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
