"""specprefill: Speculative Prefill for long prompts.

A small speculator model scores which prompt tokens matter; the base model prefills only the most
important chunks, at their original positions. ``import specprefill`` is light: torch, transformers,
vLLM, LangChain and LlamaIndex are imported only when a feature needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    EmptyPromptError,
    ModelLoadError,
    PromptError,
    PromptTooLongError,
    SpecPrefillError,
    SpeculatorError,
)
from specprefill.result import PruneResult, PruneStats
from specprefill.scoring import avg_pool1d, chunk_scores, importance_from_attention, select_chunks
from specprefill.speculator import Speculator

if TYPE_CHECKING:
    from specprefill.backends.base import GenerationParams
    from specprefill.backends.openai import OpenAIBackend
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.engine import EngineResult, EngineStats, SpecPrefillEngine
    from specprefill.models import load_speculator

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
    "EmptyPromptError",
    "EngineResult",
    "EngineStats",
    "GenerationParams",
    "ModelLoadError",
    "OpenAIBackend",
    "PromptError",
    "PromptTooLongError",
    "PruneResult",
    "PruneStats",
    "SpecPrefillConfig",
    "SpecPrefillEngine",
    "SpecPrefillError",
    "Speculator",
    "SpeculatorError",
    "TransformersBackend",
    "__version__",
    "avg_pool1d",
    "chunk_scores",
    "importance_from_attention",
    "load_speculator",
    "select_chunks",
]

_LAZY = {
    "load_speculator": "specprefill.models",
    "SpecPrefillEngine": "specprefill.engine",
    "EngineResult": "specprefill.engine",
    "EngineStats": "specprefill.engine",
    "TransformersBackend": "specprefill.backends.transformers",
    "OpenAIBackend": "specprefill.backends.openai",
    "GenerationParams": "specprefill.backends.base",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specprefill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
