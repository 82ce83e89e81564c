"""Typed errors. Every message says what went wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
    "EmptyPromptError",
    "ModelLoadError",
    "PromptError",
    "PromptTooLongError",
    "SpecPrefillError",
    "SpeculatorError",
    "UnknownArgumentError",
]


class SpecPrefillError(Exception):
    """Base class of every error raised by specprefill."""


class ConfigurationError(SpecPrefillError, ValueError):
    """A setting is out of range or settings contradict each other."""


class UnknownArgumentError(ConfigurationError, TypeError):
    """A call got a keyword argument it does not take (also a ``TypeError``, as Python raises for those)."""


class ModelLoadError(SpecPrefillError, RuntimeError):
    """A speculator or base model could not be found or loaded."""


class PromptError(SpecPrefillError, ValueError):
    """The prompt cannot be used as given."""


class EmptyPromptError(PromptError):
    """The prompt is empty or holds only white space."""


class PromptTooLongError(PromptError):
    """The prompt does not fit where it has to go (for example the base model's context)."""


class BackendUnavailableError(SpecPrefillError, ImportError):
    """An optional dependency (torch, transformers, openai, vllm, ...) is not installed."""


class BackendError(SpecPrefillError, RuntimeError):
    """The base model backend failed while generating."""


class SpeculatorError(SpecPrefillError, RuntimeError):
    """The speculator failed while scoring a prompt."""
