"""OpenAIBackend against a fault-injecting OpenAI-compatible server on 127.0.0.1.

Every case ends in success with the right content or in a typed ``SpecPrefillError``, within the deadline.
The server is real HTTP (``tests/local_openai_server.py``); behind it a scripted character-level model
answers (no model weights), and the engine tests use a character-level fake speculator whose tokenizer the
server shares, so the token-id path and the position probe are exercised.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fakes import FakeSpeculator
from local_openai_server import Fault, LocalOpenAIServer
from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, StreamChunk
from specprefill.engine import SpecPrefillEngine
from specprefill.errors import BackendError, SpecPrefillError

pytest.importorskip("openai", reason='needs the openai client: pip install "specprefill[openai]"')

MODEL = "char-model"
REPLY = "Hello world"
PARAMS = GenerationParams(max_new_tokens=8)
REQUEST = BaseRequest(text="Say hello.")
COMPLETIONS = "/v1/completions"


class CharTokenizer:
    """One token per character, like :class:`fakes.FakeSpeculator`."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


class ScriptedCharModel(BaseBackend):
    """Answers :data:`REPLY` in two pieces, finish ``stop`` (what the server serves when no fault is due)."""

    kind = "scripted"

    def __init__(self) -> None:
        self.model_name = MODEL
        self.tokenizer = CharTokenizer()

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        yield StreamChunk("Hello")
        output = BaseOutput(text=REPLY, finish_reason="stop", prompt_tokens=3, completion_tokens=2, model=MODEL)
        yield StreamChunk(" world", output=output)


@pytest.fixture
def server() -> Iterator[LocalOpenAIServer]:
    with LocalOpenAIServer(ScriptedCharModel(), MODEL, restores_positions=True) as srv:
        yield srv


def backend(srv: LocalOpenAIServer, **kwargs: Any) -> Any:
    from specprefill.backends.openai import OpenAIBackend

    options: dict[str, Any] = {"timeout": 5.0, "request_timeout": 10.0, "max_retries": 0, **kwargs}
    return OpenAIBackend(MODEL, base_url=srv.base_url, **options)


def timed(fn: Any) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        return fn(), time.monotonic() - start
    except SpecPrefillError as exc:
        return exc, time.monotonic() - start


def test_a_healthy_server_answers(server: LocalOpenAIServer) -> None:
    out = backend(server).generate(REQUEST, PARAMS)
    assert out.text == REPLY and out.finish_reason == "stop" and out.started_at is not None


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault("truncate"), "without a finish reason"),
        (Fault("bad_json_stream"), "malformed event"),
        (Fault("bad_json"), "malformed JSON"),
        (Fault("html"), "text/html.*nginx"),
        (Fault("empty"), "empty application/json reply"),
    ],
)
def test_broken_replies_raise_saying_what_was_sent(server: LocalOpenAIServer, fault: Fault, message: str) -> None:
    b = backend(server)
    server.inject(COMPLETIONS, fault)
    result, seconds = timed(lambda: b.generate(REQUEST, PARAMS))
    assert isinstance(result, BackendError), result
    assert seconds < 5
    assert re.search(message, str(result)), str(result)
    assert b.generate(REQUEST, PARAMS).text == REPLY  # the next call is served normally


@pytest.mark.parametrize("kind", ["truncate", "bad_json_stream", "bad_json", "html", "empty"])
async def test_broken_replies_raise_async(server: LocalOpenAIServer, kind: str) -> None:
    b = backend(server)
    server.inject(COMPLETIONS, Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(BackendError):
        await b.agenerate(REQUEST, PARAMS)
    assert (await b.agenerate(REQUEST, PARAMS)).text == REPLY


def test_truncated_text_never_passes_as_stop(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("truncate", text="Hello wor"))
    chunks: list[str] = []
    with pytest.raises(BackendError, match="cut off"):
        for chunk in backend(server).stream(REQUEST, PARAMS):
            chunks.append(chunk.text)
    assert "".join(chunks) == "Hello wor"  # what arrived was shown, but no output claims it finished


@pytest.mark.parametrize("kind", ["trickle", "hang"])
def test_deadline_cuts_a_trickle_and_a_hang(server: LocalOpenAIServer, kind: str) -> None:
    server.inject(COMPLETIONS, Fault(kind, seconds=6.0))  # type: ignore[arg-type]
    b = backend(server, timeout=5.0, request_timeout=1.0)
    result, seconds = timed(lambda: b.generate(REQUEST, PARAMS))
    assert isinstance(result, BackendError) and "request_timeout=1.0" in str(result), result
    assert 0.9 <= seconds < 5.0  # cut at the 1 s deadline, not after the 6 s fault


@pytest.mark.parametrize("kind", ["trickle", "hang"])
async def test_deadline_cuts_a_trickle_and_a_hang_async(server: LocalOpenAIServer, kind: str) -> None:
    server.inject(COMPLETIONS, Fault(kind, seconds=6.0))  # type: ignore[arg-type]
    b = backend(server, timeout=5.0, request_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"request_timeout=1\.0"):
        await b.agenerate(REQUEST, PARAMS)
    assert 0.9 <= time.monotonic() - start < 5.0  # cut at the 1 s deadline, not after the 6 s fault


def test_silence_limit_applies_per_attempt(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("hang", seconds=6.0))
    b = backend(server, timeout=0.5, request_timeout=None)
    result, seconds = timed(lambda: b.generate(REQUEST, PARAMS))
    assert isinstance(result, BackendError) and "timed out" in str(result)
    assert seconds < 5.0  # cut by the 0.5 s silence limit, not after the 6 s hang


def test_500_is_retried_then_succeeds(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("status", status=500), Fault("status", status=503))
    out = backend(server, max_retries=2).generate(REQUEST, PARAMS)
    assert out.text == REPLY
    assert server.paths().count(COMPLETIONS) == 3


def test_429_waits_for_retry_after(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("status", status=429, headers={"Retry-After": "1"}))
    result, seconds = timed(lambda: backend(server, max_retries=1).generate(REQUEST, PARAMS))
    assert not isinstance(result, Exception) and result.text == REPLY
    assert seconds >= 0.9


async def test_429_retry_after_past_the_deadline_fails_at_once(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("status", status=429, headers={"Retry-After": "30"}))
    b = backend(server, max_retries=3, request_timeout=2.0)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"429.*retry after 30\.0s would pass request_timeout=2\.0"):
        await b.agenerate(REQUEST, PARAMS)
    assert time.monotonic() - start < 2.0  # refused before the 2 s deadline, without waiting


