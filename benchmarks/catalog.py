"""Every method of the quality benchmark by name: :data:`ALL_METHODS` and :func:`build_method`."""

from __future__ import annotations

from typing import Any

from benchmarks.llmlingua import LongLLMLinguaMethod
from benchmarks.methods import EmbeddingRetrieval, FullPrompt, HeadTail, Method, RandomChunks, SpecPrefillMethod
from benchmarks.variants import VARIANTS, variant_for
from specprefill.errors import ConfigurationError

__all__ = ["ALL_METHODS", "build_method"]

ALL_METHODS: tuple[str, ...] = (
    "full",
    "specprefill-lah8",
    "specprefill-lah1",
    "random",
    "head-tail",
    "rag",
    "longllmlingua",
)
"""Method names in report order (SpecPrefill variants beyond look-ahead 8 and 1: :mod:`benchmarks.variants`)."""


def build_method(name: str, **resources: Any) -> Method:
    """Construct a method by name from shared resources.

    Resources: ``speculator``, ``embed``, ``model_dir``, ``seed``, ``variants`` (custom SpecPrefill variants,
    ``{name: overrides}``) and ``cache`` (an :class:`ImportanceCache` shared by the SpecPrefill variants).

    Raises:
        ConfigurationError: An unknown name, or a SpecPrefill variant the installed library cannot build.

    """
    if name == "full":
        return FullPrompt()
    variant = variant_for(name, resources.get("variants"))
    if variant is not None:
        return SpecPrefillMethod(resources["speculator"], variant, resources.get("cache"))
    if name == "random":
        return RandomChunks(int(resources.get("seed", 0)))
    if name == "head-tail":
        return HeadTail()
    if name == "rag":
        return EmbeddingRetrieval(resources["embed"])
    if name == "longllmlingua":
        return LongLLMLinguaMethod(str(resources["model_dir"]), resources["speculator"].tokenizer)
    raise ConfigurationError(
        f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}, a variant ({', '.join(VARIANTS)}) "
        "or one defined with --variants NAME=JSON"
    )
