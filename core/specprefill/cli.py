"""The ``specprefill`` console script: ``prune``, ``ask``, ``bench`` and ``info``.

Examples::

    specprefill prune report.txt --question "Who signed the lease?" --html report.html
    cat notes.txt | specprefill prune - --keep-rate 0.2 --json
    specprefill ask examples/documents "In which year was the stone bridge in Lanternfield completed?"
    specprefill bench overhead
    specprefill info

Typed errors (:class:`specprefill.SpecPrefillError`) print one ``error: ...`` line on stderr and exit with
status 2; ``--verbose`` shows log messages and the traceback. Heavy libraries (torch, transformers) are
imported only by the commands that load a model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, EmptyPromptError, PromptError, SpecPrefillError

if TYPE_CHECKING:
    from specprefill.engine import EngineResult, SpecPrefillEngine
    from specprefill.result import Message, PruneResult

__all__ = [
    "ASK_STOP",
    "ASK_SYSTEM_PROMPT",
    "Document",
    "ask_messages",
    "build_parser",
    "decode_bytes",
    "load_documents",
    "main",
    "question_messages",
    "question_tail",
]

logger = logging.getLogger("specprefill")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

ASK_SYSTEM_PROMPT = (
    "You answer questions using only the documents the user gives you. "
    "Answer briefly and name the source document. If the documents do not contain the answer, say so."
)
"""System message of ``specprefill ask`` (protected from pruning like every system prompt)."""

ASK_STOP = ("\nQuestion:",)
"""Stop strings of ``specprefill ask``: the answer ends where the model starts a new question."""

_EXTRAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hf", ("torch", "transformers", "accelerate", "gguf", "safetensors")),
    ("openai", ("openai", "tiktoken")),
    ("vllm", ("vllm",)),
    ("langchain", ("langchain_core",)),
    ("llama-index", ("llama_index.core",)),
)
_DISTRIBUTION = {"langchain_core": "langchain-core", "llama_index.core": "llama-index-core"}


@dataclass(frozen=True)
class Document:
    """One text file read by ``specprefill ask``."""

    name: str
    """Path relative to the folder, with ``/`` separators."""
    text: str
    """Contents decoded as UTF-8 (invalid bytes replaced)."""


# --- pure helpers (no model) ---------------------------------------------------------------------------
def decode_bytes(data: bytes) -> str:
    """Decode bytes as UTF-8, replacing invalid sequences (never raises); a leading BOM is dropped."""
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def question_tail(question: str) -> str:
    """The end of the user message that carries the question (what the CLI protects)."""
    return f"\n\nQuestion: {question.strip()}"


def question_messages(document: str, question: str) -> list[Message]:
    """Chat messages for pruning a document against a question.

    The question comes last in the user message, where the config's ``protect_question_tokens`` keeps
    it from being dropped.
    """
    return [{"role": "user", "content": document.rstrip() + question_tail(question)}]


def ask_messages(
    documents: Sequence[Document], question: str, *, system_prompt: str = ASK_SYSTEM_PROMPT
) -> list[Message]:
    """Chat messages for ``specprefill ask``: a system instruction, then the documents and the question.

    Args:
        documents: The documents, in order; each gets a ``[source: name]`` header.
        question: The user's question (placed last, so it is protected).
        system_prompt: The system message.

    Returns:
        ``[system, user]`` messages.

    """
    blocks = [f"[source: {d.name}]\n{d.text.strip()}" for d in documents]
    user = "\n\n".join(blocks) + question_tail(question)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load_documents(folder: str | Path, pattern: str = "*", *, progress: bool | None = None) -> list[Document]:
    """Read every text file under ``folder`` whose name matches ``pattern`` (recursively, sorted by path).

    Hidden files and folders are skipped, and so are binary files (a NUL byte in the first 8 KiB) and
    files that are empty or only white space. Bytes are decoded as UTF-8 with invalid sequences replaced.

    Args:
        folder: Folder to read.
        pattern: Glob for file names, e.g. ``"*.txt"`` (``"*"``: every file).
        progress: Show a progress bar on stderr (None: only when stderr is a terminal).

    Returns:
        The documents, sorted by relative path.

    Raises:
        PromptError: The folder does not exist or is not a folder.
        EmptyPromptError: No non-empty text file matched.

    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise PromptError(f"folder {str(folder)!r} does not exist; give a folder of text files")
    if not root.is_dir():
        raise PromptError(f"{str(folder)!r} is not a folder; give a folder of text files (or 'prune FILE')")
    paths = sorted(
        (p for p in root.rglob(pattern) if p.is_file() and not _is_hidden(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs: list[Document] = []
    for path in _progress(paths, desc="reading files", unit="file", enabled=progress):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PromptError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if b"\x00" in data[:8192]:
            logger.info("skipping binary file %s", path)
            continue
        text = decode_bytes(data)
        if not text.strip():
            logger.info("skipping empty file %s", path)
            continue
        docs.append(Document(path.relative_to(root).as_posix(), text))
    if not docs:
        raise EmptyPromptError(
            f"no non-empty text files matching {pattern!r} under {str(folder)!r}; check the folder or pass --glob"
        )
    return docs


def _progress(items: Sequence[Any], *, desc: str, unit: str, enabled: bool | None) -> Iterator[Any]:
    from tqdm.auto import tqdm

    disable = None if enabled is None else not enabled
    yield from tqdm(items, desc=desc, unit=unit, disable=disable, file=sys.stderr, leave=False)


# --- argument parsing ----------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show log messages (and tracebacks of errors)",
    )


def _add_pruning(parser: argparse.ArgumentParser) -> None:
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
        help="scoring queries: last prompt token + N-1 decoded tokens (default 8)",
    )
    group.add_argument(
        "--protect-question-tokens",
        type=int,
        default=None,
        metavar="N",
        help="protect the last N tokens of the user message (default: the question itself)",
    )
    group.add_argument(
        "--speculator",
        default="smollm2-135m",
        metavar="NAME",
        help="speculator: embedded name, transformers folder, .gguf file or hub id "
        "(default smollm2-135m, packaged, offline)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``specprefill`` command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="specprefill",
        description="Speculative Prefill: a small speculator model picks the prompt chunks that matter; "
        "the base model prefills only those, at their original positions (arXiv 2502.02789).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    prune = sub.add_parser(
        "prune",
        help="score a text file with the speculator and show what a base model would see",
        description="Score a text file (or stdin) with the speculator and print the kept text; stats go to "
        "stderr. With --question the file is pruned as a document and the question is protected.",
    )
    _add_common(prune)
    prune.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="text file to prune, or - for stdin (default -)"
    )
    prune.add_argument(
        "-q",
        "--question",
        default=None,
        metavar="Q",
        help="a question about the document: prune as chat with the question protected",
    )
    _add_pruning(prune)
    out = prune.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print one JSON object (result and stats) on stdout and nothing else"
    )
    out.add_argument("--importance", action="store_true", help="with --json: include per-token importance")
    out.add_argument(
        "--html",
        default=None,
        metavar="OUT.html",
        help="also write a self-contained HTML page of kept/dropped tokens shaded by importance",
    )
    prune.set_defaults(handler=_cmd_prune)

    ask = sub.add_parser(
        "ask",
        help="answer a question from a folder of text files (speculator prunes, base model answers)",
        description="Read every text file under FOLDER, prune the documents against QUESTION with the "
        "speculator, and let the base model answer from the kept chunks at their original positions.",
    )
    _add_common(ask)
    ask.add_argument("folder", metavar="FOLDER", help="folder of text files (read recursively)")
    ask.add_argument("question", metavar="QUESTION", help="the question to answer")
    ask.add_argument(
        "--glob",
        default="*",
        metavar="PATTERN",
        help='which files to read, e.g. "*.txt" (default: every non-binary file)',
    )
    _add_pruning(ask)
    ask.add_argument(
        "--base",
        default="smollm2-135m",
        metavar="NAME",
        help="base model for transformers: embedded name, folder, .gguf or hub id "
        "(default smollm2-135m; when equal to --speculator the weights are loaded once)",
    )
    gen = ask.add_argument_group("generation")
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
    ask.set_defaults(handler=_cmd_ask)

    bench = sub.add_parser(
        "bench",
        help="benchmarks measured side by side in one run (e.g. 'bench overhead')",
        description="Run a benchmark from specprefill.bench; arguments after NAME go to the benchmark "
        "(see 'specprefill bench NAME --help').",
    )
    _add_common(bench)
    bench.add_argument("name", metavar="NAME", help="benchmark to run: " + (", ".join(_bench_names()) or "none"))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the benchmark")
    bench.set_defaults(handler=_cmd_bench)

    info = sub.add_parser(
        "info",
        help="show version, installed extras, embedded models and cache folder",
        description="Show the version, which optional extras are installed, the embedded "
        "models and whether their packages are installed, and the cache folder.",
    )
    _add_common(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_cmd_info)
    return parser


