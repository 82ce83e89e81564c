"""Well-kept clients over real HTTP against ``specprefill serve`` (SmolLM2-135M as base and speculator).

- LangChain ``ChatOpenAI`` and LlamaIndex ``OpenAILike``, UNCHANGED, get pruned answers from the shared
  ``spec_server`` (keep rate 0.3): ``usage.prompt_tokens`` below the unpruned count of the same request.
- ``ChatSpecPrefill`` / ``SpecPrefillLLM`` in server mode report the server's stats.
- Tool calling and structured output with a long pruned prompt, through ``ChatOpenAI`` and through
  ``ChatSpecPrefill``, on the same server (its chat template renders tools, the hermes parser reads calls):
  the kept positions the server reports (``vllm_xargs`` ``specprefill_return_kept``) cover every token of
  the tools block. SmolLM2-135M need not write a valid call; what it answered is printed, not asserted.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from serving import ServerHandle, post_json
from vllm_helpers import needs_vllm

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["serving"]

MODEL = "smollm2-135m"
RETURN_KEPT = {"vllm_xargs": {"specprefill_return_kept": True}}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city, in degrees Celsius.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Oslo"}},
            "required": ["city"],
        },
    },
}


def document(n: int, seed: int = 0) -> str:
    return " ".join(f"Record {i + seed}: the barge {(i * 7 + seed) % 11} carried {3 + i % 5} crates." for i in range(n))


def messages(question: str = "How many crates did the barge in record 12 carry?") -> list[tuple[str, str]]:
    """A ~900-token RAG prompt; a fresh marker keeps requests apart (records, prefix cache)."""
    marker = uuid.uuid4().hex[:12]
    return [("system", "Answer in a few words."), ("human", f"[{marker}] {document(48)}\nQuestion: {question}")]


# --- unchanged clients on the shared server -------------------------------------------------------------------
def test_chat_openai_unchanged_gets_a_pruned_answer(spec_server: ServerHandle) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, base_url=spec_server.base_url, api_key="EMPTY", temperature=0, max_tokens=8)
    prompt = messages()
    pruned = chat.invoke(prompt)
    full = chat.invoke(prompt, extra_body={"vllm_xargs": {"specprefill_keep_rate": 1.0}})
    assert pruned.usage_metadata is not None and full.usage_metadata is not None
    assert 0 < pruned.usage_metadata["input_tokens"] < full.usage_metadata["input_tokens"]
    assert isinstance(pruned.content, str) and pruned.content.strip()


def test_openai_like_unchanged_gets_a_pruned_answer_with_stats_in_raw(spec_server: ServerHandle) -> None:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model=MODEL, api_base=spec_server.base_url, api_key="EMPTY", is_chat_model=True, max_tokens=8, temperature=0
    )
    prompt = [ChatMessage(role="system" if r == "system" else "user", content=c) for r, c in messages()]
    pruned = llm.chat(prompt)
    full = llm.chat(prompt, extra_body={"vllm_xargs": {"specprefill_keep_rate": 1.0}})
    stats = pruned.raw.model_extra["specprefill"]
    assert pruned.additional_kwargs["prompt_tokens"] == stats["tokens_kept"] < stats["tokens_in"]
    assert stats["positions"] == "original" and stats["pruned"] is True
    assert full.additional_kwargs["prompt_tokens"] == stats["tokens_in"]
    assert pruned.message.content


# --- the integrations in server mode --------------------------------------------------------------------------
def test_chat_specprefill_server_mode_reports_the_server_stats(spec_server: ServerHandle) -> None:
    from langchain_specprefill import ChatSpecPrefill

    chat = ChatSpecPrefill(base_url=spec_server.base_url, model=MODEL, max_tokens=8)
    msg = chat.invoke(messages(), keep_rate=0.2)
    stats = msg.response_metadata["specprefill"]
    assert stats["pruned"] and stats["positions"] == "original" and stats["fallback"] is False
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == stats["tokens_kept"]
    assert stats["tokens_kept"] < 0.5 * stats["tokens_in"]
    chunks = list(chat.stream(messages(), keep_rate=1.0))
    assert sum("specprefill" in c.response_metadata for c in chunks) == 1
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    full = merged.response_metadata["specprefill"]
    assert full["pruned"] is False and full["positions"] == "none"
    assert merged.usage_metadata is not None and merged.usage_metadata["input_tokens"] == full["tokens_in"]


async def test_specprefill_llm_server_mode_reports_the_server_stats(spec_server: ServerHandle) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    from llama_index.llms.specprefill import SpecPrefillLLM

    llm = SpecPrefillLLM(base_url=spec_server.base_url, max_new_tokens=8)
    prompt = [ChatMessage(role="system" if r == "system" else "user", content=c) for r, c in messages()]
    response = await llm.achat(prompt)
    stats = response.additional_kwargs["specprefill"]
    assert stats["pruned"] and response.additional_kwargs["prompt_tokens"] == stats["tokens_kept"]
    assert response.raw["specprefill"] == stats and llm.metadata.model_name == MODEL
    last = list(llm.stream_complete(prompt[-1].content or "", keep_rate=0.1))[-1]
    assert last.additional_kwargs["specprefill"]["keep_ratio"] < stats["keep_ratio"]


# --- tools and structured output -------------------------------------------------------------------------------
def tools_block(server: ServerHandle, prompt: list[tuple[str, str]]) -> list[int]:
    """Token positions of the rendered tools block (``# Tools`` to the end of the system turn) of ``prompt``."""
    from transformers import AutoTokenizer

    from specprefill.speculator.loading import cached_dense_dir

    roles = {"system": "system", "human": "user"}
    chat = [{"role": roles[r], "content": c} for r, c in prompt]
    body = {"model": MODEL, "messages": chat, "tools": [WEATHER_TOOL], "add_generation_prompt": True}
    status, text, _ = post_json(f"{server.root_url}/tokenize", json.dumps(body).encode())
    assert status == 200, text[:300]
    tokenizer = AutoTokenizer.from_pretrained(str(cached_dense_dir(MODEL)))
    rendered = tokenizer.decode(json.loads(text)["tokens"])
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    start = rendered.index("# Tools")
    end = rendered.index("<|im_end|>", start) + len("<|im_end|>")
    return [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]


def assert_tools_block_kept(stats: dict[str, Any], block: list[int]) -> None:
    """The server's kept positions hold every tools-block token, and the prompt WAS pruned."""
    from specprefill.vllm_plugin.positions import decode_runs

    kept = set(decode_runs(stats["kept_runs"]))
    assert len(block) > 50, "the tools block was not rendered into the prompt"
    assert [i for i in block if i not in kept] == []
    assert len(kept) == stats["tokens_kept"] < stats["tokens_in"]


def test_tool_call_through_chat_openai_keeps_the_tools_block(spec_server: ServerHandle) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, base_url=spec_server.base_url, api_key="EMPTY", temperature=0, max_tokens=32)
    prompt = messages("What is the weather in Oslo? Call the tool.")
    msg = chat.bind_tools([WEATHER_TOOL], tool_choice="get_weather").invoke(prompt, extra_body=RETURN_KEPT)
    # ChatOpenAI drops the stats object; the same request through its own openai client shows what was kept
    roles = {"system": "system", "human": "user"}
    raw = chat.root_client.chat.completions.create(
        model=MODEL, messages=[{"role": roles[r], "content": c} for r, c in prompt], tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32, temperature=0,
        extra_body=RETURN_KEPT,
    )  # fmt: skip
    stats = raw.model_extra["specprefill"]
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == stats["tokens_kept"]
    assert_tools_block_kept(stats, tools_block(spec_server, prompt))
    assert msg.response_metadata["finish_reason"] in {"stop", "length", "tool_calls"}
    print(f"\nChatOpenAI named tool_choice on a pruned prompt ({stats['tokens_kept']}/{stats['tokens_in']} kept): "
          f"content={msg.content!r:.200} tool_calls={msg.tool_calls}")  # fmt: skip


