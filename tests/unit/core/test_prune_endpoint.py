"""The prune endpoint (specprefill.server.endpoint): the handler with a fake service, and the ASGI middleware."""

from __future__ import annotations

import json
import logging
import types
from typing import Any

import httpx
import numpy as np
import pytest

from fakes import BosSpeculator, FakeSpeculator
from remote_fakes import FakeService, call_asgi, middleware
from specprefill import SpecPrefillConfig
from specprefill.prompt.messages import plain_chat
from specprefill.scoring.select import select_scored
from specprefill.server.endpoint import PRUNE_PATH, PruneEndpointMiddleware, handle_prune
from specprefill.wire.prune import PruneReply

# the paper's fixed grid: the kept spans below are worked out on it, not on the default sentence grid
CONFIG = {"chunk_size": 4, "lookahead": 1, "min_prompt_tokens": 0, "gap_marker": "|", "segment_by": "none"}
CFG = SpecPrefillConfig(**CONFIG)
TEXT = "some filler text here. The KEY FACT is HERE. more filler text follows and ends."


def service(**kwargs: Any) -> FakeService:
    return FakeService(BosSpeculator(template=plain_chat), config=CONFIG, **kwargs)


async def post(app: Any, body: Any, *, headers: dict[str, str] | None = None, chunks: int = 1) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = httpx.Request("POST", "http://test" + PRUNE_PATH, content=content, headers=headers)
    return await call_asgi(app, request, chunks=chunks)


