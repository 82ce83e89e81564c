"""The top-level parser, the subcommand registry and ``main``: logging, streams and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from specprefill.cli import ask, bench, heads, info, options, prune, serve
from specprefill.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, fail

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[ModuleType, ...] = (prune, ask, bench, serve, heads, info)
"""The subcommand modules, in help order; each has ``add_parser(subparsers)`` and ``run(args) -> int``."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``specprefill`` command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="specprefill",
        description="Speculative Prefill: a small speculator model picks the prompt chunks that matter; "
        "the base model prefills only those, at their original positions (arXiv 2502.02789).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {info.version()}")
    options.add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``specprefill`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a usage error or any failure (one ``error: ...`` line on
        stderr), 130 when interrupted.

    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
        if extra and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra_args = extra
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    verbose = options.verbose(args)
    _setup_logging(verbose)
    if not verbose and not _isatty(sys.stderr) and "tqdm" not in sys.modules:
        # Libraries' own progress bars (e.g. the one-time GGUF de-quantisation) stay out of logs and pipes;
        # ours are hidden off a terminal anyway. tqdm reads TQDM_* defaults when it is first imported.
        os.environ.setdefault("TQDM_DISABLE", "1")
    for stream in (sys.stdout, sys.stderr):  # never die on a character the terminal cannot show
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        code: int = handler(args)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (e.g. piped into `head`): not an error of ours. Point stdout at devnull
        # so the interpreter's final flush does not complain.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # typed errors, MemoryError and anything unexpected: one line, exit 2
        return fail(exc, verbose=verbose)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("specprefill")
    if not any(getattr(h, "_specprefill_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._specprefill_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
