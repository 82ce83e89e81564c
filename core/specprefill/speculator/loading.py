"""Finding and loading models: the packaged embedded default, local directories, GGUF files, hub ids."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specprefill._deps import require
from specprefill.errors import ModelLoadError
from specprefill.speculator.embedded import (
    DEFAULT_SPECULATOR,
    EMBEDDED_MODELS,
    cache_dir,
    canonical_name,
    embedded_gguf_path,
)
from specprefill.speculator.precision import choose_dtype, device_facts

if TYPE_CHECKING:
    import torch

    from specprefill.speculator.hf import HFSpeculator

__all__ = [
    "DENSE_FORMAT",
    "cached_dense_dir",
    "default_dtype",
    "dense_copy_dir",
    "load_causal_lm",
    "load_speculator",
    "resolve_model_dir",
]

logger = logging.getLogger("specprefill")


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> str:
    """Turn a speculator/base name into something ``from_pretrained`` loads offline where possible.

    Embedded names (``"smollm2-135m"``) and ``.gguf`` files become a cached de-quantised directory;
    directories are used as they are; anything else is passed on as a hub id.
    """
    text = str(name_or_path)
    if canonical_name(text) in EMBEDDED_MODELS:
        return str(_dense_copy(embedded_gguf_path(text), label=canonical_name(text)))
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(_dense_copy(path, label=path.stem.lower()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json; point at a transformers model folder")
        return str(path)
    if path.suffix == ".gguf" or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise ModelLoadError(
            f"model file or folder {text!r} does not exist; give an embedded name "
            f"({', '.join(EMBEDDED_MODELS)}), a transformers folder, a .gguf file or a hub id"
        )
    return text


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: Any = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """Load a transformers causal LM and its fast tokenizer.

    Args:
        name_or_path: Embedded name, model directory, ``.gguf`` file, or hub id.
        device: torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: torch dtype or its name; ``None`` picks :func:`default_dtype` for ``device``.
        attn_implementation: transformers attention implementation.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode on ``device``.

    """
    torch = require("torch")
    transformers = require("transformers")
    source = resolve_model_dir(name_or_path)
    torch_dtype = _torch_dtype(torch, dtype, device)
    offline = Path(source).is_dir()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load model {str(name_or_path)!r}: {exc}. Use an embedded name "
            f"({', '.join(EMBEDDED_MODELS)}), a local transformers folder, or a .gguf file"
        ) from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def load_speculator(
    name_or_path: str | os.PathLike[str] = DEFAULT_SPECULATOR, *, device: str = "cpu", dtype: Any = None
) -> HFSpeculator:
    """Load a speculator model.

    Args:
        name_or_path: ``"smollm2-135m"`` (the packaged default, offline), a transformers model folder,
            a ``.gguf`` file, or a hub id.
        device: torch device.
        dtype: torch dtype or name (``"float32"``, ``"bfloat16"``); ``None`` picks :func:`default_dtype`
            (bfloat16 where the device computes it natively, float32 otherwise).

    Returns:
        A :class:`specprefill.speculator.hf.HFSpeculator`.

    """
    from specprefill.speculator.hf import HFSpeculator

    model, tokenizer = load_causal_lm(name_or_path, device=device, dtype=dtype)
    label = (
        canonical_name(str(name_or_path)) if canonical_name(str(name_or_path)) in EMBEDDED_MODELS else str(name_or_path)
    )
    return HFSpeculator(model, tokenizer, name=label)


def default_dtype(device: str = "cpu") -> torch.dtype:
    """The fastest exact-enough weight dtype for ``device`` (what ``dtype=None`` means everywhere).

    bfloat16 on CUDA devices with native bf16 (compute capability 8.0+) and on CPUs with AMX
    (or aarch64 bf16); float32 otherwise, because emulated bf16 matmuls run about 4x slower than float32.

    Args:
        device: torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        ``torch.bfloat16`` or ``torch.float32``.

    """
    torch = require("torch")
    facts = device_facts(torch, device)
    name = choose_dtype(facts.pop("device_type"), **facts)
    return getattr(torch, name)  # type: ignore[no-any-return]


def _torch_dtype(torch: Any, dtype: Any, device: str) -> Any:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
        return value
    return dtype


DENSE_FORMAT = "dense-v2"
"""Cache sub-folder of the current de-quantised layout (bump when the stored values change)."""


def dense_copy_dir(gguf: Path, *, label: str) -> Path:
    """Where the de-quantised copy of ``gguf`` lives (or will live) under :func:`cache_dir`.

    Layout of the cache folder (``$SPECPREFILL_CACHE_DIR``, default ``~/.cache/specprefill``)::

        gguf/<file>.gguf                GGUF files assembled from multi-package models
        dense-v2/<label>-<key>/         transformers folder: config.json, tokenizer files and
                                        model.safetensors holding the exact de-quantised values
                                        (float16 where that is lossless, float32 otherwise)
        <label>-<key>/                  older layout (bfloat16-rounded weights); no longer read,
                                        safe to delete

    ``<key>`` hashes the GGUF's name and size, so a changed file gets a new folder.
    """
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:10]
    return cache_dir() / DENSE_FORMAT / f"{label}-{digest}"


def cached_dense_dir(name: str) -> Path | None:
    """The existing de-quantised folder of an embedded model, or None; never converts or assembles anything.

    Args:
        name: An embedded model name or alias, e.g. ``"smollm2-135m"``.

    Raises:
        KeyError: ``name`` is not an embedded model.

    """
    entry = EMBEDDED_MODELS[canonical_name(name)]
    try:
        gguf = cache_dir() / "gguf" / entry.filename if entry.parts else embedded_gguf_path(entry.name)
    except ModelLoadError:
        return None
    if not gguf.is_file():
        return None
    target = dense_copy_dir(gguf, label=entry.name)
    return target if (target / "config.json").is_file() and (target / "model.safetensors").is_file() else None


def _dense_copy(gguf: Path, *, label: str) -> Path:
    """De-quantise a GGUF file once into a transformers folder under :func:`cache_dir` and reuse it."""
    target = dense_copy_dir(gguf, label=label)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    torch = require("torch")
    transformers = require("transformers")
    require("gguf")
    require("accelerate")
    logger.info("de-quantising %s into %s (first use only)", gguf, target)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with torch.no_grad():
        for param in model.parameters():
            param.data = exact_storage(torch, param.data)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def exact_storage(torch: Any, tensor: Any) -> Any:
    """``tensor`` as float16 when that holds every value exactly, else unchanged (float32 de-quantised values)."""
    if tensor.dtype != torch.float32:
        return tensor
    half = tensor.to(torch.float16)
    return half if torch.equal(half.to(torch.float32), tensor) else tensor
