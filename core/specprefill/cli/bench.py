"""``specprefill bench NAME [ARGS]``: the benchmarks that ship with the library, from an explicit registry.

The evaluation harness (quality, TTFT, the report) is not installed; it runs from a repository checkout as
``python -m benchmarks.<module>``.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any

from specprefill.cli import options
from specprefill.cli.errors import EXIT_ERROR
from specprefill.errors import ConfigurationError

__all__ = ["BENCHMARKS", "BenchCommand", "add_parser", "run"]


@dataclass(frozen=True)
class BenchCommand:
    """A benchmark the CLI can run: a module with ``main(argv) -> int``."""

    module: str
    help: str


BENCHMARKS: dict[str, BenchCommand] = {
    "overhead": BenchCommand(
        module="specprefill.bench.overhead",
        help="speculator scoring vs a plain prefill, side by side in one run (time and peak memory)",
    ),
}
"""Every ``specprefill bench`` command, by name."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` under the top-level subparsers."""
    listing = "; ".join(f"{name}: {cmd.help}" for name, cmd in BENCHMARKS.items())
    parser = options.add_command(subparsers, "bench", run)
    parser.add_argument("name", metavar="NAME", help=f"benchmark to run ({listing})")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the benchmark")
    return parser


def run(args: argparse.Namespace) -> int:
    """Import the named benchmark and run its ``main`` with the remaining arguments."""
    command = BENCHMARKS.get(args.name)
    if command is None:
        raise ConfigurationError(
            f"unknown benchmark {args.name!r}; choose one of: {', '.join(BENCHMARKS)} "
            "(the evaluation harness runs from a checkout: python -m benchmarks.quality)"
        )
    main = importlib.import_module(command.module).main
    options.quiet_transformers(options.verbose(args))
    try:
        code = main(list(args.bench_args))
    except SystemExit as exc:  # the benchmark's own argparse (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return int(code or 0)
