"""specprefill: Speculative Prefill for long prompts.

A small speculator model scores which prompt tokens matter; the base model prefills only the most
important chunks, at their original positions. ``import specprefill`` is light: torch, transformers,
vLLM, LangChain and LlamaIndex are imported only when a feature needs them (the names below import
them inside their functions).
"""

from __future__ import annotations

from specprefill.backends.base import GenerationParams
from specprefill.backends.openai.backend import OpenAIBackend
from specprefill.backends.transformers import TransformersBackend
from specprefill.config import SpecPrefillConfig
from specprefill.engine.callargs import split_call_kwargs
from specprefill.engine.core import EngineResult, EngineStats, SpecPrefillEngine
from specprefill.engine.factory import load_engine
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
    UnknownArgumentError,
)
from specprefill.prompt.prepared import ScoredPrompt
from specprefill.result import PruneResult, PruneStats
from specprefill.scoring import avg_pool1d, chunk_scores, importance_from_attention, select_chunks
from specprefill.speculator.base import Speculator
from specprefill.speculator.loading import load_speculator

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
    "ScoredPrompt",
    "SpecPrefillConfig",
    "SpecPrefillEngine",
    "SpecPrefillError",
    "Speculator",
    "SpeculatorError",
    "TransformersBackend",
    "UnknownArgumentError",
    "__version__",
    "avg_pool1d",
    "chunk_scores",
    "importance_from_attention",
    "load_engine",
    "load_speculator",
    "select_chunks",
    "split_call_kwargs",
]
