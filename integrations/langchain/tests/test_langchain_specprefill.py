"""Smoke test of langchain-specprefill against the installed distribution: no model, no network.

Run ``pytest`` from this distribution's folder. The full tests are in the specprefill repository
(``tests/unit/langchain``, ``tests/integration/langchain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel

import langchain_specprefill
from langchain_specprefill import ChatSpecPrefill, PackagedEmbeddings, SpecPrefillDocumentCompressor
from specprefill import SpecPrefillConfig
from specprefill.spans import Span
from specprefill.speculator.base import ImportanceResult, Speculator

FILLER = "The river was calm and the fields were green that year. "


class HotWordSpeculator(Speculator):
    """One token per character; characters of the word ``bridge`` score 1.0, all others 0.1."""

    name = "hot-word"

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        return self.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        text = self.decode(input_ids)
        importance = np.full(len(text), 0.1, dtype=np.float32)
        start = text.find("bridge")
        while start >= 0:
            importance[start : start + len("bridge")] = 1.0
            start = text.find("bridge", start + 1)
        return ImportanceResult(importance, [], queries=1, windows=1)

    @property
    def vocab_size(self) -> int:
        return 0x110000


def test_public_api() -> None:
    assert sorted(langchain_specprefill.__all__) == [
        "ChatSpecPrefill",
        "PackagedEmbeddings",
        "SpecPrefillDocumentCompressor",
    ]
    assert issubclass(ChatSpecPrefill, BaseChatModel)
    assert issubclass(SpecPrefillDocumentCompressor, BaseDocumentCompressor)
    assert issubclass(PackagedEmbeddings, Embeddings)


def test_construction_loads_nothing() -> None:
    ChatSpecPrefill(keep_rate=0.2)
    ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", model="served-model", keep_rate=0.3)
    PackagedEmbeddings()


def test_the_compressor_prunes_documents_with_a_speculator() -> None:
    compressor = SpecPrefillDocumentCompressor(
        speculator=HotWordSpeculator(),
        config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8),
        keep_rate=0.3,
    )
    docs = [
        Document(page_content=FILLER * 4 + "The stone bridge was completed in 1896. " + FILLER * 4, id="a"),
        Document(page_content=FILLER * 8, id="b"),
    ]
    out = compressor.compress_documents(docs, "When was the bridge completed?")
    assert [d.id for d in out] == ["a", "b"]
    stats = [d.metadata["specprefill"] for d in out]
    assert all(s["pruned"] and s["tokens_kept"] < s["tokens_in"] for s in stats)
    assert "bridge" in out[0].page_content
