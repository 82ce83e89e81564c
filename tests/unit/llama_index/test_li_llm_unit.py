"""SpecPrefillLLM, hermetic: a fake speculator and a scripted base backend behind a real SpecPrefillEngine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.callbacks.token_counting import get_tokens_from_response
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.prompts import PromptTemplate

from fakes import FakeBackend, answering_backend, hot_word_speculator
from llama_index.llms.specprefill import STATS_KEY, SpecPrefillLLM
from specprefill import SpecPrefillConfig, SpecPrefillEngine
from specprefill.errors import ConfigurationError, PromptError, UnknownArgumentError

LONG = "filler words that do not matter at all. " * 20 + "The ANSWER is forty-two. " + "more filler text here. " * 20


def _llm(**kwargs: Any) -> tuple[SpecPrefillLLM, FakeBackend]:
    base = answering_backend()
    config = SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8, protect_question_tokens=16)
    engine = SpecPrefillEngine(hot_word_speculator(), base, config)
    return SpecPrefillLLM(engine, **kwargs), base


def _messages() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
        ChatMessage(role=MessageRole.USER, content=LONG + " What is the answer?"),
    ]


def _check_stats(extra: dict[str, Any]) -> None:
    stats = extra[STATS_KEY]
    assert stats["pruned"] is True
    assert stats["tokens_kept"] < stats["tokens_in"]
    assert stats["speculator"] == "char-fake" and stats["base_model"] == "scripted-base"
    assert extra["prompt_tokens"] == stats["base_prompt_tokens"] > 0
    assert extra["completion_tokens"] == len("Forty-two.")
    assert extra["total_tokens"] == extra["prompt_tokens"] + extra["completion_tokens"]
    assert extra["finish_reason"] == "stop"


def test_metadata_is_a_chat_model_named_after_the_base() -> None:
    llm, _ = _llm(max_new_tokens=64)
    meta = llm.metadata
    assert meta.is_chat_model is True and meta.is_function_calling_model is False
    assert meta.model_name == "scripted-base"
    assert meta.context_window == 4096  # the base's max_position_embeddings
    assert meta.num_output == 64
    assert SpecPrefillLLM.class_name() == "SpecPrefillLLM"
    engine = SpecPrefillEngine(hot_word_speculator(), answering_backend(max_positions=None))
    assert SpecPrefillLLM(engine).metadata.context_window == DEFAULT_CONTEXT_WINDOW
    assert SpecPrefillLLM(engine, model="mine", context_window=1000).metadata.model_name == "mine"


def test_chat_prunes_messages_and_reports_stats() -> None:
    llm, base = _llm(keep_rate=0.2)
    response = llm.chat(_messages())
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == "Forty-two."
    _check_stats(response.additional_kwargs)
    assert response.additional_kwargs[STATS_KEY]["keep_ratio"] < 0.5
    request, params = base.requests[-1], base.params[-1]
    assert request.messages is not None
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[0]["content"] == "Answer briefly."  # system prompt protected
    assert request.messages[1]["content"].endswith("What is the answer?")  # question protected
    assert "ANSWER" in request.messages[1]["content"]
    assert len(request.messages[1]["content"]) < len(LONG)
    assert params.max_new_tokens == 256 and params.temperature == 0.0
    # LlamaIndex token counting reads the usage from the response
    assert get_tokens_from_response(response) == (response.additional_kwargs["prompt_tokens"], len("Forty-two."))


def test_complete_sends_one_user_message() -> None:
    llm, base = _llm()
    response = llm.complete(LONG + " Question: what is the answer?")
    assert response.text == "Forty-two."
    _check_stats(response.additional_kwargs)
    request = base.requests[-1]
    assert request.messages is not None and [m["role"] for m in request.messages] == ["user"]


def test_streams_accumulate_and_end_with_stats() -> None:
    llm, _ = _llm()
    chunks = list(llm.stream_chat(_messages()))
    assert "".join(c.delta or "" for c in chunks) == "Forty-two."
    assert chunks[-1].message.content == "Forty-two."
    assert [c.message.content for c in chunks] == ["Forty", "Forty-two."]
    assert chunks[0].additional_kwargs == {}
    _check_stats(chunks[-1].additional_kwargs)
    pieces = list(llm.stream_complete(LONG))
    assert [p.text for p in pieces] == ["Forty", "Forty-two."]
    _check_stats(pieces[-1].additional_kwargs)


def test_async_endpoints() -> None:
    llm, _ = _llm()

    async def run() -> None:
        chat = await llm.achat(_messages())
        assert chat.message.content == "Forty-two."
        _check_stats(chat.additional_kwargs)
        done = await llm.acomplete(LONG)
        assert done.text == "Forty-two."
        chunks = [c async for c in await llm.astream_chat(_messages())]
        assert chunks[-1].message.content == "Forty-two."
        _check_stats(chunks[-1].additional_kwargs)
        pieces = [p async for p in await llm.astream_complete(LONG)]
        assert pieces[-1].text == "Forty-two."
        _check_stats(pieces[-1].additional_kwargs)

    asyncio.run(run())


def test_call_kwargs_override_generation_and_config() -> None:
    llm, base = _llm(temperature=0.5, stop=["\n"], seed=3, max_kept_tokens=40)
    llm.chat(_messages(), max_tokens=12, keep_rate=0.5, top_p=0.9)
    params = base.params[-1]
    assert (params.max_new_tokens, params.temperature, params.top_p, params.stop, params.seed) == (
        12,
        0.5,
        0.9,
        ("\n",),
        3,
    )
    wide = llm.chat(_messages()).additional_kwargs[STATS_KEY]["tokens_kept"]
    narrow = llm.chat(_messages(), max_kept_tokens=10).additional_kwargs[STATS_KEY]["tokens_kept"]
    assert narrow == wide - 30  # the per-call cap replaces the LLM's max_kept_tokens=40
    with pytest.raises(UnknownArgumentError, match=r"unexpected argument\(s\) \['tools'\]"):
        llm.chat(_messages(), tools=[])


def test_message_roles_and_blocks() -> None:
    llm, base = _llm()
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="first part"), TextBlock(text=LONG)]),
        ChatMessage(role=MessageRole.CHATBOT, content="Earlier reply."),
        ChatMessage(role=MessageRole.USER, content="And now?"),
    ]
    llm.chat(messages)
    request = base.requests[-1]
    assert request.messages is not None
    assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "user"]
    with pytest.raises(PromptError, match="text"):
        llm.chat([ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://127.0.0.1/x.png")])])


def test_predict_with_a_prompt_template_uses_chat_and_system_prompt() -> None:
    llm, base = _llm(system_prompt="You are terse.")
    answer = llm.predict(PromptTemplate("Context: {context}\nQuestion: {q}"), context=LONG, q="answer?")
    assert answer == "Forty-two."
    request = base.requests[-1]
    assert request.messages is not None
    assert request.messages[0] == {"role": "system", "content": "You are terse."}


def test_callback_manager_sees_llm_events() -> None:
    debug = LlamaDebugHandler()
    llm, _ = _llm(callback_manager=CallbackManager([debug]))
    llm.chat(_messages())
    llm.complete(LONG)
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == 2
    end = pairs[0][1].payload
    assert end is not None and end["response"].additional_kwargs[STATS_KEY]["pruned"] is True


def test_construction_errors() -> None:
    with pytest.raises(ConfigurationError, match="needs an engine"):
        SpecPrefillLLM()
    with pytest.raises(ConfigurationError, match="SpecPrefillEngine"):
        SpecPrefillLLM("not an engine")  # type: ignore[arg-type]
    engine = SpecPrefillEngine(hot_word_speculator(), answering_backend())
    with pytest.raises(ConfigurationError, match="on the engine"):
        SpecPrefillLLM(engine, base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigurationError, match="invalid SpecPrefillLLM"):
        SpecPrefillLLM(engine, temperature=-1)
    with pytest.raises(ConfigurationError, match="invalid SpecPrefillLLM"):
        SpecPrefillLLM(engine, keep_rate=2.0)


def test_base_url_builds_an_openai_backend_without_network() -> None:
    pytest.importorskip("openai")
    from specprefill.backends.openai import OpenAIBackend

    llm = SpecPrefillLLM(
        base_url="http://127.0.0.1:9/v1",
        model="served",
        api_key="sk-secret-123",
        speculator=hot_word_speculator(),
        config=SpecPrefillConfig(keep_rate=0.4),
    )
    assert isinstance(llm.engine.base, OpenAIBackend)
    assert llm.engine.base.base_url == "http://127.0.0.1:9/v1"
    assert llm.engine.config.keep_rate == 0.4
    assert llm.metadata.model_name == "served"
    assert "sk-secret-123" not in repr(llm.to_payload()) + repr(llm.to_dict())
    lazy = SpecPrefillLLM(base_url="http://127.0.0.1:9/v1", model="served", speculator="smollm2-135m")
    assert lazy.engine.speculator_name == "smollm2-135m"
    assert lazy.engine.base.request_timeout == 600.0 and lazy.engine.base.timeout == 60.0  # type: ignore[attr-defined]
    bounded = SpecPrefillLLM(
        base_url="http://127.0.0.1:9/v1",
        model="served",
        timeout=5.0,
        request_timeout=20.0,
        max_retries=0,
        speculator="smollm2-135m",
    )
    base = bounded.engine.base
    assert (base.timeout, base.request_timeout, base.max_retries) == (5.0, 20.0, 0)  # type: ignore[attr-defined]
