"""Haystack text for the RULER-style tasks: natural text that ships with the project or Python itself.

Sources (nothing is downloaded):

* ``documents`` - the paragraphs of ``examples/documents/*.txt`` in this repository (six short fictional
  documents: a kettle FAQ, recipes, a town history, board minutes, an expedition log, a handbook), found
  next to this package, never through the working directory;
* ``stdlib`` - prose paragraphs of the docstrings of a fixed list of Python standard-library modules and
  their public classes and functions (code examples, tables and lists are filtered out).

The corpus fingerprint is recorded in every report. Pure Python, no model.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from specprefill.errors import ConfigurationError

__all__ = [
    "DOCUMENTS_DIR",
    "SOURCES",
    "STDLIB_MODULES",
    "Corpus",
    "TokenCounter",
    "estimate_tokens",
    "load_corpus",
]

TokenCounter = Callable[[str], int]

SOURCES: tuple[str, ...] = ("documents", "stdlib")
"""Haystack source names."""

DOCUMENTS_DIR = Path(__file__).resolve().parent.parent / "examples" / "documents"
"""The repository's example documents (located from this file, so the working directory does not matter)."""

STDLIB_MODULES: tuple[str, ...] = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email", "enum", "fractions", "functools", "heapq", "inspect", "io", "itertools", "json", "logging", "math",
    "operator", "os", "pathlib", "pickle", "random", "re", "shutil", "statistics", "string", "subprocess",
    "tempfile", "textwrap", "threading", "time", "typing", "unittest", "urllib", "uuid", "warnings", "zipfile",
    "abc", "bisect", "calendar", "codecs", "copy", "fnmatch", "glob", "gzip", "hashlib", "hmac", "locale",
    "mimetypes", "numbers", "pprint", "queue", "sched", "secrets", "selectors", "shelve", "struct", "tarfile",
    "tokenize", "traceback", "types", "weakref",
)  # fmt: skip
"""Standard-library modules whose docstring prose feeds the ``stdlib`` haystack source."""


def estimate_tokens(text: str) -> int:
    """A model-free token estimate (about 4.2 characters per token for English BPE vocabularies)."""
    return max(1, round(len(text) / 4.2)) if text else 0


@dataclass(frozen=True)
class Corpus:
    """Haystack paragraphs with their token counts and where they came from."""

    paragraphs: tuple[str, ...]
    tokens: tuple[int, ...]
    sources: tuple[str, ...]
    """Source names in use, e.g. ``("documents", "stdlib")``."""
    description: str
    """Human-readable description of the sources (for reports)."""

    @property
    def total_tokens(self) -> int:
        """Tokens in the whole corpus."""
        return sum(self.tokens)

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 of the paragraphs (identifies the exact haystack text in reports)."""
        digest = hashlib.sha256("\n\n".join(self.paragraphs).encode()).hexdigest()
        return digest[:16]


def _clean(paragraph: str) -> str:
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip())


def _document_paragraphs(folder: Path) -> list[str]:
    out: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            text = _clean(block)
            if len(text) >= 60 and text.count(" ") >= 8:
                out.append(text)
    return out


def _is_prose(paragraph: str) -> bool:
    lines = paragraph.splitlines()
    if len(paragraph) < 120 or any(
        line.startswith(("    ", "\t")) or line.lstrip().startswith((">>>", "$", "-", "*", "..", ":", "|"))
        for line in lines
    ):
        return False
    text = _clean(paragraph)
    plain = sum(c.isalpha() or c in " ,.;'()-" for c in text) / len(text)
    return plain > 0.93 and text.endswith(".") and "=" not in text and "()" not in text


def _stdlib_paragraphs(modules: Sequence[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a stripped-down Python
            continue
        objects: list[object] = [module]
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            with warnings.catch_warnings():  # e.g. typing.io is deprecated
                warnings.simplefilter("ignore")
                obj = getattr(module, attr, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                objects.append(obj)
        for obj in objects:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                doc = inspect.getdoc(obj) or ""
            for block in re.split(r"\n\s*\n", doc):
                if _is_prose(block):
                    text = _clean(block)
                    if text not in seen:
                        seen.add(text)
                        out.append(text)
    return out


def load_corpus(
    sources: Iterable[str] = SOURCES,
    *,
    count_tokens: TokenCounter = estimate_tokens,
    documents_dir: Path | None = None,
) -> Corpus:
    """Collect haystack paragraphs.

    Args:
        sources: ``"documents"`` (the repository's ``examples/documents/*.txt``) and/or ``"stdlib"``
            (prose of Python standard-library docstrings).
        count_tokens: Token counter used for lengths (the speculator's tokenizer in benchmarks).
        documents_dir: Folder of ``.txt`` documents (default :data:`DOCUMENTS_DIR`).

    Returns:
        The corpus.

    Raises:
        ConfigurationError: An unknown source, a missing documents folder, or no paragraph at all.

    """
    names = tuple(dict.fromkeys(sources))
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ConfigurationError(f"unknown haystack source(s) {unknown}; use 'documents' and/or 'stdlib'")
    paragraphs: list[str] = []
    described: list[str] = []
    used: list[str] = []
    if "documents" in names:
        folder = documents_dir or DOCUMENTS_DIR
        found = _document_paragraphs(folder) if folder.is_dir() else []
        if not found:
            raise ConfigurationError(
                f"the 'documents' haystack source needs .txt files in {folder}; restore the checkout's "
                "examples/documents or use '--sources stdlib'"
            )
        paragraphs.extend(found)
        used.append("documents")
        described.append(f"{len(found)} paragraphs of {folder.name}/*.txt (this repository's examples)")
    if "stdlib" in names:
        found = _stdlib_paragraphs(STDLIB_MODULES)
        paragraphs.extend(found)
        used.append("stdlib")
        described.append(f"{len(found)} prose paragraphs of docstrings of {len(STDLIB_MODULES)} Python stdlib modules")
    if not paragraphs:
        raise ConfigurationError("no haystack source given; use 'documents' and/or 'stdlib'")
    return Corpus(
        paragraphs=tuple(paragraphs),
        tokens=tuple(count_tokens(p) for p in paragraphs),
        sources=tuple(used),
        description="; ".join(described),
    )
