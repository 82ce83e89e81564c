"""Reading text documents and laying them out as question prompts (used by ``specprefill ask`` and ``prune``).

Pure Python, no model: bytes are decoded as UTF-8 with invalid sequences replaced, binary files are
recognised by a NUL byte near the start, and reads can be capped so an endless input (``/dev/zero``, a
pipe that never closes) stops with a clear error instead of exhausting memory.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from specprefill.errors import EmptyPromptError, PromptError, PromptTooLongError

if TYPE_CHECKING:
    from specprefill.result import Message

__all__ = [
    "ASK_STOP",
    "ASK_SYSTEM_PROMPT",
    "BINARY_SNIFF_BYTES",
    "Document",
    "ask_messages",
    "decode_bytes",
    "is_binary",
    "load_documents",
    "question_messages",
    "question_tail",
    "read_capped",
    "read_text_input",
]

logger = logging.getLogger("specprefill")

ASK_SYSTEM_PROMPT = (
    "You answer questions using only the documents the user gives you. "
    "Answer briefly and name the source document. If the documents do not contain the answer, say so."
)
"""System message of ``specprefill ask`` (protected from pruning like every system prompt)."""

ASK_STOP = ("\nQuestion:",)
"""Stop strings of ``specprefill ask``: the answer ends where the model starts a new question."""

BINARY_SNIFF_BYTES = 8192
"""A NUL byte among the first this many bytes marks a file as binary."""

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Document:
    """One text file read by ``specprefill ask``."""

    name: str
    """Path relative to the folder, with ``/`` separators."""
    text: str
    """Contents decoded as UTF-8 (invalid bytes replaced)."""


def decode_bytes(data: bytes) -> str:
    """Decode bytes as UTF-8, replacing invalid sequences (never raises); a leading BOM is dropped."""
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def is_binary(data: bytes) -> bool:
    """Whether bytes look binary: a NUL byte within the first :data:`BINARY_SNIFF_BYTES`."""
    return b"\x00" in data[:BINARY_SNIFF_BYTES]


def read_capped(stream: IO[bytes], max_bytes: int | None, *, source: str) -> bytes:
    """Read a byte stream to its end, refusing binary data and (optionally) more than ``max_bytes``.

    Args:
        stream: An open binary stream (a file or stdin's buffer).
        max_bytes: Stop with an error once more than this many bytes arrive (None: no cap).
        source: How to name the input in error messages.

    Returns:
        All bytes read.

    Raises:
        PromptError: The data is binary (a NUL byte near the start).
        PromptTooLongError: More than ``max_bytes`` bytes.

    """
    chunks: list[bytes] = []
    total = 0
    while block := stream.read(_BLOCK if max_bytes is None else min(_BLOCK, max_bytes + 1 - total)):
        if not chunks and is_binary(block):
            raise PromptError(f"{source} is a binary file (it contains NUL bytes); give a text file")
        chunks.append(block)
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise PromptTooLongError(
                f"{source} is larger than {max_bytes / 2**20:.1f} MiB (stopped reading there); "
                "give a smaller text or pass --force to read all of it"
            )
    return b"".join(chunks)


def read_text_input(file: str, *, max_bytes: int | None = None) -> tuple[str, str]:
    """Read a text file, or stdin for ``"-"``, and decode it; returns ``(text, display name)``.

    Raises:
        PromptError: The file is missing, a folder, unreadable or binary.
        PromptTooLongError: More than ``max_bytes`` bytes (see :func:`read_capped`).

    """
    if file == "-":
        return decode_bytes(read_capped(sys.stdin.buffer, max_bytes, source="<stdin>")), "<stdin>"
    path = Path(file).expanduser()
    try:
        with path.open("rb") as stream:
            data = read_capped(stream, max_bytes, source=repr(file))
    except FileNotFoundError as exc:
        raise PromptError(f"file {file!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise PromptError(f"{file!r} is a folder; give a text file (or use 'ask FOLDER QUESTION')") from exc
    except OSError as exc:
        raise PromptError(f"cannot read {file!r}: {exc.strerror or exc}") from exc
    return decode_bytes(data), str(path)


def question_tail(question: str) -> str:
    """The end of the user message that carries the question: its own final paragraph.

    :func:`~specprefill.prompt.protect.question_tokens` protects it for every caller (the CLI,
    ``Speculator.prune``, the integrations and the server alike).
    """
    return f"\n\nQuestion: {question.strip()}"


def question_messages(document: str, question: str) -> list[Message]:
    """Chat messages for pruning a document against a question.

    The question comes last in the user message, as its final paragraph, where it is protected
    (:func:`~specprefill.prompt.protect.question_tokens`).
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


def load_documents(
    folder: str | Path, pattern: str = "*", *, progress: bool | None = None, max_bytes: int | None = None
) -> list[Document]:
    """Read every text file under ``folder`` whose name matches ``pattern`` (recursively, sorted by path).

    Hidden files and folders are skipped, and so are binary files (a NUL byte in the first 8 KiB, logged
    as a warning) and files that are empty or only white space. Bytes are decoded as UTF-8 with invalid
    sequences replaced.

    Args:
        folder: Folder to read.
        pattern: Glob for file names, e.g. ``"*.txt"`` (``"*"``: every file).
        progress: Show a progress bar on stderr (None: only when stderr is a terminal).
        max_bytes: Stop with an error once the files read add up to more than this (None: no cap).

    Returns:
        The documents, sorted by relative path.

    Raises:
        PromptError: The folder does not exist or is not a folder, or a file cannot be read.
        PromptTooLongError: The files add up to more than ``max_bytes``.
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
    budget = max_bytes
    for path in _progress(paths, desc="reading files", unit="file", enabled=progress):
        try:
            with path.open("rb") as stream:
                data = read_capped(stream, budget, source=str(path))
        except PromptTooLongError as exc:
            raise PromptTooLongError(
                f"the files under {str(folder)!r} add up to more than {max_bytes or 0:,} bytes; "
                "narrow them with --glob or pass --force to read all of them"
            ) from exc
        except PromptError:
            logger.warning("skipping binary file %s", path)
            continue
        except OSError as exc:
            raise PromptError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if budget is not None:
            budget -= len(data)
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