# --- the handler ----------------------------------------------------------------------------------------
async def test_text_prompt_prunes_exactly_as_speculator_prune() -> None:
    svc = service()
    status, body = await handle_prune({"prompt": TEXT, "keep_rate": 0.25}, svc)
    expected = BosSpeculator(template=plain_chat).prune(TEXT, CFG, keep_rate=0.25)
    assert status == 200
    assert body["text"] == expected.text
    assert body["kept_spans"] == [list(s) for s in expected.kept_spans]
    assert "KEY FACT" in body["text"] and "HERE" in body["text"] and len(body["text"]) < len(TEXT)
    assert body["stats"]["tokens_in"] == expected.stats.tokens_in
    assert body["stats"]["tokens_kept"] == expected.stats.tokens_kept
    assert body["stats"]["pruned"] is True and body["stats"]["fallback"] is False
    assert body["stats"]["positions"] == "none"
    assert body["scored"] is None
    assert svc.tokens == [len(TEXT) // 4 + 1]


async def test_returned_scores_select_to_the_same_kept_spans() -> None:
    status, body = await handle_prune({"prompt": TEXT, "keep_rate": 0.25, "return_scores": True}, service())
    reply = PruneReply.from_wire(json.loads(json.dumps(body)))
    assert status == 200 and reply.scored is not None
    kept = select_scored(reply.scored, CFG.with_overrides(keep_rate=0.25))
    local = BosSpeculator(template=plain_chat).build_result(reply.scored, kept, CFG)
    assert local.kept_spans == reply.kept_spans
    assert local.text == reply.text


async def test_returned_scores_rank_the_question_words_as_the_server_did() -> None:
    """The wire carries the text and offsets, so the client's selection blends the same question words in."""
    text = "ab cd ef gh.\nij zebra kl mn.\nop qr st uv.\nwx yz ab cd.\n\nWhere is the zebra now?"
    body = {"prompt": text, "keep_rate": 0.25, "return_scores": True}
    status, wire = await handle_prune(body, service())
    reply = PruneReply.from_wire(json.loads(json.dumps(wire)))
    assert status == 200 and reply.scored is not None
    config = CFG.with_overrides(keep_rate=0.25)
    assert config.lexical_weight > 0
    kept = select_scored(reply.scored, config)
    assert BosSpeculator(template=plain_chat).build_result(reply.scored, kept, config).kept_spans == reply.kept_spans
    assert "zebra" in reply.text
    without = select_scored(reply.scored, config.with_overrides(lexical_weight=0))
    assert not np.array_equal(kept, without)  # the question word moved the selection


async def test_question_steers_and_spans_are_in_the_prompt_text() -> None:
    text = "alpha beta gamma delta. The ANSWER is FORTY TWO. epsilon zeta eta theta iota."
    # one character per token: every chunk lies within the chunk context of a question word, so rank fusion
    # (tested in test_lexical and test_scoring) would reorder them all; the kept text here is worked out without it
    body = {"prompt": text, "question": "What is it?", "keep_rate": 0.3, "protected_spans": [[0, 5]]}
    unfused = FakeService(BosSpeculator(template=plain_chat), config={**CONFIG, "lexical_fusion": 0})
    status, reply = await handle_prune(body, unfused)
    assert status == 200
    spans = reply["kept_spans"]
    assert spans[0][0] == 0 and spans[0][1] >= 5  # the protected span
    assert all(0 <= s < e <= len(text) for s, e in spans)
    assert "ANSWER is FORTY TWO" in reply["text"]
    assert "What is it?" not in reply["text"] and reply["text"] != text
    assert reply["text"].startswith(text[: spans[0][1]]) and all(text[s:e] in reply["text"] for s, e in spans)


async def test_messages_prune_the_rendered_chat_and_return_cut_messages() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    status, body = await handle_prune({"prompt": messages, "keep_rate": 0.25}, service())
    expected = BosSpeculator(template=plain_chat).prune(messages, CFG, keep_rate=0.25)
    assert status == 200
    assert body["kept_spans"] == [list(s) for s in expected.kept_spans]
    assert body["messages"] == expected.messages


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": TEXT, "keep_rate": 0}, "keep_rate"),
        ({"prompt": TEXT, "keep_rate": 1.5}, "keep_rate"),
        ({"prompt": TEXT, "keep_rate": "half"}, "keep_rate"),
        ({"prompt": TEXT, "keep_rate": True}, "keep_rate"),
        ({"prompt": TEXT, "max_kept_tokens": 0}, "max_kept_tokens"),
        ({"prompt": TEXT, "max_kept_tokens": 2.5}, "max_kept_tokens"),
        ({"prompt": TEXT, "protected_spans": [[5, 2]]}, "protected_spans"),
        ({"prompt": TEXT, "protected_spans": [[1, 2, 3]]}, "protected_spans"),
        ({"prompt": TEXT, "segments": ["x"]}, "segments"),
        ({"prompt": TEXT, "return_scores": "yes"}, "return_scores"),
        ({"prompt": TEXT, "kepp_rate": 0.5}, "kepp_rate"),
        ({"prompt": [{"role": "user", "content": "hi"}], "question": "q?"}, "question"),
        ({"prompt": TEXT, "config": {"lookahead": 10_000}}, "config.lookahead"),
        ({"prompt": TEXT, "config": {"no_such_field": 1}}, "config.no_such_field"),
        ({"prompt": TEXT, "config": {"keep_rate": True}}, "config.keep_rate"),
        ({"prompt": TEXT, "config": [1]}, "config"),
        ([TEXT], "body"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(body: Any, param: str) -> None:
    svc = service()
    status, reply = await handle_prune(body, svc)
    assert status == 400
    assert reply["error"]["param"] == param
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    assert svc.tokens == []  # rejected before any scoring


async def test_a_prompt_error_inside_scoring_is_a_400() -> None:
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    status, reply = await handle_prune({"prompt": image}, service())
    assert status == 400 and "only text parts" in reply["error"]["message"]


async def test_unavailable_scoring_keeps_everything_and_says_why() -> None:
    status, body = await handle_prune({"prompt": TEXT}, service(fail="queue_full"))
    assert status == 200
    assert body["text"] == TEXT and body["kept_spans"] == [[0, len(TEXT)]]
    assert body["stats"]["fallback"] is True and body["stats"]["pruned"] is False
    assert body["stats"]["fallback_reason"].startswith("queue_full")


async def test_unavailable_scoring_without_fallback_is_a_503() -> None:
    status, body = await handle_prune({"prompt": TEXT, "fallback": False}, service(fail="deadline"))
    assert status == 503
    assert body["error"]["type"] == "scoring_unavailable" and "deadline" in body["error"]["message"]


async def test_a_failing_speculator_with_fallback_config_is_flagged_not_an_error() -> None:
    svc = FakeService(FakeSpeculator(fail=RuntimeError("CUDA out of memory")), config=CONFIG)
    status, body = await handle_prune({"prompt": TEXT}, svc)
    assert status == 200 and body["stats"]["fallback"] is True
    assert body["stats"]["fallback_reason"] == "error" and "CUDA" not in json.dumps(body)  # the log has it
    assert body["text"] == TEXT


# --- the ASGI middleware --------------------------------------------------------------------------------
async def test_middleware_answers_its_path_and_passes_everything_else_through() -> None:
    app = middleware(service())
    reply = await post(app, {"prompt": TEXT, "keep_rate": 0.25})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert "KEY FACT" in reply.json()["text"]
    other = await call_asgi(app, httpx.Request("POST", "http://test/v1/completions", json={"prompt": "x"}))
    assert other.status_code == 404 and other.content == b"inner"


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await PruneEndpointMiddleware(inner, service=service())({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


async def test_get_is_a_405() -> None:
    reply = await call_asgi(middleware(service()), httpx.Request("GET", "http://test" + PRUNE_PATH))
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"


async def test_a_declared_huge_body_is_a_413_before_reading_it() -> None:
    svc = service()
    big = json.dumps({"prompt": "x" * 5000}).encode()
    reply = await post(middleware(svc, max_body_bytes=1000), big)
    assert reply.status_code == 413 and "SPECPREFILL_SERVER_MAX_PRUNE_BYTES" in reply.json()["error"]["message"]
    assert svc.tokens == []


async def test_a_streamed_body_over_the_limit_is_a_413() -> None:
    app = middleware(service(), max_body_bytes=1000)
    request = httpx.Request("POST", "http://test" + PRUNE_PATH, content=b"x" * 5000)
    request.headers.pop("content-length")
    reply = await call_asgi(app, request, chunks=10)
    assert reply.status_code == 413


@pytest.mark.parametrize("raw", [b"", b"   ", b'{"prompt": "abc', b"\xff\xfe not json", b"null"])
async def test_empty_truncated_or_unparseable_bodies_are_400(raw: bytes) -> None:
    reply = await post(middleware(service()), raw)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_api_key_is_checked_when_the_server_has_one() -> None:
    app = middleware(service(), api_keys=["sekret"])
    assert (await post(app, {"prompt": TEXT})).status_code == 401
    bad = await post(app, {"prompt": TEXT}, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    good = await post(app, {"prompt": TEXT}, headers={"authorization": "Bearer sekret"})
    assert good.status_code == 200


async def test_api_key_comes_from_the_vllm_app_args() -> None:
    app = middleware(service())
    vllm_app = types.SimpleNamespace(state=types.SimpleNamespace(args=types.SimpleNamespace(api_key=["k1"])))
    request = httpx.Request("POST", "http://test" + PRUNE_PATH, json={"prompt": TEXT})

    async def with_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "app": vllm_app}, receive, send)

    assert (await call_asgi(with_app, request)).status_code == 401


async def test_without_a_scoring_service_the_request_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from specprefill.server import endpoint

    def get_service() -> None:
        raise RuntimeError("SPECPREFILL_SERVER_SPECULATOR is not set")

    monkeypatch.setattr(endpoint, "get_service", get_service)
    app = PruneEndpointMiddleware(lambda *a: None)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        reply = await post(app, {"prompt": TEXT})
    assert reply.status_code == 200
    stats = reply.json()["stats"]
    assert stats["fallback"] is True and stats["fallback_reason"] == "load_failed"  # a stable code
    assert "SPECPREFILL_SERVER_SPECULATOR" in caplog.text  # the details go to the log only
    refused = await post(app, {"prompt": TEXT, "fallback": False})
    assert refused.status_code == 503


async def test_non_finite_importance_travels_as_null() -> None:
    spec = BosSpeculator(template=plain_chat)
    scored = spec.score_prompt(TEXT, CFG)
    assert scored.importance is not None
    imp = scored.importance.copy()
    imp[3] = np.nan
    from dataclasses import replace

    from specprefill.wire.prune import scored_from_wire, scored_to_wire

    wire = json.loads(json.dumps(scored_to_wire(replace(scored, importance=imp)), allow_nan=False))
    assert wire["importance"][3] is None
    back = scored_from_wire(wire)
    assert back.importance is not None and np.isnan(back.importance[3])


# --- with the real scoring service (worker thread, deadline) and a fake speculator --------------------------
def real_service(speculator: Any, **settings: Any) -> Any:
    from specprefill.server.service import ScoringService
    from specprefill.server.settings import ServerSettings

    return ScoringService(ServerSettings(config=CONFIG, **settings), loader=lambda: speculator)


async def test_real_service_prunes_and_turns_a_bad_prompt_into_a_400() -> None:
    svc = real_service(BosSpeculator(template=plain_chat))
    status, body = await handle_prune({"prompt": TEXT, "keep_rate": 0.25}, svc)
    assert status == 200 and body["stats"]["pruned"] is True
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    status, body = await handle_prune({"prompt": image}, svc)
    assert status == 400 and "only text parts" in body["error"]["message"]


async def test_real_service_deadline_falls_back_or_503s() -> None:
    svc = real_service(FakeSpeculator(delay=0.5), deadline_seconds=0.05)
    status, body = await handle_prune({"prompt": TEXT}, svc)
    assert status == 200 and body["stats"]["fallback"] is True
    assert body["stats"]["fallback_reason"].startswith("deadline")
    status, body = await handle_prune({"prompt": TEXT, "fallback": False}, svc)
    assert status == 503 and "deadline" in body["error"]["message"]


async def test_real_service_failed_load_falls_back() -> None:
    from specprefill.server.service import ScoringService
    from specprefill.server.settings import ServerSettings

    def broken() -> Any:
        raise OSError("no such model folder")

    svc = ScoringService(ServerSettings(config=CONFIG), loader=broken)
    status, body = await handle_prune({"prompt": TEXT}, svc)
    assert status == 200 and body["stats"]["fallback_reason"] == "load_failed"
    assert "no such model folder" not in json.dumps(body)  # internal details never reach the client


def test_max_body_bytes_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECPREFILL_SERVER_MAX_PRUNE_BYTES", "1234")
    assert middleware(service()).max_body_bytes == 1234
    monkeypatch.setenv("SPECPREFILL_SERVER_MAX_PRUNE_BYTES", "lots")
    assert middleware(service()).max_body_bytes == 8 * 2**20


# --- the token cap and admission -------------------------------------------------------------------------
async def test_a_prompt_over_the_token_cap_is_refused_before_scoring() -> None:
    from specprefill.server.settings import ServerSettings

    svc = service()
    svc.settings = ServerSettings(config=CONFIG, max_prune_tokens=100)
    status, body = await handle_prune({"prompt": "word " * 1000}, svc)  # about 1,250 tokens by its characters
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert "SPECPREFILL_SERVER_MAX_PRUNE_TOKENS" in body["error"]["message"] and svc.tokens == []
    # under the estimate but over the exact count (one token a character): counted before scoring, still 413
    status, body = await handle_prune({"prompt": "x" * 300}, svc)
    assert status == 413 and "301 tokens" in body["error"]["message"]  # the 300 characters and the BOS token


async def test_a_prompt_that_cannot_be_scored_in_time_falls_back_at_once() -> None:
    from specprefill.server.queueing import CostEstimate
    from specprefill.server.service import ScoringService
    from specprefill.server.settings import ServerSettings

    svc = ScoringService(ServerSettings(config=CONFIG, deadline_seconds=5.0), loader=lambda: BosSpeculator())
    svc.cost = CostEstimate(seconds_per_token=1.0)  # learnt: far too slow for this prompt
    status, body = await handle_prune({"prompt": TEXT}, svc)
    assert status == 200 and body["stats"]["fallback_reason"] == "over_budget" and body["text"] == TEXT
    status, body = await handle_prune({"prompt": TEXT, "fallback": False}, svc)
    assert status == 503 and "over_budget" in body["error"]["message"]


async def test_a_client_that_disconnects_gives_its_scoring_up() -> None:
    import asyncio
    import time

    from specprefill.server.service import ScoringService
    from specprefill.server.settings import ServerSettings
    from specprefill.speculator.base import ImportanceResult
    from specprefill.speculator.checkpoints import checkpoint

    layers: list[int] = []

    class SlowSpeculator(BosSpeculator):
        def score(self, input_ids: Any, config: Any) -> ImportanceResult:
            for i in range(10_000):  # 100 s of "layers" unless stopped
                time.sleep(0.01)
                layers.append(i)
                checkpoint("layer")
            return super().score(input_ids, config)

    svc = ScoringService(ServerSettings(config=CONFIG, deadline_seconds=300.0), loader=SlowSpeculator)
    assert svc.wait_loaded(10)
    gone = asyncio.Event()
    request = httpx.Request("POST", "http://test" + PRUNE_PATH, content=json.dumps({"prompt": TEXT}).encode())
    call = asyncio.ensure_future(call_asgi(middleware(svc), request, disconnect=gone))
    while not layers:
        await asyncio.sleep(0.01)
    gone.set()  # the client hangs up while its prompt is being scored
    assert (await call).status_code == 499  # no reply was written
    stopped = time.monotonic()
    while svc.busy and time.monotonic() - stopped < 30:
        await asyncio.sleep(0.01)
    assert not svc.busy and len(layers) < 10_000
