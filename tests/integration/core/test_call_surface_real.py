"""load_engine over the real packaged model: one set of weights for speculator and base."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig, load_engine


@needs_model
@pytest.mark.integration
def test_load_engine_shares_the_weights_of_one_model(speculator: Any) -> None:
    from specprefill.backends.transformers import TransformersBackend

    engine = load_engine(speculator, config=SpecPrefillConfig(keep_rate=0.5))
    assert isinstance(engine.base, TransformersBackend)
    assert engine.base.model is speculator.model and engine.base.tokenizer is speculator.tokenizer
    assert engine.speculator is speculator and engine.config.keep_rate == 0.5
    assert engine.base.model_name == speculator.name == "smollm2-135m"
    aliased = load_engine(speculator, base="SmolLM2")
    assert aliased.base.model is speculator.model and aliased.base.model_name == "SmolLM2"
    assert engine.base.same_tokenizer(speculator)
