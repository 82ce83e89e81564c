"""Smoke test of llama-index-postprocessor-specprefill against the installed distribution: no model, no network.

Run ``pytest`` from this distribution's folder. The full tests are in the specprefill repository
(``tests/unit/llama_index``, ``tests/integration/llama_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, TextNode

import llama_index.postprocessor.specprefill as package
from llama_index.postprocessor.specprefill import METADATA_KEY, SpecPrefillNodePostprocessor
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
    assert "SpecPrefillNodePostprocessor" in package.__all__
    assert all(getattr(package, name) is not None for name in package.__all__)
    assert issubclass(SpecPrefillNodePostprocessor, BaseNodePostprocessor)


def test_construction_loads_nothing() -> None:
    SpecPrefillNodePostprocessor(keep_rate=0.2)


def test_the_postprocessor_prunes_nodes_with_a_speculator() -> None:
    postprocessor = SpecPrefillNodePostprocessor(
        HotWordSpeculator(), config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8), keep_rate=0.3
    )
    nodes = [
        NodeWithScore(node=TextNode(id_="a", text=FILLER * 4 + "The stone bridge was completed in 1896. "), score=0.9),
        NodeWithScore(node=TextNode(id_="b", text=FILLER * 8), score=0.8),
    ]
    out = postprocessor.postprocess_nodes(nodes, query_str="When was the bridge completed?")
    assert out and out[0].node.node_id == "a"
    assert "bridge" in out[0].node.get_content()
    assert sum(len(n.node.get_content()) for n in out) < sum(len(n.node.get_content()) for n in nodes)
    assert METADATA_KEY in out[0].node.metadata
