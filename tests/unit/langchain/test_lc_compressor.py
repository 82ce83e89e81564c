"""SpecPrefillDocumentCompressor, hermetic: a letter-level fake (the real speculator: test_lc_compressor_real.py)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import BaseDocumentCompressor, Document

from fakes import letter_speculator
from langchain_specprefill import SpecPrefillDocumentCompressor
from specprefill import SpecPrefillConfig

CONFIG = SpecPrefillConfig(chunk_size=8, lookahead=1, min_prompt_tokens=0)


def docs() -> list[Document]:
    return [
        Document(page_content="alpha " * 20, metadata={"source": "a", "score": 0.9}, id="a"),
        Document(page_content="", metadata={"source": "empty"}, id="e"),
        Document(page_content="bravo " * 20, metadata={"source": "b"}, id="b"),
        Document(page_content="charlie " * 20, metadata={"source": "c"}),
    ]


def compressor(**kwargs: Any) -> SpecPrefillDocumentCompressor:
    return SpecPrefillDocumentCompressor(speculator=letter_speculator(), config=CONFIG, **kwargs)


def test_is_a_document_compressor_and_loads_nothing_at_construction() -> None:
    c = SpecPrefillDocumentCompressor(keep_rate=0.2)
    assert isinstance(c, BaseDocumentCompressor) and c.speculator == "smollm2-135m" and c._loaded is None


def test_one_output_per_input_in_order_with_metadata_and_ids() -> None:
    inputs = docs()
    out = compressor(keep_rate=0.3).compress_documents(inputs, "which one?")
    assert [d.id for d in out] == [d.id for d in inputs]
    assert [d.metadata["source"] for d in out] == ["a", "empty", "b", "c"]
    assert out[0].metadata["score"] == 0.9
    stats = [d.metadata["specprefill"] for d in out]
    assert stats[1] == stats[1] | {"tokens_in": 0, "tokens_kept": 0, "keep_ratio": 1.0, "pruned": False}
    assert out[1].page_content == ""
    # the fake rates later text higher: the last document survives, the first is cut hardest
    assert stats[0]["tokens_kept"] <= stats[2]["tokens_kept"] < stats[3]["tokens_kept"]
    assert stats[0]["pruned"] and stats[3]["pruned"]
    if stats[0]["tokens_kept"] == 0:  # a document with nothing kept stays in place, empty
        assert out[0].page_content == ""
    for d, s in zip(out, stats, strict=True):
        assert s["keep_ratio"] == pytest.approx(s["tokens_kept"] / s["tokens_in"] if s["tokens_in"] else 1.0)
        assert s["speculator"] == "letter-spec" and s["keep_rate"] == 0.3 and not s["fallback"]
        assert s["prompt_tokens_kept"] <= s["prompt_tokens_in"]
        original = next(i for i in inputs if i.metadata["source"] == d.metadata["source"])
        assert len(d.page_content) <= len(original.page_content) + 2
    assert inputs[0].page_content == "alpha " * 20  # inputs untouched


def test_kept_text_comes_from_the_document() -> None:
    out = compressor(keep_rate=0.5).compress_documents(docs(), "q")
    for piece in out[3].page_content.split(" … "):
        assert piece.strip("…").strip() in "charlie " * 20


def test_minimum_per_document() -> None:
    out = compressor(keep_rate=0.1, min_tokens_per_document=24).compress_documents(docs(), "q")
    kept = [d.metadata["specprefill"]["tokens_kept"] for d in out]
    assert all(k >= 24 for i, k in enumerate(kept) if i != 1)
    without = compressor(keep_rate=0.1).compress_documents(docs(), "q")
    assert without[0].metadata["specprefill"]["tokens_kept"] < 24


def test_short_prompt_is_left_whole() -> None:
    c = SpecPrefillDocumentCompressor(speculator=letter_speculator(), config=CONFIG, min_prompt_tokens=10_000)
    inputs = docs()
    out = c.compress_documents(inputs, "q")
    assert [d.page_content for d in out] == [d.page_content for d in inputs]
    assert all(not d.metadata["specprefill"]["pruned"] for d in out)


def test_empty_input_and_custom_metadata_key() -> None:
    assert compressor().compress_documents([], "q") == []
    out = compressor(metadata_key="sp").compress_documents(docs()[:1], "q")
    assert "sp" in out[0].metadata and "specprefill" not in out[0].metadata


async def test_async_matches_sync() -> None:
    c = compressor(keep_rate=0.3, min_tokens_per_document=8)
    sync = c.compress_documents(docs(), "which?")
    assert await c.acompress_documents([], "q") == []
    got = await c.acompress_documents(docs(), "which?")
    assert [d.page_content for d in got] == [d.page_content for d in sync]
    strip = ("speculator_seconds",)
    assert [{k: v for k, v in d.metadata["specprefill"].items() if k not in strip} for d in got] == [
        {k: v for k, v in d.metadata["specprefill"].items() if k not in strip} for d in sync
    ]


def test_contextual_compression_retriever() -> None:
    retrievers = pytest.importorskip("langchain_classic.retrievers", reason="langchain-classic is not installed")
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_documents(docs(), DeterministicFakeEmbedding(size=8))
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=compressor(keep_rate=0.4), base_retriever=store.as_retriever(search_kwargs={"k": 4})
    )
    out = retriever.invoke("which?")
    assert len(out) == 4 and all("specprefill" in d.metadata for d in out)


def test_metadata_keys_become_protected_headers_never_output() -> None:
    c = compressor(keep_rate=0.3, metadata_keys=("source", "missing", "score"))
    first = docs()[0]
    assert c._passage(first).header == "source: a\nscore: 0.9"  # missing keys are skipped
    assert c._passage(docs()[2]).header == "source: b"
    assert compressor()._passage(first).header == ""  # none by default
    out = c.compress_documents(docs(), "which one?")
    assert [d.id for d in out] == [d.id for d in docs()]
    assert not any("source:" in d.page_content for d in out)
    plain = compressor(keep_rate=0.3).compress_documents(docs(), "which one?")
    # the headers are protected: they never use the documents' budget
    assert sum(d.metadata["specprefill"]["tokens_kept"] for d in out) == sum(
        d.metadata["specprefill"]["tokens_kept"] for d in plain
    )
