"""One call from a model name to a ready engine: :func:`load_engine`.

When the speculator and the base are the same model (the small-model setup of the examples, the CLI and
the LangChain default), the weights are loaded once and shared. Names are compared alias-aware: an embedded
name, its aliases and its de-quantised cache folder all mean the same model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from specprefill.backends.base import BaseBackend
from specprefill.config import SpecPrefillConfig
from specprefill.engine.core import SpecPrefillEngine
from specprefill.speculator.base import Speculator
from specprefill.speculator.embedded import EMBEDDED_MODELS, cache_dir, canonical_name

__all__ = ["load_engine", "same_model"]

ModelRef = str | os.PathLike[str]


def _model_key(name: ModelRef) -> str:
    text = str(name)
    key = canonical_name(text)
    if key in EMBEDDED_MODELS:
        return f"embedded:{key}"
    path = Path(text).expanduser()
    if path.exists():
        return f"path:{path.resolve()}"
    return f"name:{text.strip()}"


def _is_cache_copy(embedded_key: str, path_key: str) -> bool:
    """Whether ``path_key`` is a folder in the specprefill cache made from the embedded model ``embedded_key``."""
    name = embedded_key.removeprefix("embedded:")
    path = Path(path_key.removeprefix("path:"))
    root = cache_dir().expanduser().resolve()
    if not path.is_relative_to(root):
        return False
    return any(part.lower().startswith(f"{name}-") or part.lower() == name for part in path.relative_to(root).parts)


def same_model(a: ModelRef, b: ModelRef) -> bool:
    """Whether two model references name the same weights.

    Embedded names match their aliases (``"smollm2"``, ``"default"``, ...) and their de-quantised cache
    folder; paths match after resolving; other names (hub ids) must be equal.

    Args:
        a: A model name or path.
        b: Another model name or path.

    Returns:
        True when loading both would load the same weights.

    """
    ka, kb = _model_key(a), _model_key(b)
    if ka == kb:
        return True
    for x, y in ((ka, kb), (kb, ka)):
        if x.startswith("embedded:") and y.startswith("path:") and _is_cache_copy(x, y):
            return True
    return False


def load_engine(
    model: ModelRef | Speculator = "smollm2-135m",
    *,
    base: ModelRef | BaseBackend | None = None,
    device: str = "cpu",
    dtype: Any = None,
    config: SpecPrefillConfig | None = None,
) -> SpecPrefillEngine:
    """Load a speculator and an in-process transformers base, sharing the weights when they are one model.

    Args:
        model: The speculator: a model name or path (``"smollm2-135m"`` is the packaged default), or an
            already loaded :class:`~specprefill.speculator.base.Speculator`.
        base: The base: a model name or path (None: the same model as the speculator, weights shared), or
            a ready :class:`~specprefill.backends.base.BaseBackend` (e.g. an ``OpenAIBackend``).
        device: torch device for the models loaded here.
        dtype: torch dtype or its name (None: the fastest exact-enough dtype for ``device``).
        config: Pruning settings of the engine.

    Returns:
        The :class:`~specprefill.engine.core.SpecPrefillEngine`.

    Raises:
        ModelLoadError: A model cannot be found or loaded.
        BackendUnavailableError: torch or transformers is not installed.

    Example:
        >>> engine = specprefill.load_engine("smollm2-135m")
        >>> engine.generate(long_prompt, max_new_tokens=32, keep_rate=0.3).text

    """
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.speculator.loading import load_speculator

    speculator = model if isinstance(model, Speculator) else load_speculator(model, device=device, dtype=dtype)
    if isinstance(base, BaseBackend):
        return SpecPrefillEngine(speculator, base, config)
    base_ref: ModelRef = base if base is not None else (speculator.name if isinstance(model, Speculator) else model)
    shared = getattr(speculator, "model", None)
    if shared is not None and same_model(speculator.name if isinstance(model, Speculator) else model, base_ref):
        label = speculator.name if base is None else str(base_ref)
        backend = TransformersBackend(shared, getattr(speculator, "tokenizer", None), name=label)
    else:
        backend = TransformersBackend.from_pretrained(base_ref, device=device, dtype=dtype)
    return SpecPrefillEngine(speculator, backend, config)
