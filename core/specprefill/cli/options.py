"""Options shared by the subcommands: verbosity, pruning settings, the size guard, loading the speculator."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
from collections.abc import Callable
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptTooLongError

__all__ = [
    "CHARS_PER_TOKEN",
    "COMMAND_TEXTS",
    "DEFAULT_WINDOW_TOKENS",
    "SECONDS_PER_1K_TOKENS",
    "SIZE_LIMIT_TOKENS",
    "add_command",
    "add_common",
    "add_force",
    "add_pruning",
    "build_config",
    "check_size",
    "load_speculator",
    "quiet_transformers",
    "read_limit",
    "size_estimate",
    "verbose",
]

logger = logging.getLogger("specprefill")

COMMAND_TEXTS: dict[str, tuple[str, str]] = {
    "prune": (
        "score a text file with the speculator and show what a base model would see",
        "Score a text file (or stdin) with the speculator and print the kept text; stats go to "
        "stderr. With --question the file is pruned as a document and the question is protected.",
    ),
    "ask": (
        "answer a question from a folder of text files (speculator prunes, base model answers)",
        "Read every text file under FOLDER, prune the documents against QUESTION with the "
        "speculator, and let the base model answer from the kept chunks at their original positions.",
    ),
    "bench": (
        "benchmarks measured side by side in one run (e.g. 'bench overhead')",
        "Run a benchmark; arguments after NAME go to the benchmark (see 'specprefill bench NAME "
        "--help'). The evaluation harness runs from a repository checkout: python -m benchmarks.quality.",
    ),
    "serve": (
        "start vLLM's OpenAI server with server-side pruning (speculator beside the base model)",
        "Start vLLM's OpenAI-compatible API server (vllm serve, via python -m specprefill.server.vllm_serve) with "
        "the SpecPrefill plugin configured: every chat/completion request is pruned by the speculator "
        "and prefilled at its original positions. Unknown options go to vLLM unchanged.",
    ),
    "heads": (
        "calibrate a speculator's retrieval-head profile (which heads find the asked-about sentence)",
        "Score synthetic fact-lookup prompts with every attention head of SPECULATOR alone and save each "
        "head's mean reciprocal rank of the answer sentence. SpecPrefillConfig.retrieval_heads then scores "
        "with the best heads. The packaged models ship a profile; the default output is the cache, where "
        "the speculator finds it on the next load.",
    ),
    "info": (
        "show version, installed extras, embedded models and cache folder",
        "Show the version, which optional extras are installed, the embedded "
        "models and whether their packages are installed, and the cache folder.",
    ),
}
"""Each subcommand's ``(help, description)``: the one-line summary in ``specprefill --help`` and the text
atop ``specprefill NAME --help``."""

SIZE_LIMIT_TOKENS = 50_000
"""Above about this many prompt tokens ``prune`` and ``ask`` stop and ask for ``--force``."""

CHARS_PER_TOKEN = 4
"""Characters per token for the estimate made before any tokenizer is loaded (English BPE vocabularies)."""

SECONDS_PER_1K_TOKENS = 4.0
"""Rough speculator seconds per 1,000 tokens on a 2-core CPU (SmolLM2-135M, float32), for the estimate."""

DEFAULT_WINDOW_TOKENS = 8192
"""The embedded speculator's context window: longer prompts are scored in windows of this size."""


def verbose(args: argparse.Namespace) -> bool:
    """Whether ``-v/--verbose`` was given (before or after the subcommand)."""
    return bool(getattr(args, "verbose", False))


def add_common(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (accepted before and after the subcommand)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show log messages (and tracebacks of errors)",
    )


