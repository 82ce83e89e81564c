"""Smoke test of llama-index-embeddings-specprefill against the installed distribution: no model, no network.

Run ``pytest`` from this distribution's folder. The full test is in the specprefill repository
(``tests/integration/llama_index/test_li_embeddings.py``).
"""

from __future__ import annotations

from llama_index.core.base.embeddings.base import BaseEmbedding

import llama_index.embeddings.specprefill as package
from llama_index.embeddings.specprefill import PackagedEmbedding


def test_public_api() -> None:
    assert package.__all__ == ["PackagedEmbedding"]
    assert issubclass(PackagedEmbedding, BaseEmbedding)


def test_construction_loads_nothing() -> None:
    embedding = PackagedEmbedding(max_length=128)
    assert embedding.max_length == 128
    assert embedding.class_name() == "SpecPrefillPackagedEmbedding"
