"""ChatSpecPrefill in server mode against a scripted pruning server on 127.0.0.1 (no model anywhere)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from fake_vllm_server import FakeVLLMServer
from fakes import fake_engine
from langchain_specprefill import ChatSpecPrefill
from langchain_specprefill.server_chat import SpecPrefillServerChat
from specprefill.errors import ConfigurationError
from specprefill.wire.stats import ServerStatsError

pytest_plugins = ["fake_vllm_server"]  # the fake_vllm fixture

MESSAGES = [SystemMessage("Be brief."), HumanMessage("Long context. " * 20 + "Question: why?")]


@tool
def get_weather(city: str) -> str:
    """Weather of a city."""
    return f"sunny in {city}"


class Answer(BaseModel):
    answer: str


def server_chat(server: FakeVLLMServer, **kwargs: Any) -> ChatSpecPrefill:
    return ChatSpecPrefill(base_url=server.base_url, model="served-model", api_key="sk-test", **kwargs)


# --- construction --------------------------------------------------------------------------------------------
def test_server_mode_is_base_url_without_speculator() -> None:
    assert ChatSpecPrefill(base_url="http://127.0.0.1:9/v1").server_mode
    assert not ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", speculator="smollm2-135m").server_mode
    assert not ChatSpecPrefill().server_mode
    with pytest.raises(ValueError, match="not both"):
        ChatSpecPrefill(engine=fake_engine(), base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match="server mode"):
        ChatSpecPrefill(base_url="http://127.0.0.1:9/v1").get_engine()
    with pytest.raises(ConfigurationError, match="server_chat"):
        ChatSpecPrefill().server_chat()


def test_server_only_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="min_prompt_tokens"):
        ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", min_prompt_tokens=10)
    with pytest.raises(ValueError, match="keep_rate"):
        ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", keep_rate=0)


def test_server_mode_loads_no_model_in_process(fake_vllm: FakeVLLMServer) -> None:
    code = (
        "import sys\n"
        "from langchain_specprefill import ChatSpecPrefill\n"
        f"chat = ChatSpecPrefill(base_url={fake_vllm.base_url!r}, keep_rate=0.1)\n"
        "print(chat.invoke('hi').response_metadata['specprefill']['tokens_kept'])\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["20", "False", "False"]


# --- metadata and overrides ----------------------------------------------------------------------------------
def test_invoke_maps_stats_and_usage_and_sends_the_full_prompt(fake_vllm: FakeVLLMServer) -> None:
    chat = server_chat(fake_vllm, keep_rate=0.1, max_tokens=7)
    msg = chat.invoke(MESSAGES)
    stats = msg.response_metadata["specprefill"]
    assert msg.content == "Hello there friend"
    assert stats == fake_vllm.stats_for({"vllm_xargs": {"specprefill_keep_rate": 0.1}})
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == stats["tokens_kept"] == 20
    body = fake_vllm.requests[-1]
    assert body["vllm_xargs"] == {"specprefill_keep_rate": 0.1}
    assert [m["content"] for m in body["messages"]] == [m.content for m in MESSAGES]  # nothing cut client-side
    assert body["model"] == "served-model" and body["max_completion_tokens"] == 7


def test_per_call_and_bound_overrides_travel_as_vllm_xargs(fake_vllm: FakeVLLMServer) -> None:
    chat = server_chat(fake_vllm, keep_rate=0.3)
    chat.invoke("q", keep_rate=1.0, max_kept_tokens=64, max_new_tokens=3)
    assert fake_vllm.requests[-1]["vllm_xargs"] == {"specprefill_keep_rate": 1.0, "specprefill_max_kept_tokens": 64}
    assert fake_vllm.requests[-1]["max_completion_tokens"] == 3
    off = chat.bind(keep_rate=1.0).invoke("q").response_metadata["specprefill"]
    assert off["pruned"] is False and off["positions"] == "none"
    server_chat(fake_vllm).invoke("q")
    assert "vllm_xargs" not in fake_vllm.requests[-1]  # no override: the server's default keep rate


def test_pruning_settings_the_server_owns_are_refused_per_call(fake_vllm: FakeVLLMServer) -> None:
    chat = server_chat(fake_vllm)
    for kwargs in ({"lookahead": 4}, {"protected_spans": [(0, 3)]}, {"min_prompt_tokens": 0}):
        with pytest.raises(ConfigurationError, match="server decides"):
            chat.invoke("q", **kwargs)
    with pytest.raises(ConfigurationError, match="keep_rate"):
        chat.invoke("q", keep_rate=2.0)
    assert fake_vllm.requests == []


def test_model_defaults_to_the_first_served_model(fake_vllm: FakeVLLMServer) -> None:
    chat = ChatSpecPrefill(base_url=fake_vllm.base_url)
    assert chat.invoke("q").response_metadata["model_name"] == "served-model"
    assert isinstance(chat.server_chat(), SpecPrefillServerChat) and chat.server_chat().model_name == "served-model"


# --- streaming and async -------------------------------------------------------------------------------------
def test_stream_carries_the_stats_once(fake_vllm: FakeVLLMServer) -> None:
    chunks = list(server_chat(fake_vllm).stream(MESSAGES, keep_rate=0.5))
    assert "".join(str(c.content) for c in chunks) == "Hello there friend"
    with_stats = [c for c in chunks if "specprefill" in c.response_metadata]
    assert len(with_stats) == 1  # the server sends it twice (finish and usage chunks): kept once
    assert with_stats[0].response_metadata["specprefill"]["tokens_kept"] == 100
    assert chunks[-1].chunk_position == "last"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.response_metadata["specprefill"] == fake_vllm.stats_for(
        {"vllm_xargs": {"specprefill_keep_rate": 0.5}}
    )
    assert merged.usage_metadata is not None and merged.usage_metadata["input_tokens"] == 100
    assert fake_vllm.requests[-1]["stream_options"] == {"include_usage": True}


async def test_async_invoke_and_stream(fake_vllm: FakeVLLMServer) -> None:
    chat = ChatSpecPrefill(base_url=fake_vllm.base_url, keep_rate=0.2)
    msg = await chat.ainvoke(MESSAGES)
    assert msg.response_metadata["specprefill"]["tokens_kept"] == 40
    chunks = [c async for c in chat.astream(MESSAGES, keep_rate=0.1)]
    assert sum(1 for c in chunks if "specprefill" in c.response_metadata) == 1
    assert fake_vllm.requests[-1]["vllm_xargs"] == {"specprefill_keep_rate": 0.1}


# --- a server that does not keep the contract ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("missing", "carries no 'specprefill' stats"),
        ("not_object", "must be a JSON object"),
        ("bad_types", "tokens_kept"),
    ],
)
def test_missing_or_malformed_stats_raise_a_typed_error(fake_vllm: FakeVLLMServer, mode: Any, match: str) -> None:
    fake_vllm.stats_mode = mode
    chat = server_chat(fake_vllm)
    with pytest.raises(ServerStatsError, match=match):
        chat.invoke("q")
    with pytest.raises(ServerStatsError, match=match):
        list(chat.stream("q"))


async def test_missing_stats_raise_in_async_paths_too(fake_vllm: FakeVLLMServer) -> None:
    fake_vllm.stats_mode = "missing"
    chat = server_chat(fake_vllm)
    with pytest.raises(ServerStatsError, match="specprefill serve"):
        await chat.ainvoke("q")
    with pytest.raises(ServerStatsError):
        [c async for c in chat.astream("q")]


# --- tools and structured output through the server ----------------------------------------------------------
def test_bind_tools_sends_openai_tools_and_parses_tool_calls(fake_vllm: FakeVLLMServer) -> None:
    fake_vllm.tool_calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ]
    bound = server_chat(fake_vllm, keep_rate=0.1).bind_tools([get_weather], tool_choice="get_weather")
    msg = bound.invoke(MESSAGES)
    assert isinstance(msg, AIMessage)
    assert msg.tool_calls == [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}]
    assert msg.response_metadata["specprefill"]["tokens_kept"] == 20
    body = fake_vllm.requests[-1]
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["vllm_xargs"] == {"specprefill_keep_rate": 0.1}


def test_bind_tools_without_a_server_is_still_refused() -> None:
    with pytest.raises(NotImplementedError, match="tool calling"):
        ChatSpecPrefill().bind_tools([get_weather])


def test_structured_output_json_schema_goes_to_the_server(fake_vllm: FakeVLLMServer) -> None:
    fake_vllm.content = '{"answer": "because"}'
    structured = server_chat(fake_vllm, keep_rate=0.1).with_structured_output(Answer, include_raw=True)
    out: Any = structured.invoke(MESSAGES)
    assert out["parsed"] == Answer(answer="because") and out["parsing_error"] is None
    assert out["raw"].response_metadata["specprefill"]["keep_ratio"] == 0.1
    body = fake_vllm.requests[-1]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"] == {
        "answer": {"title": "Answer", "type": "string"}
    }
    assert body["vllm_xargs"] == {"specprefill_keep_rate": 0.1}
    assert "Respond with a single JSON object" not in str(body["messages"])  # no JSON-by-prompt in server mode


# --- LangChain's standard unit suite in server mode (hermetic: nothing is sent) ---------------------------------
class TestChatSpecPrefillServerModeUnit(ChatModelUnitTests):
    """Server mode declares tool calling and structured output: both go through the server."""

    @property
    def chat_model_class(self) -> type[ChatSpecPrefill]:
        return ChatSpecPrefill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"base_url": "http://127.0.0.1:9/v1", "model": "served-model", "keep_rate": 0.3}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
