"""Base model backends: the contract (:class:`BaseBackend`) and its implementations.

Importing this package stays light: the backends import torch, transformers or the ``openai`` client only
when one is built. ``VLLMBackend`` lives in :mod:`specprefill.backends.vllm`.
"""

from __future__ import annotations

from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, PositionMode, StreamChunk
from specprefill.backends.openai.backend import OpenAIBackend
from specprefill.backends.transformers import TransformersBackend

__all__ = [
    "BaseBackend",
    "BaseOutput",
    "BaseRequest",
    "GenerationParams",
    "OpenAIBackend",
    "PositionMode",
    "StreamChunk",
    "TransformersBackend",
]
