"""``POST /specprefill/v1/prune`` over real HTTP on the shared ``specprefill serve`` server (SmolLM2 both sides).

* The endpoint's kept spans equal in-process ``Speculator.prune`` on the same text (same model, float32).
* ``RemoteSpeculator`` (the client's config travels) equals in-process pruning token for token.
* ``SpecPrefillNodePostprocessor(base_url=...)`` keeps the answer sentence of a RAG question from
  examples/documents and equals the in-process postprocessor, with no model loaded for it.
* A forced speculator failure is flagged (or a 503 when the caller asks for no fallback), bad input is a 400,
  an oversized body a 413, and vLLM's own routes still answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

pytest.register_assert_rewrite("vllm_helpers", "serving")
from serving import ServerHandle  # noqa: E402
from speculator_factories import FAIL_MARKER  # noqa: E402
from vllm_helpers import needs_vllm  # noqa: E402

from llama_index.postprocessor.specprefill import SpecPrefillNodePostprocessor  # noqa: E402
from specprefill import SpecPrefillConfig  # noqa: E402
from specprefill.speculator.remote import RemoteSpeculator  # noqa: E402
from specprefill.wire.prune import PRUNE_PATH  # noqa: E402

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["vllm_helpers", "serving"]

DOCUMENTS = Path(__file__).resolve().parents[2] / "examples" / "documents"
QUESTION = "In which year was the stone bridge in Lanternfield completed?"
ANSWER_SENTENCE = "The present stone bridge, with five arches of local grey sandstone, was completed in 1896."
SERVER_CONFIG = SpecPrefillConfig(keep_rate=0.3, min_prompt_tokens=256)
"""What the shared server prunes with (its keep rate and min_prompt_tokens; defaults otherwise)."""


def paragraphs(name: str) -> list[str]:
    return [p.strip() for p in (DOCUMENTS / name).read_text(encoding="utf-8").split("\n\n") if p.strip()]


def document() -> str:
    return "\n\n".join(paragraphs("lanternfield_history.txt")[:9])


def nodes() -> list[NodeWithScore]:
    lantern = paragraphs("lanternfield_history.txt")
    texts = [
        "\n\n".join(lantern[0:4]),
        "\n\n".join(lantern[4:8]),  # "The River and the Bridges": the answer
        "\n\n".join(paragraphs("brightwell_kettle_faq.txt")[:4]),
        "\n\n".join(paragraphs("library_board_minutes.txt")[:4]),
    ]
    return [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1 - i / 10) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def speculator() -> Any:
    from specprefill import load_speculator

    return load_speculator("smollm2-135m", dtype="float32")  # as the server's (speculator_factories)


def prune(server: ServerHandle, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.root_url + PRUNE_PATH, json=body, timeout=300, **kwargs)


def test_endpoint_kept_spans_equal_in_process_prune(spec_server: ServerHandle, speculator: Any) -> None:
    text = document()
    reply = prune(spec_server, {"prompt": text})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    want = speculator.prune(text, SERVER_CONFIG)
    assert body["kept_spans"] == [list(s) for s in want.kept_spans]
    assert body["text"] == want.text
    stats = body["stats"]
    assert (stats["tokens_in"], stats["tokens_kept"]) == (want.stats.tokens_in, want.stats.tokens_kept)
    assert stats["pruned"] is True and stats["fallback"] is False and stats["tokens_kept"] < stats["tokens_in"]
    assert stats["speculator_seconds"] > 0


def test_remote_speculator_equals_in_process_with_the_clients_config(
    spec_server: ServerHandle, speculator: Any
) -> None:
    config = SpecPrefillConfig(keep_rate=0.2, lookahead=16, min_prompt_tokens=64, chunk_size=16)
    remote = RemoteSpeculator(spec_server.base_url, timeout=300)  # a trailing /v1 is accepted
    got = remote.prune(document(), config)
    want = speculator.prune(document(), config)
    assert np.array_equal(got.kept_indices, want.kept_indices)
    assert got.text == want.text and got.stats.speculator == want.stats.speculator


def test_postprocessor_with_base_url_keeps_the_answer_sentence(spec_server: ServerHandle, speculator: Any) -> None:
    query = QueryBundle(QUESTION)
    remote = SpecPrefillNodePostprocessor(base_url=spec_server.root_url, keep_rate=0.2, timeout=300)
    got = remote.postprocess_nodes(nodes(), query)
    assert remote._speculator is None  # no model in this postprocessor
    by_id = {n.node.node_id: n.node.get_content() for n in got}
    assert " ".join(ANSWER_SENTENCE.split()) in " ".join(by_id["n1"].split())
    stats = got[0].node.metadata["specprefill"]
    assert stats["pruned"] is True and stats["fallback"] is False
    assert stats["context_tokens_kept"] <= 0.3 * stats["context_tokens_in"]
    local = SpecPrefillNodePostprocessor(speculator, keep_rate=0.2).postprocess_nodes(nodes(), query)
    assert [n.node.get_content() for n in got] == [n.node.get_content() for n in local]


def test_forced_failure_is_flagged_or_a_503(spec_server: ServerHandle) -> None:
    text = f"{document()}\n\n{FAIL_MARKER}"
    reply = prune(spec_server, {"prompt": text})
    assert reply.status_code == 200
    stats = reply.json()["stats"]
    assert stats["fallback"] is True and stats["fallback_reason"] == "error"  # the details stay in the log
    assert reply.json()["text"] == text
    strict = prune(spec_server, {"prompt": text, "fallback": False, "config": {"fallback_on_error": False}})
    assert strict.status_code == 503 and strict.json()["error"]["type"] == "scoring_unavailable"


def test_bad_input_oversized_bodies_and_other_routes(spec_server: ServerHandle) -> None:
    bad = prune(spec_server, {"prompt": "x", "keep_rate": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_rate"
    huge = httpx.post(
        spec_server.root_url + PRUNE_PATH,
        content=json.dumps({"prompt": "x" * (9 << 20)}),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert huge.status_code == 413
    assert httpx.get(spec_server.root_url + "/health", timeout=10).status_code == 200
    models = httpx.get(spec_server.base_url + "/models", timeout=10)
    assert models.status_code == 200 and models.json()["data"]
