"""The prune endpoint's wire form (specprefill.wire.prune): JSON round trips and typed errors for bad payloads."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fakes import BosSpeculator
from specprefill import SpecPrefillConfig
from specprefill.prompt.messages import plain_chat
from specprefill.result import PruneStats
from specprefill.wire.prune import (
    PruneReply,
    PruneRequest,
    WireFormatError,
    decode_json,
    encode_json,
    scored_from_wire,
    scored_to_wire,
)
from specprefill.wire.stats import STATS_FIELDS, prune_stats_object, read_stats, stats_object

CFG = SpecPrefillConfig(chunk_size=4, lookahead=1, min_prompt_tokens=0, segment_by="sentences")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One. TWO is HERE. three."}]


def through_json(value: Any) -> Any:
    return decode_json(encode_json(value))


def test_scored_messages_round_trip_exactly() -> None:
    scored = BosSpeculator(template=plain_chat).score_prompt(MESSAGES, CFG, protected_spans=[(0, 3)])
    back = scored_from_wire(through_json(scored_to_wire(scored)))
    assert back.input_ids == scored.input_ids and back.offsets == scored.offsets
    assert np.array_equal(back.protected, scored.protected) and back.protected.dtype == np.bool_
    assert back.importance is not None and scored.importance is not None
    assert np.array_equal(back.importance, scored.importance) and back.importance.dtype == np.float32
    assert back.segments == scored.segments and back.segments
    assert (back.text, back.messages, back.content_spans) == (scored.text, scored.messages, scored.content_spans)
    assert (back.kind, back.queries, back.windows, back.speculator) == ("messages", 1, 1, "char-fake")
    assert back.speculator_seconds == scored.speculator_seconds


def test_unscored_prompt_round_trips_with_no_importance() -> None:
    scored = BosSpeculator().score_prompt("short text", CFG.with_overrides(min_prompt_tokens=1000))
    back = scored_from_wire(through_json(scored_to_wire(scored)))
    assert back.importance is None and back.fallback_reason is None and back.n_tokens == scored.n_tokens


def wire_scored(**changes: Any) -> dict[str, Any]:
    scored = BosSpeculator().score_prompt("abc def", CFG)
    return {**scored_to_wire(scored), **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"input_ids": [1, -2]}, "scored.input_ids"),
        ({"input_ids": "abc"}, "scored.input_ids"),
        ({"offsets": [[0, 1]]}, "scored.offsets"),
        ({"offsets": [[0, 99]] * 8}, "scored.offsets"),
        ({"text": None}, "scored.offsets"),
        ({"importance": [0.5]}, "scored.importance"),
        ({"importance": ["x"] * 8}, "scored.importance"),
        ({"protected": [[0, 50]]}, "scored.protected"),
        ({"segments": [0, 99]}, "scored.segments"),
        ({"kind": "image"}, "scored.kind"),
        ({"queries": 1.5}, "scored.queries"),
        ({"messages": [{"content": "no role"}]}, "scored.messages"),
    ],
)
def test_malformed_scored_prompts_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(WireFormatError) as info:
        scored_from_wire(wire_scored(**changes))
    assert info.value.field == field


def test_request_round_trip_and_defaults() -> None:
    request = PruneRequest(
        prompt="text",
        question="q?",
        keep_rate=0.2,
        max_kept_tokens=9,
        protected_spans=((0, 2),),
        segments=(3, (4, 6)),
        return_scores=True,
        fallback=False,
        config={"lookahead": 4},
    )
    assert PruneRequest.from_wire(through_json(request.to_wire())) == request
    assert PruneRequest.from_wire({"prompt": "x"}) == PruneRequest(prompt="x")


def test_reply_round_trip() -> None:
    spec = BosSpeculator(template=plain_chat)
    scored = spec.score_prompt(MESSAGES, CFG)
    result = spec.select(scored, CFG)
    reply = PruneReply(result.text, result.kept_spans, prune_stats_object(result.stats), scored, result.messages)
    back = PruneReply.from_wire(through_json(reply.to_wire()))
    assert (back.text, back.kept_spans, back.stats, back.messages) == (
        reply.text,
        reply.kept_spans,
        reply.stats,
        reply.messages,
    )
    assert back.scored is not None and back.scored.input_ids == scored.input_ids


def test_stats_have_the_contract_keys() -> None:
    stats = PruneStats(tokens_in=10, tokens_kept=4, keep_ratio=0.4, keep_rate=0.3, pruned=True)
    assert tuple(prune_stats_object(stats)) == STATS_FIELDS
    assert tuple(stats_object(0, 0, fallback_reason="deadline")) == STATS_FIELDS
    assert read_stats(through_json(stats_object(10, 4)))["positions"] == "original"
    assert read_stats(through_json({**stats_object(10, 4), "kept_runs": [0, 4]}))["kept_runs"] == [0, 4]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"positions": "compacted"}, "stats.positions"),
        ({"tokens_in": "10"}, "stats.tokens_in"),
        ({"fallback": 1}, "stats.fallback"),
        ({"fallback_reason": 3}, "stats.fallback_reason"),
    ],
)
def test_malformed_stats_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(WireFormatError) as info:
        read_stats({**stats_object(0, 0, fallback_reason="x"), **changes})
    assert info.value.field == field
    stats = stats_object(0, 0, fallback_reason="x")
    del stats["pruned"]
    with pytest.raises(WireFormatError, match="lacks"):
        read_stats(stats)


@pytest.mark.parametrize("raw", [b"", b" \n", b'{"a": ', b"\xff", "{'single': 1}"])
def test_decode_json_refuses_empty_truncated_and_unparseable(raw: bytes | str) -> None:
    with pytest.raises(WireFormatError):
        decode_json(raw)


def test_encode_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})
    assert json.loads(encode_json({"t": "é…"})) == {"t": "é…"}
