"""Smoke test of llama-index-llms-specprefill against the installed distribution: no model, no network.

Run ``pytest`` from this distribution's folder. The full tests are in the specprefill repository
(``tests/unit/llama_index``, ``tests/integration/llama_index``).
"""

from __future__ import annotations

from llama_index.core.llms.llm import LLM

import llama_index.llms.specprefill as package
from llama_index.llms.specprefill import STATS_KEY, SpecPrefillLLM


def test_public_api() -> None:
    assert sorted(package.__all__) == ["STATS_KEY", "SpecPrefillLLM"]
    assert STATS_KEY == "specprefill"
    assert issubclass(SpecPrefillLLM, LLM)


def test_server_mode_construction_loads_nothing() -> None:
    llm = SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", model="served-model", keep_rate=0.2)
    assert llm.server_mode
    assert llm.metadata.model_name == "served-model"
    assert llm.metadata.is_chat_model


def test_speculator_here_construction_loads_nothing() -> None:
    llm = SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", model="served-model", speculator="smollm2-135m")
    assert not llm.server_mode
