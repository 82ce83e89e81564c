"""OpenAIBackend through the official ``openai`` client against a real local OpenAI-compatible server.

The server (``tests/local_openai_server.py``) listens on 127.0.0.1 and answers with the real embedded model.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import needs_model
from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseRequest, GenerationParams
from specprefill.errors import BackendError, PromptError

pytest.importorskip("openai", reason='needs the openai client: pip install "specprefill[openai]"')

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
NOTES = [
    "The harbour office opens at seven and closes at five, except on public holidays.",
    "Ferries to the northern islands leave every ninety minutes; the last one departs at 21:40.",
    "In 1894 the lighthouse keeper, Ada Morrow, recorded the longest storm in the town's history.",
    "Fishing licences cost forty-two crowns a season and must be shown to the wardens.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def local_base(speculator: Any) -> Any:
    from specprefill.backends.transformers import TransformersBackend

    return TransformersBackend(speculator.model, speculator.tokenizer, name=MODEL)


@pytest.fixture(scope="module")
def server(local_base: Any) -> Iterator[Any]:
    from local_openai_server import LocalOpenAIServer

    with LocalOpenAIServer(local_base, MODEL) as srv:
        yield srv


@pytest.fixture(scope="module")
def server_without_tokenize(local_base: Any) -> Iterator[Any]:
    from local_openai_server import LocalOpenAIServer

    with LocalOpenAIServer(local_base, MODEL, tokenize=False) as srv:
        yield srv


def backend(srv: Any, **kwargs: Any) -> Any:
    from specprefill.backends.openai import OpenAIBackend

    return OpenAIBackend(kwargs.pop("model", MODEL), base_url=srv.base_url, max_retries=0, timeout=120, **kwargs)


# --- hermetic -----------------------------------------------------------------------------------------------
def test_tokenize_urls_and_defaults(monkeypatch: pytest.MonkeyPatch):
    from specprefill.backends.openai import OpenAIBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    b = OpenAIBackend("m", base_url="http://example.invalid:8000/v1/")
    assert b.base_url == "http://example.invalid:8000/v1"
    assert b.tokenize_urls() == ["http://example.invalid:8000/tokenize", "http://example.invalid:8000/v1/tokenize"]
    assert b.api_key == "EMPTY"
    assert OpenAIBackend("m", base_url="http://h/api").tokenize_urls() == ["http://h/api/tokenize"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert OpenAIBackend("m", base_url="http://h/v1").api_key == "sk-test"
    forced = OpenAIBackend("m", base_url="http://h/v1", same_tokenizer=True)
    assert forced.same_tokenizer(object()) is True  # no request made
    assert forced.restored_positions_body(BaseRequest(token_ids=[1], position_ids=[5], original_length=9)) is None


def test_empty_requests_are_refused_locally():
    from specprefill.backends.openai import OpenAIBackend

    b = OpenAIBackend("m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(PromptError):
        b.generate(BaseRequest(token_ids=[]), GenerationParams(max_new_tokens=2))
    with pytest.raises(PromptError):
        b.generate(BaseRequest(), GenerationParams(max_new_tokens=2))


@pytest.mark.integration
def test_server_down_names_the_url():
    from specprefill.backends.openai import OpenAIBackend

    url = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(MODEL, base_url=url, max_retries=0, timeout=5)
    with pytest.raises(BackendError, match=r"cannot reach .*127\.0\.0\.1") as info:
        b.generate(BaseRequest(text="hello"), GenerationParams(max_new_tokens=2))
    assert url in str(info.value) and "running" in str(info.value)
    # the tokenizer probe treats an unreachable server as "different tokenizer" instead of failing
    assert b.same_tokenizer(type("S", (), {"encode": lambda self, t: ([1], [(0, 1)])})()) is False
    unnamed = OpenAIBackend(base_url=url, max_retries=0, timeout=5)
    with pytest.raises(BackendError, match=url):
        _ = unnamed.model


@pytest.mark.integration
async def test_server_down_async():
    from specprefill.backends.openai import OpenAIBackend

    url = f"http://127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(MODEL, base_url=url, max_retries=0, timeout=5)
    with pytest.raises(BackendError, match="cannot reach"):
        await b.agenerate(BaseRequest(text="hello"), GenerationParams(max_new_tokens=2))


# --- against the local server with the real model -----------------------------------------------------------
@needs_model
@pytest.mark.integration
def test_probe_detects_the_same_tokenizer(server: Any, speculator: Any):
    b = backend(server)
    assert b.tokenize("hello world") == speculator.encode("hello world")[0]
    before = len(server.requests)
    assert b.same_tokenizer(speculator) is True
    assert b.same_tokenizer(speculator) is True  # cached: one probe only
    probes = [p for p, _ in server.requests[before:] if p == "/tokenize"]
    assert probes == ["/tokenize"]
    body = dict(server.requests[before:])["/tokenize"]
    assert body["add_special_tokens"] is False and body["model"] == MODEL


@needs_model
@pytest.mark.integration
def test_no_tokenize_endpoint_means_other_tokenizer(server_without_tokenize: Any, speculator: Any):
    b = backend(server_without_tokenize)
    assert b.same_tokenizer(speculator) is False
    assert b.tokenize("x") is None


@needs_model
@pytest.mark.integration
def test_model_is_discovered_from_the_server(server: Any):
    b = backend(server, model=None)
    assert b.model == MODEL


@needs_model
@pytest.mark.integration
def test_token_ids_go_to_completions_and_match_the_local_model(server: Any, speculator: Any, local_base: Any):
    ids = speculator.encode_with_specials("The capital of France is")[0]
    request = BaseRequest(token_ids=ids, position_ids=list(range(len(ids))), original_length=len(ids))
    params = GenerationParams(max_new_tokens=6)
    b = backend(server)
    before = len(server.requests)
    out = b.generate(request, params)
    path, body = server.requests[before]
    assert path == "/v1/completions" and body["prompt"] == ids and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    local = local_base.generate(request, params)
    assert out.text == local.text
    assert out.prompt_tokens == len(ids) and out.completion_tokens == local.completion_tokens
    assert out.positions == "full" and out.model == MODEL
    assert 0 < out.prefill_seconds <= out.total_seconds


@needs_model
@pytest.mark.integration
def test_pruned_token_ids_are_compacted_by_a_stock_server(server: Any):
    b = backend(server)
    request = BaseRequest(token_ids=[1, 504, 3575], position_ids=[0, 40, 41], original_length=50)
    out = b.generate(request, GenerationParams(max_new_tokens=2))
    assert out.positions == "compacted" and out.prompt_tokens == 3


@needs_model
@pytest.mark.integration
def test_chat_path_streams_with_usage(server: Any, local_base: Any):
    b = backend(server, same_tokenizer=False)
    before = len(server.requests)
    chunks = list(b.stream(BaseRequest(messages=QUESTION), GenerationParams(max_new_tokens=12)))
    path, body = server.requests[before]
    assert path == "/v1/chat/completions" and body["messages"] == QUESTION
    out = chunks[-1].output
    assert out is not None and all(c.output is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == out.text
    assert "Paris" in out.text and out.finish_reason == "stop"
    local = local_base.generate(BaseRequest(messages=QUESTION), GenerationParams(max_new_tokens=12))
    assert out.text == local.text and out.prompt_tokens == local.prompt_tokens
    assert out.completion_tokens == local.completion_tokens and out.positions == "compacted"


@needs_model
@pytest.mark.integration
def test_text_prompt_and_stop_strings(server: Any):
    b = backend(server)
    out = b.generate(BaseRequest(messages=QUESTION), GenerationParams(max_new_tokens=12, stop=("Paris",)))
    assert out.finish_reason == "stop" and "Paris" not in out.text
    before = len(server.requests)
    out = b.generate(BaseRequest(text="Once upon a time"), GenerationParams(max_new_tokens=4))
    assert server.requests[before][1]["prompt"] == "Once upon a time"
    assert out.finish_reason == "length" and out.completion_tokens == 4


@needs_model
@pytest.mark.integration
async def test_async_generate_and_stream(server: Any):
    b = backend(server, same_tokenizer=False)
    out = await b.agenerate(BaseRequest(messages=QUESTION), GenerationParams(max_new_tokens=12))
    assert "Paris" in out.text
    chunks = [c async for c in b.astream(BaseRequest(messages=QUESTION), GenerationParams(max_new_tokens=12))]
    assert "".join(c.text for c in chunks) == chunks[-1].output.text == out.text


@needs_model
@pytest.mark.integration
def test_unknown_model_is_a_helpful_error(server: Any):
    b = backend(server, model="no-such-model")
    with pytest.raises(BackendError, match=r"404.*no-such-model"):
        b.generate(BaseRequest(text="hi"), GenerationParams(max_new_tokens=2))


@needs_model
@pytest.mark.integration
def test_engine_over_openai_same_and_other_tokenizer(server: Any, speculator: Any):
    from specprefill.engine import SpecPrefillEngine

    notes = "\n".join(f"{i}. {NOTES[i % len(NOTES)]}" for i in range(12))
    messages = [{"role": "user", "content": notes + "\nWho recorded the longest storm?"}]
    config = SpecPrefillConfig(keep_rate=0.3, min_prompt_tokens=0)

    same = SpecPrefillEngine(speculator, backend(server), config)
    before = len(server.requests)
    result = same.generate(messages, max_new_tokens=6)
    sent = [b for p, b in server.requests[before:] if p == "/v1/completions"]
    assert sent and sent[-1]["prompt"] == result.prune.kept_token_ids
    assert result.stats.pruned and result.stats.positions == "compacted"
    assert result.stats.base_prompt_tokens == result.stats.tokens_kept

    other = SpecPrefillEngine(speculator, backend(server, same_tokenizer=False), config)
    before = len(server.requests)
    chunks = list(other.stream(messages, max_new_tokens=6))
    path, body = server.requests[before]
    assert path == "/v1/chat/completions" and body["messages"] == chunks[-1].result.prune.messages
    assert chunks[-1].result.stats.positions == "compacted"
