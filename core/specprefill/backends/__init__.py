"""Base model backends: the contract (:class:`BaseBackend`) and its implementations.

``TransformersBackend`` (torch/transformers) and ``OpenAIBackend`` (the ``openai`` client) are imported on
first access, so importing this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specprefill.backends.base import (
    BaseBackend,
    BaseOutput,
    BaseRequest,
    GenerationParams,
    PositionMode,
    StreamChunk,
)

if TYPE_CHECKING:
    from specprefill.backends.openai import OpenAIBackend
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

_LAZY = {
    "TransformersBackend": "specprefill.backends.transformers",
    "OpenAIBackend": "specprefill.backends.openai",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specprefill.backends' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
