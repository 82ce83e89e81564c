"""ChatSpecPrefill on the real embedded model: pruning, streaming, concurrency, lazy loading, OpenAI mode."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from lc_support import lc_engine, long_messages  # noqa: F401 - fixtures

from conftest import needs_model
from langchain_specprefill import ChatSpecPrefill

pytestmark = needs_model


def test_invoke_prunes_long_prompt_at_original_positions(request: pytest.FixtureRequest) -> None:
    engine, messages = request.getfixturevalue("lc_engine"), request.getfixturevalue("long_messages")
    chat = ChatSpecPrefill(engine=engine, max_tokens=6, keep_rate=0.3)
    msg = chat.invoke(messages)
    s = msg.response_metadata["specprefill"]
    assert s["pruned"] and s["positions"] == "original" and not s["fallback"]
    assert s["tokens_kept"] < 0.7 * s["tokens_in"]
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == s["base_prompt_tokens"] == s["tokens_kept"]
    assert msg.usage_metadata["output_tokens"] == s["completion_tokens"] <= 6
    assert msg.response_metadata["model_name"] == "smollm2-135m"
    assert s["speculator_seconds"] > 0 and s["ttft_seconds"] >= s["speculator_seconds"]


def test_stream_is_incremental_and_ends_with_usage(request: pytest.FixtureRequest) -> None:
    engine, messages = request.getfixturevalue("lc_engine"), request.getfixturevalue("long_messages")
    chat = ChatSpecPrefill(engine=engine, max_tokens=12, keep_rate=0.3)
    arrivals: list[tuple[float, AIMessageChunk]] = []
    for chunk in chat.stream(messages):
        arrivals.append((time.perf_counter(), chunk))
    chunks = [c for _, c in arrivals]
    texts = [c.content for c in chunks[:-1] if c.content]
    assert len(texts) >= 3, "tokens should arrive one by one, not as one block"
    assert arrivals[-1][0] - arrivals[0][0] > 0  # the first text came before generation finished
    assert all(c.usage_metadata is None and "specprefill" not in c.response_metadata for c in chunks[:-1])
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata is not None and last.response_metadata["specprefill"]["pruned"]
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.usage_metadata is not None
    assert full.usage_metadata["input_tokens"] == full.response_metadata["specprefill"]["tokens_kept"]
    assert full.usage_metadata["output_tokens"] == full.response_metadata["specprefill"]["completion_tokens"]


async def test_two_concurrent_ainvoke_calls_have_independent_stats(request: pytest.FixtureRequest) -> None:
    engine, messages = request.getfixturevalue("lc_engine"), request.getfixturevalue("long_messages")
    chat = ChatSpecPrefill(engine=engine, max_tokens=4)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.05)

    tick_task = asyncio.create_task(ticker())
    low, high = await asyncio.gather(chat.ainvoke(messages, keep_rate=0.1), chat.ainvoke(messages, keep_rate=0.6))
    done.set()
    await tick_task
    assert ticks > 3, "the event loop must stay free while the speculator and the base run"
    a, b = low.response_metadata["specprefill"], high.response_metadata["specprefill"]
    assert a["tokens_in"] == b["tokens_in"] and a["tokens_kept"] < b["tokens_kept"]
    assert low.usage_metadata is not None and low.usage_metadata["input_tokens"] == a["tokens_kept"]
    assert high.usage_metadata is not None and high.usage_metadata["input_tokens"] == b["tokens_kept"]
    # each call's numbers are its own: they match pruning the same prompt alone at its keep rate
    alone = engine.prune([{"role": r.replace("human", "user"), "content": c} for r, c in messages], keep_rate=0.1)
    assert alone.stats.tokens_kept == a["tokens_kept"]


def test_named_models_load_lazily_once_and_share_weights(monkeypatch: pytest.MonkeyPatch, speculator: Any) -> None:
    import specprefill.speculator.loading

    loads: list[str] = []

    def fake_load(name: str, **kwargs: Any) -> Any:
        loads.append(name)
        return speculator

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", fake_load)
    chat = ChatSpecPrefill(model="smollm2-135m", max_tokens=3)
    assert loads == []  # construction loads nothing
    first = chat.invoke("Hi")
    chat.invoke("Hi")
    assert loads == ["smollm2-135m"]
    engine = chat.get_engine()
    assert engine.speculator is speculator and engine.base.model is speculator.model  # type: ignore[attr-defined]
    assert first.response_metadata["model_name"] == "smollm2-135m"


async def test_openai_compatible_endpoint(speculator: Any, request: pytest.FixtureRequest) -> None:
    from local_openai_server import LocalOpenAIServer
    from specprefill.backends.transformers import TransformersBackend

    messages = request.getfixturevalue("long_messages")
    backend = TransformersBackend(speculator.model, speculator.tokenizer, name="smollm2-135m")
    with LocalOpenAIServer(backend, model_name="local-model") as server:
        chat = ChatSpecPrefill(
            base_url=server.base_url, model="local-model", api_key="sk-test", speculator=speculator, max_tokens=4
        )
        msg = await chat.ainvoke(messages, keep_rate=0.3)
        s = msg.response_metadata["specprefill"]
        assert msg.response_metadata["model_name"] == "local-model"
        assert s["pruned"] and s["positions"] == "compacted"  # a stock server gives kept ids fresh positions
        prompts = [body["prompt"] for path, body in server.requests if path == "/v1/completions" and body.get("stream")]
        assert isinstance(prompts[-1], list) and len(prompts[-1]) == s["tokens_kept"]  # token ids went over HTTP
        assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == s["tokens_kept"]
        chunks = list(chat.stream("Hello", max_tokens=3))
        assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None