def test_client_errors_are_not_retried(server: LocalOpenAIServer) -> None:
    server.inject(COMPLETIONS, Fault("status", status=400))
    with pytest.raises(BackendError, match="answered 400"):
        backend(server, max_retries=3).generate(REQUEST, PARAMS)
    assert server.paths().count(COMPLETIONS) == 1


# --- probes: only definite answers are cached ---------------------------------------------------------------
NOTES = "The ferry leaves at nine. The museum opens at ten. The bridge was built in 1894. " * 3
CONFIG = SpecPrefillConfig(keep_rate=0.3, chunk_size=8, min_prompt_tokens=0)


def test_500_on_probes_then_recovery_gets_token_ids_and_original_positions(server: LocalOpenAIServer) -> None:
    b = backend(server, probe_retry_seconds=0.3)
    engine = SpecPrefillEngine(FakeSpeculator(), b, CONFIG)
    server.inject("/tokenize", Fault("status", status=500))
    first = engine.generate(NOTES, max_new_tokens=4)
    assert first.text == REPLY and first.stats.positions == "compacted"
    assert server.requests[-1][1]["prompt"] == first.prune.text  # the text path, for now
    again = engine.generate(NOTES, max_new_tokens=4)  # inside the backoff: no new probe
    assert again.stats.positions == "compacted" and server.paths().count("/tokenize") == 1
    time.sleep(0.35)
    server.inject(COMPLETIONS, Fault("status", status=502))  # the position probe fails once too
    third = engine.generate(NOTES, max_new_tokens=4)
    assert server.requests[-1][1]["prompt"] == third.prune.kept_token_ids  # token ids now
    assert third.stats.positions == "compacted" and b.restore_positions is None  # probe failure is not a "no"
    time.sleep(0.35)
    fourth = engine.generate(NOTES, max_new_tokens=4)
    assert fourth.stats.positions == "original" and b.restore_positions is True
    body = server.requests[-1][1]
    assert body["prompt"] == fourth.prune.kept_token_ids and "vllm_xargs" in body and body.get("cache_salt")


def test_404_is_a_definite_no_and_cached(server: LocalOpenAIServer) -> None:
    server.tokenize = False
    b = backend(server)
    speculator = FakeSpeculator()
    assert b.same_tokenizer(speculator) is False
    assert b.same_tokenizer(speculator) is False
    assert server.paths() == ["/tokenize", "/v1/tokenize"]  # both candidate URLs, once


def test_a_stock_server_is_a_definite_no_for_positions(server: LocalOpenAIServer) -> None:
    server.restores_positions = False
    b = backend(server)
    out = b.generate(BaseRequest(token_ids=[72, 105, 33], position_ids=[0, 5, 6], original_length=9), PARAMS)
    assert out.positions == "compacted" and b.restore_positions is False


def test_refused_positions_are_resent_and_reported_compacted(server: LocalOpenAIServer) -> None:
    b = backend(server, restore_positions=True)
    request = BaseRequest(token_ids=[72, 105, 33], position_ids=[0, 5, 6], original_length=9)
    server.inject(COMPLETIONS, Fault("status", status=400))
    out = b.generate(request, PARAMS)
    assert out.text == REPLY and out.positions == "compacted" and b.restore_positions is False
    first, second = (body for path, body in server.requests if path == COMPLETIONS)
    assert "vllm_xargs" in first and "vllm_xargs" not in second and second["prompt"] == [72, 105, 33]
