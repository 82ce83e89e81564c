"""ChatSpecPrefill without a model: a letter-level fake speculator and a scripted, natively async base."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

import langchain_specprefill
from fakes import FakeBackend, FakeSpeculator, fake_engine, scripted_backend
from langchain_specprefill import ChatSpecPrefill, PackagedEmbeddings, SpecPrefillDocumentCompressor
from langchain_specprefill.chat_models import json_instruction, to_chat_dicts
from specprefill.errors import PromptError

LONG = [SystemMessage("Be brief."), HumanMessage("filler words that do not matter. " * 12 + "Question: why?")]


class Joke(BaseModel):
    setup: str
    punchline: str


def chat(reply: str = "Hello there friend", **kwargs: Any) -> ChatSpecPrefill:
    return ChatSpecPrefill(engine=fake_engine(reply), **kwargs)


def backend(model: ChatSpecPrefill) -> FakeBackend:
    assert model.engine is not None
    base = model.engine.base
    assert isinstance(base, FakeBackend)
    return base


# --- package surface ---------------------------------------------------------------------------------------
def test_public_names() -> None:
    assert langchain_specprefill.__all__ == ["ChatSpecPrefill", "PackagedEmbeddings", "SpecPrefillDocumentCompressor"]
    assert langchain_specprefill.ChatSpecPrefill is ChatSpecPrefill
    assert langchain_specprefill.PackagedEmbeddings is PackagedEmbeddings
    assert langchain_specprefill.SpecPrefillDocumentCompressor is SpecPrefillDocumentCompressor
    for module in ("chat_models", "document_compressors", "embeddings"):
        mod = __import__(f"langchain_specprefill.{module}", fromlist=["__all__"])
        assert all(hasattr(mod, name) for name in mod.__all__)


def test_import_and_construction_load_no_model() -> None:
    code = (
        "import sys\n"
        "from langchain_specprefill import ChatSpecPrefill, SpecPrefillDocumentCompressor, PackagedEmbeddings\n"
        "ChatSpecPrefill(keep_rate=0.2); SpecPrefillDocumentCompressor(); PackagedEmbeddings()\n"
        "ChatSpecPrefill(base_url='http://127.0.0.1:9/v1', model='m')\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]


def test_invalid_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="keep_rate"):
        ChatSpecPrefill(keep_rate=1.5)
    with pytest.raises(ValueError, match="not both"):
        ChatSpecPrefill(engine=fake_engine(), base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError):
        SpecPrefillDocumentCompressor(keep_rate=0)


def test_identity_and_ls_params() -> None:
    model = ChatSpecPrefill(model="smollm2-135m", max_tokens=7, temperature=0.5, stop=["x"])
    params = model._get_ls_params()
    assert params == {
        "ls_provider": "specprefill",
        "ls_model_name": "smollm2-135m",
        "ls_model_type": "chat",
        "ls_temperature": 0.5,
        "ls_max_tokens": 7,
        "ls_stop": ["x"],
    }
    assert model._get_ls_params(model="other", max_tokens=3)["ls_model_name"] == "other"
    assert model._llm_type == "specprefill-chat"
    ident = model._identifying_params
    assert ident["model_name"] == "smollm2-135m" and ident["speculator"] == "smollm2-135m"
    assert chat()._identifying_params["model_name"] == "scripted-base"
    assert ChatSpecPrefill(model_name="a", max_new_tokens=3, stop_sequences=["s"]).max_tokens == 3


# --- invoke / stream -----------------------------------------------------------------------------------------
def test_invoke_reports_usage_and_pruning_stats() -> None:
    model = chat()
    msg = model.invoke(LONG)
    assert isinstance(msg, AIMessage) and msg.content == "Hello there friend"
    block = msg.response_metadata["specprefill"]
    assert msg.response_metadata["model_name"] == "scripted-base"
    assert msg.response_metadata["finish_reason"] == "stop"
    assert block["pruned"] and block["tokens_kept"] < block["tokens_in"]
    assert block["keep_ratio"] == pytest.approx(block["tokens_kept"] / block["tokens_in"])
    assert {"speculator_seconds", "fallback", "positions", "ttft_seconds"} <= set(block)
    request = backend(model).requests[-1]
    assert request.token_ids is not None and len(request.token_ids) == block["tokens_kept"]
    kept = block["tokens_kept"]
    assert msg.usage_metadata == {"input_tokens": kept, "output_tokens": 3, "total_tokens": kept + 3}


def test_per_call_and_bound_overrides() -> None:
    model = chat(keep_rate=0.5)
    half = model.invoke(LONG).response_metadata["specprefill"]
    less = model.invoke(LONG, keep_rate=0.1).response_metadata["specprefill"]
    bound = model.bind(keep_rate=0.1, max_tokens=2).invoke(LONG)
    assert less["tokens_kept"] < half["tokens_kept"]
    assert bound.response_metadata["specprefill"]["tokens_kept"] == less["tokens_kept"]
    assert bound.content == "Hello there" and bound.response_metadata["finish_reason"] == "length"
    assert backend(model).params[-1].max_new_tokens == 2


def test_generation_kwargs_and_stop() -> None:
    model = chat(stop=["friend"], temperature=0.7, top_p=0.9, seed=3, max_tokens=9)
    assert model.invoke(LONG).content == "Hello there "
    params = backend(model).params[-1]
    assert (params.stop, params.temperature, params.top_p, params.seed, params.max_new_tokens) == (
        ("friend",),
        0.7,
        0.9,
        3,
        9,
    )
    assert model.invoke(LONG, stop=["there"]).content == "Hello "  # a call's stop replaces the default
    model.invoke(LONG, temperature=0, max_new_tokens=4, seed=None)
    params = backend(model).params[-1]
    assert (params.temperature, params.max_new_tokens) == (0.0, 4)


def test_unknown_kwarg_is_rejected_with_the_accepted_names() -> None:
    with pytest.raises(TypeError, match="keep_rate"):
        chat().invoke(LONG, keep_ratio=0.2)


def test_stream_yields_pieces_and_a_last_chunk_with_metadata() -> None:
    model = chat()
    chunks = list(model.stream(LONG))
    assert [c.content for c in chunks] == ["Hello", " there", " friend"]
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert [c.chunk_position for c in chunks] == [None, None, "last"]
    assert all(c.usage_metadata is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.usage_metadata is not None and last.usage_metadata["output_tokens"] == 3
    assert last.response_metadata["specprefill"]["pruned"]
    full = chunks[0] + chunks[1] + chunks[2]
    assert full.content == "Hello there friend" and full.response_metadata["model_name"] == "scripted-base"


def test_callbacks_see_every_token() -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    list(chat().stream(LONG, config={"callbacks": [handler]}))
    assert handler.tokens == ["Hello", " there", " friend"]
    handler.tokens.clear()
    msg = chat(streaming=True).invoke(LONG, config={"callbacks": [handler]})
    assert handler.tokens == ["Hello", " there", " friend"] and msg.usage_metadata is not None


async def test_async_paths_use_the_native_async_backend() -> None:
    model = chat()
    msg = await model.ainvoke(LONG)
    chunks = [c async for c in model.astream(LONG)]
    assert msg.content == "Hello there friend"
    assert "".join(str(c.content) for c in chunks) == "Hello there friend"
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None
    assert backend(model).async_calls == 2


async def test_concurrent_ainvoke_keeps_stats_apart() -> None:
    model = ChatSpecPrefill(engine=fake_engine(delay=0.01))
    short = [HumanMessage("tiny filler. " * 12 + "Why?")]
    a, b = await asyncio.gather(model.ainvoke(LONG, keep_rate=0.1), model.ainvoke(short, keep_rate=0.9))
    sa, sb = a.response_metadata["specprefill"], b.response_metadata["specprefill"]
    assert sa == model.invoke(LONG, keep_rate=0.1).response_metadata["specprefill"] | {
        k: sa[k] for k in sa if k.endswith("seconds")
    }
    assert sb["tokens_in"] != sa["tokens_in"] and sb["keep_ratio"] > sa["keep_ratio"]
    assert a.usage_metadata is not None and a.usage_metadata["input_tokens"] == sa["tokens_kept"]
    assert b.usage_metadata is not None and b.usage_metadata["input_tokens"] == sb["tokens_kept"]


def test_batch() -> None:
    results = chat().batch([LONG, "hi there"], keep_rate=0.2)
    assert [r.content for r in results] == ["Hello there friend"] * 2
    assert (
        results[0].response_metadata["specprefill"]["tokens_in"]
        != results[1].response_metadata["specprefill"]["tokens_in"]
    )


# --- messages ------------------------------------------------------------------------------------------------
def test_messages_become_chat_dicts() -> None:
    tool = ToolMessage("42", tool_call_id="c1")
    dicts = to_chat_dicts([SystemMessage("s"), HumanMessage("h", name="ann"), AIMessage("a"), tool])
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "tool"]
    assert dicts[1]["name"] == "ann" and dicts[3]["tool_call_id"] == "c1"
    parts = to_chat_dicts([HumanMessage(content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])])
    assert parts[0]["content"] == "a\nb"


def test_image_content_is_refused_clearly() -> None:
    image = HumanMessage(content=[{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": "x"}}])
    with pytest.raises(PromptError, match="only text parts"):
        chat().invoke([image])


# --- model override ------------------------------------------------------------------------------------------
def test_model_override_needs_a_server() -> None:
    with pytest.raises(ValueError, match="base_url"):
        chat().invoke(LONG, model="another")
    remote = ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", model="served", speculator=fake_engine().speculator)
    engine = remote._engine_for("other")
    assert engine.base.model == "other"  # type: ignore[attr-defined]
    assert remote._engine_for("other") is engine and remote._engine_for("served") is remote.get_engine()
    assert engine.speculator is remote.get_engine().speculator


def test_per_model_engines_are_an_lru_and_timeouts_reach_the_backend() -> None:
    remote = ChatSpecPrefill(
        base_url="http://127.0.0.1:9/v1", model="served", speculator=fake_engine().speculator,
        timeout=7.0, request_timeout=30.0, max_retries=1, max_cached_engines=2,
    )  # fmt: skip
    first = remote._engine_for("a")
    remote._engine_for("b")
    assert remote._engine_for("a") is first  # "a" is now the most recently used
    remote._engine_for("c")  # evicts "b", the least recently used
    assert len(remote._extra_engines) == 2
    assert remote._engine_for("a") is first
    for engine in (first, remote.get_engine()):
        base = engine.base
        assert (base.timeout, base.request_timeout, base.max_retries) == (7.0, 30.0, 1)  # type: ignore[attr-defined]
    many = [remote._engine_for(f"m{i}") for i in range(50)]
    assert len(remote._extra_engines) == 2 and len({id(e) for e in many}) == 50
    with pytest.raises(ValueError, match="max_cached_engines"):
        ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", max_cached_engines=0)
    with pytest.raises(ValueError, match="request_timeout"):
        ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", request_timeout=0)
    assert ChatSpecPrefill(base_url="http://127.0.0.1:9/v1", request_timeout=None).request_timeout is None


def test_max_tokens_alias_and_typed_unknown_argument() -> None:
    from specprefill import UnknownArgumentError

    model = chat()
    model.invoke(LONG, max_tokens=2)
    assert model.get_engine().base.params[-1].max_new_tokens == 2  # type: ignore[attr-defined]
    model.invoke(LONG, max_new_tokens=3)
    assert model.get_engine().base.params[-1].max_new_tokens == 3  # type: ignore[attr-defined]
    with pytest.raises(UnknownArgumentError, match="tools"):
        model.invoke(LONG, tools=[])


# --- tools and structured output --------------------------------------------------------------------------
def test_bind_tools_is_refused_with_a_reason() -> None:
    with pytest.raises(NotImplementedError, match="tool calling"):
        chat().bind_tools([Joke])


def test_structured_output_pydantic_dict_and_raw() -> None:
    reply = 'Sure: ```json\n{"setup": "Why?", "punchline": "Because."}\n```'
    model = chat(reply, max_tokens=50)
    joke = model.with_structured_output(Joke).invoke(LONG)
    assert joke == Joke(setup="Why?", punchline="Because.")
    system = backend(model).requests[-1].messages[0]  # type: ignore[index]
    assert system["role"] == "system" and "JSON schema" in system["content"] and '"punchline"' in system["content"]
    assert system["content"].startswith("Be brief.")
    as_dict = model.with_structured_output(Joke.model_json_schema(), method="json_mode").invoke(LONG)
    assert as_dict == {"setup": "Why?", "punchline": "Because."}
    assert "single JSON object and nothing else" in backend(model).requests[-1].messages[0]["content"]  # type: ignore[index]
    raw = model.with_structured_output(Joke, include_raw=True, method="function_calling").invoke(LONG)
    assert isinstance(raw, dict) and raw["parsed"] == joke and raw["parsing_error"] is None
    assert isinstance(raw["raw"], AIMessage)
    streamed = list(model.with_structured_output(Joke).stream(LONG))
    assert streamed[-1] == joke


def test_structured_output_reports_bad_json() -> None:
    model = chat("not json at all", max_tokens=50)
    raw = model.with_structured_output(Joke, include_raw=True).invoke(LONG)
    assert raw["parsed"] is None and raw["parsing_error"] is not None  # type: ignore[index]
    with pytest.raises(ValueError, match="method"):
        model.with_structured_output(Joke, method="tools")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema"):
        model.with_structured_output(None)
    assert json_instruction({"type": "json_object"}).startswith("Respond with a single JSON object")
    with pytest.raises(ValueError, match="response_format"):
        json_instruction({"type": "text"})


# --- protection and fallback ---------------------------------------------------------------------------------
def test_system_prompt_and_question_survive_pruning() -> None:
    model = chat(keep_rate=0.1)
    msg = model.invoke(LONG)
    assert msg.response_metadata["specprefill"]["pruned"]
    sent = backend(model).requests[-1].messages
    assert sent is not None and sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1]["content"].endswith("Question: why?") and len(sent[-1]["content"]) < len(str(LONG[1].content))


def test_speculator_failure_falls_back_to_the_full_prompt() -> None:
    from specprefill.engine import SpecPrefillEngine

    broken = FakeSpeculator(name="letter-spec", ramp=None, fail=RuntimeError("out of memory"))
    engine = SpecPrefillEngine(broken, scripted_backend(), fake_engine().config)
    msg = ChatSpecPrefill(engine=engine).invoke(LONG)
    block = msg.response_metadata["specprefill"]
    assert block["fallback"] and "out of memory" in block["fallback_reason"] and not block["pruned"]
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == block["tokens_in"]