# --- entry point ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``specprefill`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a usage or specprefill error, 130 when interrupted.

    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    verbose = bool(getattr(args, "verbose", False))
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
    except SpecPrefillError as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
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


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("specprefill")
    if not any(getattr(h, "_specprefill_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._specprefill_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


def _quiet_transformers(verbose: bool) -> None:
    """Silence transformers' own warnings and weight-loading bars unless ``--verbose``."""
    if verbose or importlib.util.find_spec("transformers") is None:
        return
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


# --- commands ------------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> SpecPrefillConfig:
    """Build the validated pruning config from the command line (before any model is loaded)."""
    overrides = {
        "keep_rate": args.keep_rate,
        "max_kept_tokens": args.max_kept_tokens,
        "chunk_size": args.chunk_size,
        "lookahead": args.lookahead,
        "min_prompt_tokens": args.min_prompt_tokens,
    }
    if getattr(args, "protect_question_tokens", None) is not None:
        overrides["protect_question_tokens"] = args.protect_question_tokens
    return SpecPrefillConfig(**{k: v for k, v in overrides.items() if v is not None})


def _protect_question(
    config: SpecPrefillConfig, args: argparse.Namespace, speculator: Any, question: str
) -> SpecPrefillConfig:
    """Protect exactly the question tail (plus a token of slack), unless the user chose a number."""
    if args.protect_question_tokens is not None:
        return config
    count = getattr(speculator, "count_tokens", None)
    if not callable(count):
        return config
    return config.with_overrides(protect_question_tokens=int(count(question_tail(question))) + 1)


def _read_input(file: str) -> tuple[str, str]:
    """Read FILE or stdin as bytes and decode it; returns ``(text, display name)``."""
    if file == "-":
        stream: IO[bytes] = sys.stdin.buffer
        return decode_bytes(stream.read()), "<stdin>"
    path = Path(file).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise PromptError(f"file {file!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise PromptError(f"{file!r} is a folder; give a text file (or use 'ask FOLDER QUESTION')") from exc
    except OSError as exc:
        raise PromptError(f"cannot read {file!r}: {exc.strerror or exc}") from exc
    return decode_bytes(data), str(path)


def _load_speculator(name: str, verbose: bool) -> Any:
    from specprefill.models import load_speculator

    _quiet_transformers(verbose)
    return load_speculator(name)


def _cmd_prune(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.importance and not args.json:
        raise ConfigurationError("--importance only applies to --json output; add --json")
    text, source = _read_input(args.file)
    if not text.strip():
        raise EmptyPromptError(f"{source} is empty; nothing to prune")
    prompt: str | list[Message] = question_messages(text, args.question) if args.question else text
    verbose = bool(getattr(args, "verbose", False))
    with _steps(["loading speculator"], enabled=None) as step:
        step("loading speculator")
        speculator = _load_speculator(args.speculator, verbose)
    if args.question:
        config = _protect_question(config, args, speculator, args.question)
    result: PruneResult = speculator.prune(prompt, config)
    if args.html:
        from specprefill.report_html import render_prune_html

        title = f"specprefill: {Path(source).name}" + (f" — {args.question.strip()}" if args.question else "")
        out_path = Path(args.html).expanduser()
        try:
            out_path.write_text(render_prune_html(result, title=title), encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"--html: cannot write {args.html!r}: {exc.strerror or exc}") from exc
    if args.json:
        payload = result.to_dict(include_importance=args.importance)
        payload["source"] = source
        payload["question"] = args.question
        payload["config"] = config.model_dump()
        _write_json(payload)
        return EXIT_OK
    sys.stdout.write(result.text)
    if not result.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    _print_block(_prune_stats_lines(result), sys.stderr)
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _cmd_ask(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.max_new_tokens < 1:
        raise ConfigurationError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise ConfigurationError(f"--temperature must be >= 0 (got {args.temperature})")
    if not args.question.strip():
        raise EmptyPromptError("the question is empty; ask something")
    docs = load_documents(args.folder, args.glob)
    messages = ask_messages(docs, args.question)
    verbose = bool(getattr(args, "verbose", False))

    from specprefill.backends.transformers import TransformersBackend
    from specprefill.engine import SpecPrefillEngine

    start = time.perf_counter()
    with _steps(["speculator", "base model"], enabled=None) as step:
        step(f"loading speculator {args.speculator}")
        speculator = _load_speculator(args.speculator, verbose)
        step(f"loading base model {args.base}")
        if args.base == args.speculator and hasattr(speculator, "model") and hasattr(speculator, "tokenizer"):
            # Same model on both sides (the offline demo): load the weights once and share them.
            base = TransformersBackend(speculator.model, speculator.tokenizer, name=args.base)
        else:
            base = TransformersBackend.from_pretrained(args.base)
    load_seconds = time.perf_counter() - start
    config = _protect_question(config, args, speculator, args.question)
    engine = SpecPrefillEngine(speculator, base, config)
    # The prompt ends with "Question: ..."; a model that starts inventing the next question is done answering.
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "stop": list(ASK_STOP),
    }

    if args.json or not args.stream:
        result = engine.generate(messages, **gen_kwargs)
        if args.json:
            _write_json(
                {
                    "question": args.question,
                    "answer": result.text,
                    "finish_reason": result.finish_reason,
                    "sources": [d.name for d in docs],
                    "load_seconds": load_seconds,
                    "stats": result.stats.to_dict(),
                    "prune": result.prune.to_dict() if result.prune is not None else None,
                }
            )
            return EXIT_OK
        print(result.text.strip())
    else:
        result = _stream_answer(engine, messages, gen_kwargs)
    lines = [f"documents: {len(docs)} ({', '.join(d.name for d in docs)})"]
    lines += _engine_stats_lines(result.stats.to_dict(), finish_reason=result.finish_reason)
    lines.append(f"model loading seconds: {load_seconds:.2f}")
    _print_block(lines, sys.stderr)
    return EXIT_OK


def _stream_answer(engine: SpecPrefillEngine, messages: list[Message], gen_kwargs: dict[str, Any]) -> EngineResult:
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


def _bench_names() -> list[str]:
    """Benchmark modules in :mod:`specprefill.bench` that have a ``main(argv)``, found without importing."""
    spec = importlib.util.find_spec("specprefill.bench")
    if spec is None or not spec.submodule_search_locations:
        return []
    names = []
    for folder in spec.submodule_search_locations:
        for path in Path(folder).glob("*.py"):
            if path.stem.startswith("_"):
                continue
            with contextlib.suppress(OSError):
                if "\ndef main(" in path.read_text(encoding="utf-8"):
                    names.append(path.stem)
    return sorted(set(names))


def _cmd_bench(args: argparse.Namespace) -> int:
    names = _bench_names()
    if args.name not in names:
        raise ConfigurationError(f"unknown benchmark {args.name!r}; choose one of: {', '.join(names) or 'none'}")
    module = importlib.import_module(f"specprefill.bench.{args.name}")
    run = getattr(module, "main", None)
    if not callable(run):
        raise ConfigurationError(f"specprefill.bench.{args.name} has no main(argv) to run")
    verbose = bool(getattr(args, "verbose", False))
    _quiet_transformers(verbose)
    try:
        code = run(list(args.bench_args))
    except SystemExit as exc:  # the benchmark's own argparse (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return int(code or 0)


def _cmd_info(args: argparse.Namespace) -> int:
    from specprefill.models import EMBEDDED_MODELS, cache_dir

    extras: dict[str, dict[str, str | None]] = {}
    for extra, modules in _EXTRAS:
        extras[extra] = {m: _installed_version(m) for m in modules}
    models: dict[str, dict[str, Any]] = {}
    for name, entry in EMBEDDED_MODELS.items():
        spec = importlib.util.find_spec(entry.module)
        path = Path(spec.origin).parent / entry.filename if spec is not None and spec.origin else None
        cached = sorted(str(p) for p in cache_dir().glob(f"{name}-*") if (p / "config.json").is_file())
        models[name] = {
            "description": entry.description,
            "installed": bool(path and path.is_file()),
            "path": str(path) if path and path.is_file() else None,
            "dense_copy": cached[0] if cached else None,
            "install": entry.pip_install,
        }
    payload: dict[str, Any] = {
        "version": _version(),
        "python": sys.version.split()[0],
        "extras": extras,
        "embedded_models": models,
        "cache_dir": str(cache_dir()),
    }
    if args.json:
        _write_json(payload)
        return EXIT_OK
    lines = [f"specprefill {payload['version']} (python {payload['python']})", "", "extras:"]
    for extra, mods in extras.items():
        found = [v for v in mods.values() if v]
        state = "installed" if len(found) == len(mods) else ("partly installed" if found else "missing")
        detail = ", ".join(f"{m} {v}" if v else f"{m} -" for m, v in mods.items())
        lines.append(f"  {extra:<12} {state:<17} {detail}")
        if state != "installed":
            lines.append(f'  {"":<12} install: pip install "specprefill[{extra}]"')
    lines += ["", "embedded models:"]
    for name, m in models.items():
        lines.append(f"  {name:<12} {'installed' if m['installed'] else 'not installed'}: {m['description']}")
        if m["installed"]:
            lines.append(f"  {'':<12} weights: {m['path']}")
            lines.append(f"  {'':<12} dense copy: {m['dense_copy'] or '(made on first use, ~20 s)'}")
        else:
            lines.append(f"  {'':<12} install: {m['install']}")
    lines += ["", f"cache dir: {payload['cache_dir']}  (set SPECPREFILL_CACHE_DIR to move it)"]
    print("\n".join(lines))
    return EXIT_OK


# --- output helpers ------------------------------------------------------------------------------------
def _version() -> str:
    from specprefill import __version__

    return __version__


def _installed_version(module: str) -> str | None:
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    dist = _DISTRIBUTION.get(module, module.split(".")[0])
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def _write_json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, ensure_ascii=False, default=_json_default)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _print_block(lines: Sequence[str], stream: IO[str]) -> None:
    stream.write("\n".join(["---", *lines]) + "\n")
    stream.flush()


def _prune_stats_lines(result: PruneResult) -> list[str]:
    s = result.stats
    lines = [
        f"tokens in: {s.tokens_in}",
        f"tokens kept: {s.tokens_kept}  (protected: {s.protected_tokens})",
        f"keep ratio: {s.keep_ratio:.3f}  (keep_rate {s.keep_rate:g}; chunks {s.chunks_kept}/{s.chunks_total})",
        f"speculator seconds: {s.speculator_seconds:.2f}  ({s.speculator or 'speculator'}, "
        f"{s.lookahead_queries} quer{'y' if s.lookahead_queries == 1 else 'ies'}, "
        f"{s.windows} window{'s' if s.windows != 1 else ''})",
    ]
    if not s.pruned and not s.fallback:
        lines.append("not pruned: the prompt is shorter than --min-prompt-tokens or everything was kept")
    if s.fallback:
        lines.append(f"fallback: the speculator failed, full prompt kept ({s.fallback_reason})")
    return lines


def _engine_stats_lines(stats: dict[str, Any], *, finish_reason: str | None) -> list[str]:
    def num(key: str, fmt: str = "{:.2f}") -> str:
        value = stats.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) else "?"

    lines = [
        f"tokens in: {num('tokens_in', '{}')}",
        f"tokens kept: {num('tokens_kept', '{}')}",
        f"keep ratio: {num('keep_ratio', '{:.3f}')}",
        f"speculator seconds: {num('speculator_seconds')}",
        f"base prefill seconds: {num('base_prefill_seconds')}",
    ]
    if "ttft_seconds" in stats:
        lines.append(f"time to first token seconds: {num('ttft_seconds')}")
    lines.append(f"total seconds: {num('total_seconds')}")
    extra = []
    if stats.get("positions"):
        extra.append(f"positions: {stats['positions']}")
    if finish_reason:
        extra.append(f"finish reason: {finish_reason}")
    if stats.get("fallback"):
        extra.append("fallback: full prompt used")
    if extra:
        lines.append("; ".join(extra))
    return lines


class _StepBar:
    """A tiny step progress bar (tqdm on stderr, hidden when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        disable = None if enabled is None else not enabled
        self._bar = tqdm(
            total=total,
            desc="loading",
            unit="model",
            disable=disable,
            file=sys.stderr,
            leave=False,
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]",
        )
        self._started = False

    def __call__(self, description: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(description)

    def close(self) -> None:
        if self._started:
            self._bar.update(1)
        self._bar.close()


@contextlib.contextmanager
def _steps(names: Sequence[str], *, enabled: bool | None) -> Iterator[_StepBar]:
    bar = _StepBar(len(names), enabled)
    try:
        yield bar
    finally:
        bar.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
