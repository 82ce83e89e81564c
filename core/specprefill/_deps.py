"""Lazy imports of optional heavy dependencies, with install hints."""

from __future__ import annotations

import importlib
from types import ModuleType

from specprefill.errors import BackendUnavailableError

__all__ = ["require"]

_EXTRA_OF = {
    "torch": "hf",
    "transformers": "hf",
    "gguf": "hf",
    "accelerate": "hf",
    "openai": "openai",
    "tiktoken": "openai",
    "vllm": "vllm",
    "langchain_core": "langchain",
    "llama_index.core": "llama-index",
}


def require(module: str, *, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailableError` naming the extra to install.

    Args:
        module: Dotted module name, e.g. ``"torch"``.
        extra: The ``specprefill`` extra that provides it; guessed from the module name when omitted.

    Returns:
        The imported module.

    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = extra or _EXTRA_OF.get(module.split(".")[0], _EXTRA_OF.get(module, "all"))
        raise BackendUnavailableError(
            f'{module!r} is not installed but this feature needs it. Install it with: pip install "specprefill[{hint}]"'
        ) from exc
