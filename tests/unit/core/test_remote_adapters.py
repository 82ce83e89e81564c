"""The document pruners with ``base_url=``/a RemoteSpeculator: same output as in-process, no local model, fallback.

Hermetic: the real middleware in memory with a fake service and a character-level fake speculator.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from fakes import hot_word_speculator
from langchain_specprefill import SpecPrefillDocumentCompressor
from llama_index.postprocessor.specprefill import METADATA_KEY, SpecPrefillNodePostprocessor
from remote_fakes import FakeService, asgi_transport, async_asgi_transport, failing_transport, middleware
from specprefill import SpecPrefillConfig
from specprefill.errors import ConfigurationError
from specprefill.speculator.remote import RemoteSpeculator

FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
TEXTS = [FILLER * 3 + "The ANSWER is forty-two. " + FILLER * 3, FILLER * 6, FILLER * 4]
CFG = SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8)


def remote(service: FakeService | None = None) -> RemoteSpeculator:
    app = middleware(service or FakeService(hot_word_speculator()))
    return RemoteSpeculator("http://s", transport=asgi_transport(app), async_transport=async_asgi_transport(app))


def without_time(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats without the timing, which differs run to run."""
    return {k: v for k, v in stats.items() if k != "speculator_seconds"}


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0 - i / 10) for i, t in enumerate(TEXTS)]


def texts(out: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content() for n in out]


def test_postprocessor_with_a_remote_speculator_equals_in_process() -> None:
    query = QueryBundle("What is the answer?")
    got = SpecPrefillNodePostprocessor(remote(), config=CFG, keep_rate=0.3).postprocess_nodes(nodes(), query)
    want = SpecPrefillNodePostprocessor(hot_word_speculator(), config=CFG, keep_rate=0.3).postprocess_nodes(
        nodes(), query
    )
    assert texts(got) == texts(want)
    assert "ANSWER" in texts(got)[0] and len("".join(texts(got))) < len("".join(TEXTS))
    assert [without_time(n.node.metadata[METADATA_KEY]) for n in got] == [
        without_time(m.node.metadata[METADATA_KEY]) for m in want
    ]
    stats = got[0].node.metadata[METADATA_KEY]
    assert stats["fallback"] is False and stats["pruned"] is True
    assert stats["tokens_kept"] == want[0].node.metadata[METADATA_KEY]["tokens_kept"]


async def test_postprocessor_async_with_a_remote_speculator() -> None:
    pp = SpecPrefillNodePostprocessor(remote(), config=CFG, keep_rate=0.3)
    got = await pp.apostprocess_nodes(nodes(), QueryBundle("What is the answer?"))
    want = SpecPrefillNodePostprocessor(hot_word_speculator(), config=CFG, keep_rate=0.3).postprocess_nodes(
        nodes(), QueryBundle("What is the answer?")
    )
    assert texts(got) == texts(want)


def test_postprocessor_base_url_loads_no_model_and_falls_back_when_the_server_is_down() -> None:
    pp = SpecPrefillNodePostprocessor(base_url="http://127.0.0.1:9", timeout=2, config=CFG)
    assert pp.base_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigurationError, match="loads no model"):
        _ = pp.speculator
    pp._remote = RemoteSpeculator("http://127.0.0.1:9", transport=failing_transport(httpx.ConnectError("refused")))
    out = pp.postprocess_nodes(nodes(), QueryBundle("q?"))
    assert texts(out) == TEXTS
    assert out[0].node.metadata[METADATA_KEY]["fallback"] is True


def test_postprocessor_refuses_both_speculator_and_base_url() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        SpecPrefillNodePostprocessor("smollm2-135m", base_url="http://s")


def docs() -> list[Document]:
    return [Document(page_content=t, metadata={"i": i}, id=f"d{i}") for i, t in enumerate(TEXTS)]


def compressor(**kwargs: Any) -> SpecPrefillDocumentCompressor:
    return SpecPrefillDocumentCompressor(keep_rate=0.3, min_prompt_tokens=0, config=CFG, **kwargs)


def test_compressor_with_a_remote_speculator_equals_in_process() -> None:
    got = compressor(speculator=remote()).compress_documents(docs(), "What is the answer?")
    want = compressor(speculator=hot_word_speculator()).compress_documents(docs(), "What is the answer?")
    assert [d.page_content for d in got] == [d.page_content for d in want]
    assert [without_time(d.metadata["specprefill"]) for d in got] == [
        without_time(d.metadata["specprefill"]) for d in want
    ]
    assert "ANSWER" in got[0].page_content and got[0].id == "d0"


async def test_compressor_async_with_a_remote_speculator() -> None:
    got = await compressor(speculator=remote()).acompress_documents(docs(), "What is the answer?")
    want = compressor(speculator=hot_word_speculator()).compress_documents(docs(), "What is the answer?")
    assert [d.page_content for d in got] == [d.page_content for d in want]


def test_compressor_base_url_loads_no_model_and_flags_a_fallback() -> None:
    comp = compressor(base_url="http://127.0.0.1:9", api_key="k", timeout=2)
    with pytest.raises(ConfigurationError, match="no local model"):
        comp.get_speculator()
    comp._remote = RemoteSpeculator("http://127.0.0.1:9", transport=failing_transport(httpx.ConnectError("refused")))
    out = comp.compress_documents(docs(), "q?")
    assert [d.page_content for d in out] == TEXTS
    assert out[0].metadata["specprefill"]["fallback"] is True
    assert "RemoteConnectionError" in out[0].metadata["specprefill"]["fallback_reason"]


def test_compressor_refuses_both_speculator_and_base_url() -> None:
    with pytest.raises(ValueError, match="not both"):  # pydantic's ValidationError around ConfigurationError
        compressor(speculator="smollm2-135m", base_url="http://s")