def test_tool_call_through_chat_specprefill_keeps_the_tools_block(spec_server: ServerHandle) -> None:
    from langchain_specprefill import ChatSpecPrefill

    chat = ChatSpecPrefill(base_url=spec_server.base_url, model=MODEL, max_tokens=32, keep_rate=0.1)
    prompt = messages("What is the weather in Oslo? Call the tool if needed.")
    msg = chat.bind_tools([WEATHER_TOOL]).invoke(prompt, extra_body=RETURN_KEPT)
    stats = msg.response_metadata["specprefill"]
    assert stats["pruned"] and stats["positions"] == "original"
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == stats["tokens_kept"]
    assert_tools_block_kept(stats, tools_block(spec_server, prompt))
    print(f"\nChatSpecPrefill auto tool_choice on a pruned prompt ({stats['tokens_kept']}/{stats['tokens_in']} "
          f"kept): content={msg.content!r:.200} tool_calls={msg.tool_calls}")  # fmt: skip


def test_structured_output_json_schema_through_chat_specprefill(spec_server: ServerHandle) -> None:
    from pydantic import BaseModel

    from langchain_specprefill import ChatSpecPrefill

    class Crates(BaseModel):
        crates: int

    chat = ChatSpecPrefill(base_url=spec_server.base_url, model=MODEL, max_tokens=24, keep_rate=0.3)
    out: Any = chat.with_structured_output(Crates, method="json_schema", include_raw=True).invoke(messages())
    assert out["parsing_error"] is None and isinstance(out["parsed"], Crates), out
    stats = out["raw"].response_metadata["specprefill"]
    assert stats["pruned"] and stats["tokens_kept"] < stats["tokens_in"]
