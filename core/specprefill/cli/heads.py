"""``specprefill heads``: calibrate and save a speculator's retrieval-head profile (``speculator.heads``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from specprefill.cli import options
from specprefill.cli.errors import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``heads`` under the top-level subparsers."""
    parser = options.add_command(subparsers, "heads", run)
    parser.add_argument(
        "--speculator", default="smollm2-135m", metavar="NAME", help="embedded name, model folder, .gguf or hub id"
    )
    parser.add_argument("--samples", type=int, default=48, help="calibration prompts (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration prompts (default 0)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE.json", help="where to write the profile (default: the cache)"
    )
    parser.add_argument("--top", type=int, default=16, help="how many of the best heads to print (default 16)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Calibrate, save, and print the best heads."""
    from tqdm.auto import tqdm

    from specprefill.speculator.calibrate import calibrate_heads
    from specprefill.speculator.heads import format_top, save_profile

    speculator = options.load_speculator(args.speculator, options.verbose(args))
    with tqdm(total=args.samples, desc="calibration prompts", unit="prompt", disable=None) as bar:
        profile = calibrate_heads(
            speculator, samples=args.samples, seed=args.seed, progress=lambda done, total: bar.update(1)
        )
    path = save_profile(profile, args.out)
    print(f"saved the head profile of {profile.model} ({profile.layers} layers x {profile.heads} heads) to {path}")
    print(f"best heads (mean reciprocal rank): {format_top(profile, args.top)}")
    return EXIT_OK
