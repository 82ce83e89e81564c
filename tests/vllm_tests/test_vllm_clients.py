"""Well-kept clients over real HTTP against ``specprefill serve`` (SmolLM2-135M as base and speculator).

- LangChain ``ChatOpenAI`` and LlamaIndex ``OpenAILike``, UNCHANGED, get pruned answers from the shared
  ``spec_server`` (keep rate 0.3): ``usage.prompt_tokens`` below the unpruned count of the same request.
- ``ChatSpecPrefill`` / ``SpecPrefillLLM`` in server mode report the server's stats.
- Tool calling and structured output with a long pruned prompt, through ``ChatOpenAI`` and through
  ``ChatSpecPrefill``, on a second server (``tools_server``) whose chat template renders the tools (SmolLM2's
  own template ignores them) and whose speculator records the kept indices (:mod:`recording_speculator`):
  every token of the tools block must be kept. ``VLLM_ENFORCE_STRICT_TOOL_CALLING=0`` there lets vLLM force
  a named ``tool_choice`` into the tool's JSON schema with the hermes parser, so SmolLM2-135M's call parses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import ServerHandle, running_server
from vllm_helpers import HAS_EMBEDDED, HAS_HF, HAS_VLLM, VLLM_REASON, needs_vllm

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["serving"]

MODEL = "smollm2-135m"
HERE = Path(__file__).resolve().parent
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


# --- tools and structured output on the recording server ------------------------------------------------------
@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Path]]:
    """A pruning server with a tools-rendering template, the hermes tool parser and the recording speculator."""
    if not (HAS_VLLM and HAS_HF and HAS_EMBEDDED):
        pytest.skip(VLLM_REASON)
    records = tmp_path_factory.mktemp("kept-records")
    extra = ["--chat-template", str(HERE / "tools_chat_template.jinja")]
    extra += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    # without strict tool calling, vLLM forces a named tool_choice into the tool's JSON schema for hermes too
    env = {"SPECPREFILL_TEST_RECORD_DIR": str(records), "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}
    logs = tmp_path_factory.mktemp("tools-server")
    with running_server(
        speculator="recording_speculator:recording", keep_rate=0.3, env=env, extra_args=extra, log_dir=logs
    ) as handle:
        yield handle, records / "kept.jsonl"


def kept_record(path: Path, marker: str) -> dict[str, Any]:
    """The recorded selection of the one prompt that contains ``marker``."""
    found = [r for r in map(json.loads, path.read_text().splitlines()) if marker in r["text"]]
    assert len(found) == 1, f"{len(found)} records for {marker}"
    return found[0]


def assert_tools_block_kept(record: dict[str, Any]) -> int:
    """Every token overlapping the rendered ``<tools>...</tools>`` block is kept; returns how many there are."""
    text = record["text"]
    start, end = text.index("<tools>"), text.index("</tools>") + len("</tools>")
    block = [i for i, (a, b) in enumerate(record["offsets"]) if a < end and b > start]
    assert len(block) > 50, "the tools block was not rendered into the prompt"
    kept = set(record["kept"])
    assert [i for i in block if i not in kept] == []
    assert len(kept) < record["n_tokens"]  # the prompt WAS pruned, so keeping the block was not a given
    return len(block)


def marker_of(prompt: list[tuple[str, str]]) -> str:
    return prompt[1][1][1:13]


def test_tool_call_through_chat_openai_keeps_the_tools_block(tools_server: tuple[ServerHandle, Path]) -> None:
    from langchain_openai import ChatOpenAI

    server, records = tools_server
    chat = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="EMPTY", temperature=0, max_tokens=32)
    prompt = messages("What is the weather in Oslo? Call the tool.")
    msg = chat.bind_tools([WEATHER_TOOL], tool_choice="get_weather").invoke(prompt)
    record = kept_record(records, marker_of(prompt))
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == len(record["kept"])
    n_block = assert_tools_block_kept(record)
    assert msg.response_metadata["finish_reason"] in {"stop", "length", "tool_calls"}
    # vLLM constrains a named tool_choice to the tool's parameter schema, so even SmolLM2-135M calls it validly
    assert [call["name"] for call in msg.tool_calls] == ["get_weather"], (msg.content, msg.tool_calls)
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    print(
        f"\nChatOpenAI named tool_choice: tools block {n_block} tokens, all kept of {len(record['kept'])}/"
        f"{record['n_tokens']}; content={msg.content!r:.200} tool_calls={msg.tool_calls}"
    )


def test_tool_call_through_chat_specprefill_keeps_the_tools_block(tools_server: tuple[ServerHandle, Path]) -> None:
    from langchain_specprefill import ChatSpecPrefill

    server, records = tools_server
    chat = ChatSpecPrefill(base_url=server.base_url, model=MODEL, max_tokens=32, keep_rate=0.1)
    prompt = messages("What is the weather in Oslo? Call the tool if needed.")
    msg = chat.bind_tools([WEATHER_TOOL], tool_choice="auto").invoke(prompt)
    stats = msg.response_metadata["specprefill"]
    record = kept_record(records, marker_of(prompt))
    assert stats["tokens_kept"] == len(record["kept"]) and stats["tokens_in"] == record["n_tokens"]
    assert stats["pruned"] and stats["positions"] == "original"
    n_block = assert_tools_block_kept(record)
    # tool_choice="auto": SmolLM2-135M may or may not call the tool (the hermes parser decides); recorded
    print(
        f"\nChatSpecPrefill auto tool_choice: tools block {n_block} tokens, all kept of {stats['tokens_kept']}/"
        f"{stats['tokens_in']}; content={msg.content!r:.200} tool_calls={msg.tool_calls}"
    )


def test_structured_output_json_schema_through_chat_specprefill(tools_server: tuple[ServerHandle, Path]) -> None:
    from pydantic import BaseModel

    from langchain_specprefill import ChatSpecPrefill

    class Crates(BaseModel):
        crates: int

    server, _ = tools_server
    chat = ChatSpecPrefill(base_url=server.base_url, model=MODEL, max_tokens=24, keep_rate=0.3)
    out: Any = chat.with_structured_output(Crates, method="json_schema", include_raw=True).invoke(messages())
    assert out["parsing_error"] is None and isinstance(out["parsed"], Crates), out
    stats = out["raw"].response_metadata["specprefill"]
    assert stats["pruned"] and stats["tokens_kept"] < stats["tokens_in"]
