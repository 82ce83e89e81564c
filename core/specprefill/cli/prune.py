"""``specprefill prune``: score a text file with the speculator and show what a base model would see."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specprefill.cli import options
from specprefill.cli.errors import EXIT_OK
from specprefill.cli.output import print_block, prune_stats_lines, steps, write_json
from specprefill.errors import ConfigurationError, EmptyPromptError
from specprefill.prompt.documents import question_messages, read_text_input

if TYPE_CHECKING:
    from specprefill.result import Message, PruneResult

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prune`` under the top-level subparsers."""
    parser = options.add_command(subparsers, "prune", run)
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="text file to prune, or - for stdin (default -)"
    )
    parser.add_argument(
        "-q",
        "--question",
        default=None,
        metavar="Q",
        help="a question about the document: prune as chat with the question protected",
    )
    options.add_pruning(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print one JSON object (result and stats) on stdout and nothing else"
    )
    out.add_argument(
        "--importance",
        action="store_true",
        help="with --json: include per-token importance (the speculator's, and ranked_importance: what "
        "selection ranked, with the question-word channel)",
    )
    out.add_argument(
        "--html",
        default=None,
        metavar="OUT.html",
        help="also write a self-contained HTML page of kept/dropped tokens shaded by importance",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Prune FILE (or stdin) and print the kept text (or one JSON object) with its stats."""
    config = options.build_config(args)
    if args.importance and not args.json:
        raise ConfigurationError("--importance only applies to --json output; add --json")
    path = Path(args.file).expanduser()
    if args.file != "-" and path.is_file():  # a known size: the estimate comes before anything is read
        options.check_size(path.stat().st_size, config, force=args.force, source=args.file)
    text, source = read_text_input(args.file, max_bytes=options.read_limit(args))
    if not text.strip():
        raise EmptyPromptError(f"{source} is empty; nothing to prune")
    options.check_size(len(text), config, force=args.force, source=source)
    prompt: str | list[Message] = question_messages(text, args.question) if args.question else text
    with steps(["loading speculator"]) as step:
        step("loading speculator")
        speculator = options.load_speculator(args.speculator, options.verbose(args))
    result: PruneResult = speculator.prune(prompt, config)
    if args.html:
        _write_html(result, args.html, source, args.question)
    if args.json:
        payload = result.to_dict(include_importance=args.importance)
        payload.update(source=source, question=args.question, config=config.model_dump())
        write_json(payload)
        return EXIT_OK
    sys.stdout.write(result.text)
    if not result.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    print_block(prune_stats_lines(result), sys.stderr)
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _write_html(result: PruneResult, target: str, source: str, question: str | None) -> None:
    from specprefill.report_html import render_prune_html

    title = f"specprefill: {Path(source).name}" + (f" — {question.strip()}" if question else "")
    try:
        Path(target).expanduser().write_text(render_prune_html(result, title=title), encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"--html: cannot write {target!r}: {exc.strerror or exc}") from exc
