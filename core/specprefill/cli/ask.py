"""``specprefill ask``: answer a question from a folder of text files (speculator prunes, base model answers)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from specprefill.cli import options
from specprefill.cli.errors import EXIT_OK
from specprefill.cli.output import engine_stats_lines, print_block, steps, time_split, write_json
from specprefill.errors import ConfigurationError, EmptyPromptError, SpecPrefillError
from specprefill.prompt.documents import ASK_STOP, ask_messages, load_documents

if TYPE_CHECKING:
    from specprefill.config import SpecPrefillConfig
    from specprefill.engine.core import EngineResult, SpecPrefillEngine
    from specprefill.result import Message

__all__ = ["add_parser", "run", "stream_answer"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ask`` under the top-level subparsers."""
    parser = options.add_command(subparsers, "ask", run)
    parser.add_argument("folder", metavar="FOLDER", help="folder of text files (read recursively)")
    parser.add_argument("question", metavar="QUESTION", help="the question to answer")
    parser.add_argument(
        "--glob",
        default="*",
        metavar="PATTERN",
        help='which files to read, e.g. "*.txt" (default: every non-binary file)',
    )
    options.add_pruning(parser)
    parser.add_argument(
        "--base",
        default="smollm2-135m",
        metavar="NAME",
        help="base model for transformers: embedded name, folder, .gguf or hub id "
        "(default smollm2-135m; when equal to --speculator the weights are loaded once)",
    )
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length cap (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    gen.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print the answer as it is generated (default: on)",
    )
    gen.add_argument(
        "--json", action="store_true", help="print one JSON object (answer, stats, sources) on stdout and nothing else"
    )
    return parser


def _load_engine(args: argparse.Namespace, config: SpecPrefillConfig) -> SpecPrefillEngine:
    """Load the speculator and the base model (weights loaded once when both are the same model)."""
    from specprefill.engine.factory import load_engine

    with steps(["speculator", "base model"]) as step:
        step(f"loading speculator {args.speculator}")
        speculator = options.load_speculator(args.speculator, options.verbose(args))
        step(f"loading base model {args.base}")
        return load_engine(speculator, base=args.base, config=config)


def run(args: argparse.Namespace) -> int:
    """Answer QUESTION from the files under FOLDER; print the answer, then stats and the time split."""
    config = options.build_config(args)
    if args.max_new_tokens < 1:
        raise ConfigurationError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise ConfigurationError(f"--temperature must be >= 0 (got {args.temperature})")
    if not args.question.strip():
        raise EmptyPromptError("the question is empty; ask something")
    docs = load_documents(args.folder, args.glob, max_bytes=options.read_limit(args))
    options.check_size(sum(len(d.text) for d in docs), config, force=args.force, source=f"{len(docs)} document(s)")
    messages = ask_messages(docs, args.question)

    start = time.perf_counter()
    engine = _load_engine(args, config)
    load_seconds = time.perf_counter() - start
    # The prompt ends with "Question: ..."; a model that starts inventing the next question is done answering.
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "stop": list(ASK_STOP),
    }
    if args.json or not args.stream:
        result = engine.generate(messages, **gen_kwargs)
        if args.json:
            stats = result.stats.to_dict()
            write_json(
                {
                    "question": args.question,
                    "answer": result.text,
                    "finish_reason": result.finish_reason,
                    "sources": [d.name for d in docs],
                    "load_seconds": load_seconds,
                    "time_split": time_split(stats, load_seconds),
                    "stats": stats,
                    "prune": result.prune.to_dict(),
                }
            )
            return EXIT_OK
        print(result.text.strip())
    else:
        result = stream_answer(engine, messages, gen_kwargs)
    lines = [f"documents: {len(docs)} ({', '.join(d.name for d in docs)})"]
    lines += engine_stats_lines(result.stats.to_dict(), load_seconds=load_seconds, finish_reason=result.finish_reason)
    print_block(lines, sys.stderr)
    return EXIT_OK


def stream_answer(engine: SpecPrefillEngine, messages: list[Message], gen_kwargs: dict[str, Any]) -> EngineResult:
    """Print the answer to stdout as it is generated; return the final result."""
    result: EngineResult | None = None
    started = False
    pending = ""  # trailing white space is held back, so the answer ends with exactly one newline
    for chunk in engine.stream(messages, **gen_kwargs):
        text = pending + chunk.text
        if not started:
            text = text.lstrip()
        body = text.rstrip()
        pending = text[len(body) :]
        if body:
            sys.stdout.write(body)
            sys.stdout.flush()
            started = True
        if chunk.result is not None:
            result = chunk.result
    if started:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if result is None:
        raise SpecPrefillError("the engine's stream ended without a final result")
    return result
