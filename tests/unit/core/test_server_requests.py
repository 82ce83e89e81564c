"""Per-request input and reporting of server-side pruning, without vLLM: strict settings, stable reasons.

The hook's pruning step runs here against fake engine objects and a real scoring service with a fake
speculator; the vLLM stage (tests/vllm_tests) covers the same over real HTTP.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from fakes import FakeSpeculator, chatml
from specprefill.config import SpecPrefillConfig
from specprefill.server import hooks
from specprefill.server.queueing import CostEstimate, FloorEstimate
from specprefill.server.service import ScoringService
from specprefill.server.settings import ServerSettings
from specprefill.server.tickets import check_xarg_keys, raw_booleans, responses_messages, ticket_for
from specprefill.wire.stats import read_stats
from specprefill.wire.xargs import OverrideError

DOC = " ".join(f"Fact {i}: the lantern in hall {i} is {i * 7 % 13} metres tall." for i in range(30))


def request(**xargs: Any) -> Any:
    return SimpleNamespace(vllm_xargs=xargs or None, stream_options=None)


# --- strict input -------------------------------------------------------------------------------
def test_a_misspelt_key_is_refused_with_the_closest_known_one() -> None:
    check_xarg_keys({"specprefill_keep_rate": 0.5, "other_tool_key": 1})  # other keys belong to others
    with pytest.raises(OverrideError, match="did you mean 'specprefill_keep_rate'") as info:
        check_xarg_keys({"specprefill_keeprate": 0.01})
    assert info.value.field == "specprefill_keeprate"


def test_json_booleans_are_found_in_the_raw_body_but_not_inside_strings() -> None:
    body = b'{"messages":[{"role":"user","content":"say \\"specprefill_max_kept_tokens\\": true"}],'
    body += b'"vllm_xargs":{"specprefill_keep_rate": true}}'
    assert raw_booleans(body, ["specprefill_keep_rate", "specprefill_max_kept_tokens"]) == ["specprefill_keep_rate"]
    assert raw_booleans(b'{"vllm_xargs":{"specprefill_keep_rate":1}}', ["specprefill_keep_rate"]) == []


def test_a_ticket_refuses_a_boolean_vllm_already_made_a_number() -> None:
    base = SpecPrefillConfig(keep_rate=0.3)
    raw = b'{"vllm_xargs": {"specprefill_keep_rate": true}}'
    with pytest.raises(OverrideError, match="JSON boolean") as info:
        ticket_for(request(specprefill_keep_rate=1), base, messages=None, raw_body=raw)
    assert info.value.field == "specprefill_keep_rate"
    one = ticket_for(request(specprefill_keep_rate=1), base, messages=None, raw_body=b'{"specprefill_keep_rate": 1}')
    assert one.config.keep_rate == 1.0
    with pytest.raises(OverrideError):
        ticket_for(request(specprefill_keeprate=0.01), base, messages=None)


def test_responses_input_becomes_messages() -> None:
    assert responses_messages("Be brief.", "Why?") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "doc "}, {"type": "input_text", "text": "q?"}]},
        {"type": "function_call_output", "call_id": "1", "output": "42"},  # template: left out
    ]
    assert responses_messages(None, items) == [{"role": "user", "content": "doc q?"}]
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "data:..."}]}]
    assert responses_messages(None, image) is None  # not text: not pruned


# --- the pruning step and its reasons ---------------------------------------------------------------
@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> ScoringService:
    svc = ScoringService(
        ServerSettings(speculator="fake", config={"min_prompt_tokens": 0, "chunk_size": 8, "lookahead": 1}),
        loader=lambda: FakeSpeculator(name="fake", template=chatml),
    )
    assert svc.wait_loaded(10)
    monkeypatch.setattr(hooks, "get_service", lambda: svc)
    monkeypatch.setattr(hooks, "BASE_COST", FloorEstimate())
    return svc


def chat_prompt() -> tuple[dict[str, Any], list[dict[str, str]]]:
    messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": DOC + "\n\nQuestion: hall 7?"}]
    text = chatml(messages)
    return {"type": "token", "prompt_token_ids": [ord(c) for c in text], "prompt": text}, messages


async def prune(service: ScoringService, extra: dict[str, Any] | None = None, **xargs: Any) -> dict[str, Any]:
    prompt, messages = chat_prompt()
    ticket = ticket_for(request(**xargs), service.settings.prune_config(), messages=messages)
    params = SimpleNamespace(extra_args=extra)
    _, stats = await hooks._prune(SimpleNamespace(), ticket, prompt, params)
    return read_stats(stats)


async def test_a_scored_request_is_pruned_at_its_original_positions(service: ScoringService) -> None:
    stats = await prune(service, specprefill_keep_rate=0.3)
    assert stats["pruned"] and stats["positions"] == "original" and not stats["fallback"]


async def test_a_client_map_reports_original_positions(service: ScoringService) -> None:
    stats = await prune(service, extra={"specprefill_runs": [0, 10], "specprefill_orig_len": 10_000})
    assert stats["positions"] == "original" and stats["tokens_in"] == 10_000 and stats["pruned"]


async def test_fallbacks_carry_a_stable_code_and_log_the_details_once(
    service: ScoringService, caplog: pytest.LogCaptureFixture
) -> None:
    service.cost = CostEstimate(seconds_per_token=1.0)  # every prompt would take minutes: refused at once
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        stats = await prune(service)
    assert stats["fallback"] and stats["fallback_reason"] == "over_budget" and not stats["pruned"]
    lines = [r for r in caplog.records if "served unpruned" in r.getMessage()]
    assert len(lines) == 1 and "over_budget" in lines[0].getMessage() and "cannot finish" in lines[0].getMessage()


async def test_the_cost_guard_skips_scoring_that_costs_more_than_it_saves(service: ScoringService) -> None:
    config = SpecPrefillConfig(keep_rate=0.3)
    assert hooks.cost_guard(service, config, 1000) is None  # nothing learnt yet: score
    service.cost = CostEstimate(seconds_per_token=0.002)
    hooks.BASE_COST.observe(1000, 10.0)  # a slow base: 10 ms a token
    assert hooks.cost_guard(service, config, 1000) is None  # 2 s of scoring saves 7 s: it pays
    stats = await prune(service)
    assert not stats["fallback"]
    hooks.BASE_COST.observe(1000, 1.0)  # one request prefilled at 1 ms a token: that is its real cost
    hooks.BASE_COST.observe(1000, 30.0)  # later ones waited behind others: the floor stays at 1 ms
    assert hooks.cost_guard(service, config, 1000) == "cost_guard"  # 2 s of scoring to save 0.7 s


async def test_the_cost_guard_is_reported_in_the_stats(service: ScoringService) -> None:
    service.cost = CostEstimate(seconds_per_token=0.002)
    hooks.BASE_COST.observe(1000, 0.001)
    stats = await prune(service)
    assert stats["fallback_reason"] == "cost_guard" and stats["fallback"] and not stats["pruned"]


async def test_the_cost_guard_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = ScoringService(ServerSettings(speculator="fake", cost_guard=False), loader=FakeSpeculator)
    svc.cost = CostEstimate(seconds_per_token=1.0)
    monkeypatch.setattr(hooks, "BASE_COST", FloorEstimate(seconds_per_token=1e-9))
    assert hooks.cost_guard(svc, SpecPrefillConfig(), 1000) is None
