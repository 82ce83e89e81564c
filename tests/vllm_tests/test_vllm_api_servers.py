"""``specprefill serve ... --api-server-count 2`` over real HTTP: two API-server processes share one speculator.

vLLM's main process hosts the speculator; the two ``ApiServer_*`` processes that answer HTTP hold none and
forward their scoring to it (:mod:`specprefill.server.shared`). The host scores its micro-batches in shared
padded forward passes (``SPECPREFILL_SERVER_BATCH_FORWARD=true``, which is off by default on CPU). Every
answer is pruned, equal token for token to the one-API-server, one-prompt-at-a-time server's answer, the
prune endpoint works through the forwarding too, and ``/metrics`` counts every request of both processes
and the host's micro-batches.
"""

from __future__ import annotations

import concurrent.futures
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("serving", "vllm_helpers")
from serving import ServerHandle, running_server  # noqa: E402
from vllm_helpers import HAS_EMBEDDED, HAS_HF, VLLM_REASON, needs_vllm  # noqa: E402

from specprefill.wire.prune import PRUNE_PATH  # noqa: E402

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["serving"]

MODEL = "smollm2-135m"
REQUESTS = 6


def question_messages(i: int) -> list[dict[str, str]]:
    facts = " ".join(f"Locker {k} holds {(k * 13) % 29} blue folders." for k in range(70))  # ~1,000 tokens
    return [{"role": "user", "content": f"{facts}\n\nHow many blue folders does locker {i * 7} hold?"}]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    if not (HAS_HF and HAS_EMBEDDED):
        pytest.skip(VLLM_REASON)
    logs = tmp_path_factory.mktemp("api-servers")
    env = {"SPECPREFILL_SERVER_BATCH_FORWARD": "true"}
    with running_server(extra_args=("--api-server-count", "2"), env=env, log_dir=logs) as handle:
        yield handle


def chat(server: ServerHandle, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": 6, "temperature": 0.0, "return_token_ids": True}
    reply = httpx.post(server.base_url + "/chat/completions", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def test_concurrent_requests_through_two_api_servers_are_all_pruned(two_servers: ServerHandle) -> None:
    with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
        replies = list(pool.map(lambda i: chat(two_servers, question_messages(i)), range(REQUESTS)))
    for reply in replies:
        stats = reply["specprefill"]
        assert stats["pruned"] and not stats["fallback"] and stats["positions"] == "original", stats
        assert reply["usage"]["prompt_tokens"] == stats["tokens_kept"] < stats["tokens_in"]

    with urllib.request.urlopen(two_servers.root_url + "/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert metric(metrics, 'specprefill_requests_total{outcome="pruned"}') == REQUESTS  # both processes counted
    assert metric(metrics, "specprefill_scoring_batch_size_sum") == REQUESTS  # every job ran on the host
    # scoring one takes seconds here, so the requests that arrive meanwhile are scored in shared batches
    assert metric(metrics, "specprefill_scoring_batch_size_count") < REQUESTS


def test_answers_equal_the_single_api_server(two_servers: ServerHandle, spec_server: ServerHandle) -> None:
    # the shared one-API-server server: same base, speculator and keep rate, one prompt per forward pass
    questions = [question_messages(i) for i in (3, 5, 8)]
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:  # concurrent: batched on the host
        shared = list(pool.map(lambda m: chat(two_servers, m), questions))
    for messages, reply in zip(questions, shared, strict=True):
        alone = chat(spec_server, messages)
        assert reply["specprefill"]["tokens_kept"] == alone["specprefill"]["tokens_kept"]
        assert reply["choices"][0]["token_ids"] == alone["choices"][0]["token_ids"]


def test_prune_endpoint_forwards_to_the_host(two_servers: ServerHandle) -> None:
    text = question_messages(2)[0]["content"]
    reply = httpx.post(two_servers.root_url + PRUNE_PATH, json={"prompt": text, "keep_rate": 0.3}, timeout=300)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert not data["stats"]["fallback"] and data["stats"]["tokens_kept"] < data["stats"]["tokens_in"]
    assert data["kept_spans"] and len(data["text"]) < len(text)
