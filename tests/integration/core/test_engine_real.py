"""SpecPrefillEngine with the real packaged model end to end (the unit tests are in tests/unit/core/test_engine.py)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig
from specprefill.engine import SpecPrefillEngine

# --- the real model end to end ------------------------------------------------------------------------------
LONG = [
    "The harbour office opens at seven and closes at five, except on public holidays.",
    "Ferries to the northern islands leave every ninety minutes; the last one departs at 21:40.",
    "In 1894 the lighthouse keeper, Ada Morrow, recorded the longest storm in the town's history.",
    "Fishing licences cost forty-two crowns a season and must be shown to the wardens.",
    "The museum's east wing holds ship models, the oldest carved around 1720.",
]


@pytest.fixture(scope="module")
def real_engine(speculator: Any) -> SpecPrefillEngine:
    from specprefill.backends.transformers import TransformersBackend

    base = TransformersBackend(speculator.model, speculator.tokenizer, name="smollm2-135m")
    return SpecPrefillEngine(speculator, base, SpecPrefillConfig(keep_rate=0.3, min_prompt_tokens=0))


@needs_model
@pytest.mark.integration
def test_real_engine_generate_and_stream(real_engine: SpecPrefillEngine):
    notes = "\n".join(f"{i}. {LONG[i % len(LONG)]}" for i in range(18))
    messages = [{"role": "user", "content": notes + "\nWho recorded the longest storm?"}]
    result = real_engine.generate(messages, max_new_tokens=8)
    s = result.stats
    assert s.pruned and s.positions == "original" and not s.fallback
    assert s.tokens_in > 300 and s.base_prompt_tokens == s.tokens_kept < s.tokens_in
    assert s.completion_tokens == result.output.completion_tokens > 0 and result.text
    assert s.speculator_seconds > 0 and s.base_prefill_seconds > 0
    assert s.speculator_seconds + s.base_prefill_seconds <= s.ttft_seconds <= s.total_seconds

    chunks = list(real_engine.stream(messages, max_new_tokens=8))
    assert chunks[-1].result is not None
    assert "".join(c.text for c in chunks) == chunks[-1].result.text == result.text


@needs_model
@pytest.mark.integration
async def test_real_engine_agenerate(real_engine: SpecPrefillEngine):
    text = "\n".join(LONG * 3) + "\nWhen does the last ferry leave?"
    sync = real_engine.generate(text, max_new_tokens=6)
    result = await real_engine.agenerate(text, max_new_tokens=6)
    assert result.text == sync.text and result.stats.pruned
