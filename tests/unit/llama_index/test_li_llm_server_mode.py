"""SpecPrefillLLM in server mode against a scripted pruning server on 127.0.0.1 (no model anywhere)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from fake_vllm_server import FakeVLLMServer
from llama_index.llms.specprefill import STATS_KEY, SpecPrefillLLM
from llama_index.llms.specprefill.server import SpecPrefillOpenAILike
from specprefill import SpecPrefillConfig
from specprefill.errors import ConfigurationError
from specprefill.wire.stats import ServerStatsError

pytest_plugins = ["fake_vllm_server"]  # the fake_vllm fixture

MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
    ChatMessage(role=MessageRole.USER, content="Long context. " * 20 + "Question: why?"),
]


def server_llm(server: FakeVLLMServer, **kwargs: Any) -> SpecPrefillLLM:
    return SpecPrefillLLM(base_url=server.base_url, model="served-model", api_key="sk-test", **kwargs)


def test_server_mode_construction() -> None:
    llm = SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", keep_rate=0.2)
    assert llm.server_mode and llm.metadata.is_chat_model
    with pytest.raises(ConfigurationError, match="no engine"):
        _ = llm.engine
    with pytest.raises(ConfigurationError, match="server owns"):
        SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", config=SpecPrefillConfig(keep_rate=0.2))
    with pytest.raises(ConfigurationError, match="invalid SpecPrefillLLM"):
        SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", keep_rate=0.0)
    assert not SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", speculator="smollm2-135m").server_mode


def test_server_mode_loads_no_model_in_process(fake_vllm: FakeVLLMServer) -> None:
    code = (
        "import sys\n"
        "from llama_index.llms.specprefill import SpecPrefillLLM\n"
        f"llm = SpecPrefillLLM(base_url={fake_vllm.base_url!r}, keep_rate=0.1)\n"
        "print(llm.complete('hi').additional_kwargs['specprefill']['tokens_kept'], llm.metadata.model_name)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["20", "served-model", "False", "False"]


def test_chat_maps_stats_usage_and_raw(fake_vllm: FakeVLLMServer) -> None:
    response = server_llm(fake_vllm, keep_rate=0.1, max_new_tokens=9).chat(MESSAGES)
    extra = response.additional_kwargs
    assert response.message.content == "Hello there friend"
    assert extra[STATS_KEY] == fake_vllm.stats_for({"vllm_xargs": {"specprefill_keep_rate": 0.1}})
    assert extra["prompt_tokens"] == extra[STATS_KEY]["tokens_kept"] == 20 and extra["finish_reason"] == "stop"
    assert isinstance(response.raw, dict) and response.raw[STATS_KEY] == extra[STATS_KEY]
    body = fake_vllm.requests[-1]
    assert body["vllm_xargs"] == {"specprefill_keep_rate": 0.1} and body["max_tokens"] == 9
    assert [m["content"] for m in body["messages"]] == [m.content for m in MESSAGES]


def test_per_call_overrides_and_generation_settings(fake_vllm: FakeVLLMServer) -> None:
    llm = server_llm(fake_vllm, keep_rate=0.3, top_p=0.9, stop=["x"])
    llm.complete("q", keep_rate=1.0, max_kept_tokens=64, max_tokens=3, temperature=0.5)
    body = fake_vllm.requests[-1]
    assert body["vllm_xargs"] == {"specprefill_keep_rate": 1.0, "specprefill_max_kept_tokens": 64}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (3, 0.5, 0.9, ["x"])
    assert body["messages"] == [{"role": "user", "content": "q"}]
    for kwargs in ({"lookahead": 4}, {"protected_spans": [(0, 1)]}):
        with pytest.raises(ConfigurationError, match="server decides"):
            llm.chat(MESSAGES, **kwargs)


def test_stream_chat_and_complete_carry_stats_on_the_last_response(fake_vllm: FakeVLLMServer) -> None:
    llm = server_llm(fake_vllm)
    chats = list(llm.stream_chat(MESSAGES, keep_rate=0.5))
    assert chats[-1].message.content == "Hello there friend"
    assert STATS_KEY not in chats[0].additional_kwargs
    assert chats[-1].additional_kwargs[STATS_KEY]["tokens_kept"] == 100
    assert fake_vllm.requests[-1]["stream_options"] == {"include_usage": True}
    completions = list(llm.stream_complete("q"))
    assert "".join(c.delta or "" for c in completions) == "Hello there friend"
    assert STATS_KEY in completions[-1].additional_kwargs


async def test_async_endpoints(fake_vllm: FakeVLLMServer) -> None:
    llm = server_llm(fake_vllm, keep_rate=0.2)
    assert (await llm.achat(MESSAGES)).additional_kwargs[STATS_KEY]["tokens_kept"] == 40
    assert (await llm.acomplete("q")).additional_kwargs[STATS_KEY]["keep_ratio"] == 0.2
    chats = [r async for r in await llm.astream_chat(MESSAGES)]
    completions = [r async for r in await llm.astream_complete("q", keep_rate=0.1)]
    assert STATS_KEY in chats[-1].additional_kwargs
    assert (
        completions[-1].additional_kwargs[STATS_KEY]["tokens_kept"] == 20
        and completions[-1].text == "Hello there friend"
    )


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("missing", "carries no 'specprefill' stats"),
        ("not_object", "must be a JSON object"),
        ("bad_types", "must be an integer"),
    ],
)
async def test_missing_or_malformed_stats_raise_a_typed_error(fake_vllm: FakeVLLMServer, mode: Any, match: str) -> None:
    fake_vllm.stats_mode = mode
    llm = server_llm(fake_vllm)
    with pytest.raises(ServerStatsError, match=match):
        llm.chat(MESSAGES)
    with pytest.raises(ServerStatsError, match=match):
        list(llm.stream_complete("q"))
    with pytest.raises(ServerStatsError, match=match):
        await llm.acomplete("q")
    with pytest.raises(ServerStatsError, match=match):
        [r async for r in await llm.astream_chat(MESSAGES)]


def test_the_client_is_an_openai_like(fake_vllm: FakeVLLMServer) -> None:
    llm = SpecPrefillLLM(base_url=fake_vllm.base_url)
    client = llm.server_calls().llm
    assert isinstance(client, SpecPrefillOpenAILike) and client.model == "served-model"
    assert llm.metadata.model_name == "served-model" and client.is_chat_model