def add_command(subparsers: Any, name: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Register subcommand ``name`` (texts from :data:`COMMAND_TEXTS`) with the common options and its handler.

    Returns:
        The new subcommand parser, for its own arguments; ``args.handler`` is ``handler``.

    """
    help_text, description = COMMAND_TEXTS[name]
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, description=description)
    add_common(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_force(parser: argparse.ArgumentParser) -> None:
    """``--force``: run on inputs above the size limit."""
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"run even when the input is above about {SIZE_LIMIT_TOKENS:,} tokens (scoring may take very long)",
    )


def add_pruning(parser: argparse.ArgumentParser) -> None:
    """The pruning settings shared by ``prune`` and ``ask``."""
    group = parser.add_argument_group("pruning")
    group.add_argument(
        "--keep-rate",
        type=float,
        default=None,
        metavar="R",
        help="fraction of prunable 32-token chunks to keep, in (0, 1] (default 0.3)",
    )
    group.add_argument(
        "--max-kept-tokens", type=int, default=None, metavar="N", help="absolute cap on kept (unprotected) tokens"
    )
    group.add_argument(
        "--min-prompt-tokens",
        type=int,
        default=0,
        metavar="N",
        help="prompts shorter than this are not pruned (default 0; the library's is 256)",
    )
    group.add_argument("--chunk-size", type=int, default=None, metavar="N", help="tokens per chunk (default 32)")
    group.add_argument(
        "--lookahead",
        type=int,
        default=None,
        metavar="N",
        help="scoring queries: last prompt token + N-1 decoded tokens (default: the config's)",
    )
    group.add_argument(
        "--protect-question-tokens",
        type=int,
        default=None,
        metavar="N",
        help="protect at most the last N tokens of the question, the final paragraph of the user message (default 256)",
    )
    group.add_argument(
        "--speculator",
        default="smollm2-135m",
        metavar="NAME",
        help="speculator: embedded name, transformers folder, .gguf file or hub id "
        "(default smollm2-135m, packaged, offline)",
    )
    add_force(parser)


def build_config(args: argparse.Namespace) -> SpecPrefillConfig:
    """The validated pruning config from the command line (built before any model is loaded)."""
    overrides = {
        "keep_rate": args.keep_rate,
        "max_kept_tokens": args.max_kept_tokens,
        "chunk_size": args.chunk_size,
        "lookahead": args.lookahead,
        "min_prompt_tokens": args.min_prompt_tokens,
        "protect_question_tokens": getattr(args, "protect_question_tokens", None),
    }
    return SpecPrefillConfig(**{k: v for k, v in overrides.items() if v is not None})


def read_limit(args: argparse.Namespace) -> int | None:
    """Most bytes to read without ``--force`` (four times the size limit; None with ``--force``)."""
    return None if args.force else 4 * SIZE_LIMIT_TOKENS * CHARS_PER_TOKEN


def size_estimate(n_chars: int, config: SpecPrefillConfig) -> tuple[int, int, float]:
    """``(tokens, speculator windows, speculator seconds)`` estimated from a character count.

    Tokens are ``n_chars / CHARS_PER_TOKEN``; each window holds the context window less the question tail
    that every window also sees; seconds use :data:`SECONDS_PER_1K_TOKENS`.
    """
    tokens = math.ceil(n_chars / CHARS_PER_TOKEN)
    window = config.max_speculator_tokens or DEFAULT_WINDOW_TOKENS
    per_window = max(window - config.window_query_tokens - config.lookahead, 1)
    windows = max(1, math.ceil(tokens / per_window)) if tokens > window else 1
    return tokens, windows, tokens / 1000 * SECONDS_PER_1K_TOKENS


def check_size(n_chars: int, config: SpecPrefillConfig, *, force: bool, source: str) -> None:
    """Refuse inputs above :data:`SIZE_LIMIT_TOKENS` unless ``force``; with ``force``, warn with the estimate.

    Raises:
        PromptTooLongError: Above the limit without ``force``; the message gives the estimate.

    """
    tokens, windows, seconds = size_estimate(n_chars, config)
    if tokens <= SIZE_LIMIT_TOKENS:
        return
    estimate = (
        f"{source} is about {tokens:,} tokens ({n_chars:,} characters): the speculator would score it in "
        f"{windows} window{'s' if windows != 1 else ''}, roughly {_duration(seconds)} of CPU time"
    )
    if not force:
        raise PromptTooLongError(f"{estimate}; pass --force to run anyway, or give a smaller input")
    logger.warning("%s (--force given: running anyway)", estimate)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def quiet_transformers(verbose: bool) -> None:
    """Silence transformers' own warnings and weight-loading bars unless ``--verbose``."""
    if verbose or importlib.util.find_spec("transformers") is None:
        return
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def load_speculator(name: str, verbose: bool) -> Any:
    """Load the speculator, with transformers kept quiet unless ``--verbose``."""
    from specprefill.speculator.loading import load_speculator as load

    quiet_transformers(verbose)
    return load(name)
