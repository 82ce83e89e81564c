"""Pure parts of server-side pruning: overrides, chat protection, stats object, stream stats (no vLLM)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from fakes import FakeSpeculator, chatml
from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError
from specprefill.server import hooks, pruning
from specprefill.server.pruning import ScoreJob
from specprefill.server.replies import attach_stats
from specprefill.server.settings import ServerSettings
from specprefill.server.tickets import Ticket, chat_messages
from specprefill.wire.stats import merge_stats, stats_object
from specprefill.wire.xargs import OverrideError, overrides_from_xargs, wants_kept_runs

STATS_KEYS = {
    "tokens_in",
    "tokens_kept",
    "keep_ratio",
    "speculator_seconds",
    "positions",
    "fallback",
    "fallback_reason",
    "pruned",
}


def score_tokens(speculator: Any, ids: list[int], config: SpecPrefillConfig, **prompt: Any) -> Any:
    return ScoreJob(ids=ids, config=config, **prompt)(speculator)


def test_overrides_are_read_and_validated() -> None:
    base = SpecPrefillConfig(keep_rate=0.2)
    assert overrides_from_xargs(None, base) == base and overrides_from_xargs({"other": 1}, base) == base
    got = overrides_from_xargs({"specprefill_keep_rate": 1, "specprefill_max_kept_tokens": 64.0}, base)
    assert (got.keep_rate, got.max_kept_tokens) == (1.0, 64)
    assert isinstance(got.max_kept_tokens, int)


@pytest.mark.parametrize(
    "xargs",
    [
        {"specprefill_keep_rate": -0.1},
        {"specprefill_keep_rate": 0},
        {"specprefill_keep_rate": 1.01},
        {"specprefill_keep_rate": math.nan},
        {"specprefill_keep_rate": math.inf},
        {"specprefill_keep_rate": "0.3"},
        {"specprefill_keep_rate": True},
        {"specprefill_keep_rate": [0.3]},
        {"specprefill_max_kept_tokens": 0},
        {"specprefill_max_kept_tokens": 2.5},
        {"specprefill_max_kept_tokens": "many"},
        {"specprefill_max_kept_tokens": -5},
    ],
)
def test_hostile_overrides_are_refused(xargs: dict[str, Any]) -> None:
    with pytest.raises(OverrideError, match="specprefill_") as caught:
        overrides_from_xargs(xargs, SpecPrefillConfig())
    assert caught.value.field == next(iter(xargs))  # the 400 names the key


def test_stats_object_has_the_wire_keys() -> None:
    pruned = stats_object(100, 30, speculator_seconds=0.5)
    assert set(pruned) == STATS_KEYS
    assert pruned["positions"] == "original" and pruned["pruned"] and not pruned["fallback"]
    failed = stats_object(100, 100, fallback_reason="deadline")
    assert failed["positions"] == "none" and failed["fallback"] and failed["keep_ratio"] == 1.0
    merged = merge_stats([pruned, failed])
    assert merged is not None and merged["tokens_in"] == 200 and merged["tokens_kept"] == 130
    assert merged["fallback_reason"] == "deadline" and len(merged["prompts"]) == 2
    assert merge_stats([]) is None and merge_stats([pruned]) == pruned


def test_chat_messages_keep_text_and_refuse_images() -> None:
    got = chat_messages(
        [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        ]
    )
    assert got == [{"role": "user", "content": "ab"}, {"role": "assistant", "content": ""}]
    assert chat_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]) is None


def test_chat_protection_keeps_template_system_and_question_tail() -> None:
    spec = FakeSpeculator(ramp=(0.0, 0.0))
    document = "x" * 400
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": document + " Why?"}]
    text = chatml(messages)
    ids = [ord(c) for c in text]
    config = SpecPrefillConfig(keep_rate=0.1, chunk_size=8, min_prompt_tokens=0, protect_question_tokens=5, lookahead=1)
    outcome = score_tokens(spec, ids, config, text=text, messages=messages)
    kept = set(outcome.kept.tolist())
    doc_start = text.index(document)
    assert outcome.fallback_reason is None and len(kept) < len(ids)
    assert all(i in kept for i in range(doc_start))  # template + system prompt
    assert all(i in kept for i in range(text.index("Why?") - 1, len(text)))  # question tail + template
    assert sum(i in kept for i in range(doc_start, doc_start + len(document))) < len(document) // 2


def test_a_tools_block_that_repeats_a_message_stays_protected() -> None:
    # the tools block comes before the messages, and the first message repeats a tool's description word for
    # word: a forward search took the description for that message, and the tools block lost tokens
    greeting = "Say hello to my friend Ada"
    messages = [
        {"role": "user", "content": greeting},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "Some context here. " * 8 + "Thanks."},
    ]
    tools = f'<|im_start|>system\n<tools>{{"name": "greet", "description": "{greeting}"}}</tools><|im_end|>\n'
    text = tools + chatml(messages)
    spans = pruning.locate_contents_from_end(text, [m["content"] for m in messages])
    assert [text[a:b] for a, b in spans] == [m["content"] for m in messages] and spans[0][0] > len(tools)
    ids = [ord(c) for c in text]
    config = SpecPrefillConfig(keep_rate=0.2, chunk_size=8, min_prompt_tokens=0, protect_question_tokens=0, lookahead=1)
    speculator = FakeSpeculator(ramp=(0.0, 0.0), hot=["context"])
    kept = set(score_tokens(speculator, ids, config, text=text, messages=messages).kept.tolist())
    assert [i for i in range(len(tools)) if i not in kept] == [] and len(kept) < len(ids)
    assert pruning.locate_contents_from_end("<a>x</a>", ["missing", "x"]) == [(3, 3), (3, 4)]


def test_scoring_passes_short_prompts_and_falls_back_on_failure() -> None:
    ids = [ord(c) for c in "abcdefgh" * 10]
    short = score_tokens(FakeSpeculator(), ids, SpecPrefillConfig(min_prompt_tokens=1000))
    assert np.array_equal(short.kept, np.arange(len(ids))) and short.fallback_reason is None
    failing = FakeSpeculator(fail=RuntimeError("gpu fell off"))
    out = score_tokens(failing, ids, SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8))
    assert len(out.kept) == len(ids) and "gpu fell off" in str(out.fallback_reason)


def test_chat_needs_the_speculator_to_tokenise_vllm_ids() -> None:
    messages = [{"role": "user", "content": "hello"}]
    text = chatml(messages)
    with pytest.raises(PromptError, match="tokenise"):
        score_tokens(FakeSpeculator(), [1, 2, 3], SpecPrefillConfig(), text=text, messages=messages)


async def _sse(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


@pytest.mark.parametrize(("usage_chunk", "with_stats"), [(True, [2]), (False, [1])])
async def test_stream_stats_go_once_on_the_final_chunk(usage_chunk: bool, with_stats: list[int]) -> None:
    ticket = Ticket(config=SpecPrefillConfig(), usage_chunk=usage_chunk)
    ticket.stats["r"] = stats_object(10, 4)
    chunks = [
        'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{"prompt_tokens":4}}\n\n',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        'data: {"choices":[],"usage":{"prompt_tokens":4}}\n\n',
        'data: {"error":{"message":"x"},"choices":[],"usage":{"prompt_tokens":4}}\n\n',
        "data: [DONE]\n\n",
    ]
    out = [item async for item in attach_stats(_sse(chunks), ticket)]
    for i, (item, chunk) in enumerate(zip(out, chunks, strict=True)):
        if i in with_stats:
            assert json.loads(item[len("data: ") :])["specprefill"] == ticket.stats["r"]
        else:
            assert item == chunk  # continuous usage on a content chunk, errors and [DONE] stay as they are


def test_kept_runs_flag_must_be_a_boolean() -> None:
    assert wants_kept_runs({"specprefill_return_kept": True}) and not wants_kept_runs(None)
    assert wants_kept_runs({"specprefill_return_kept": 1}) and not wants_kept_runs({"specprefill_return_kept": 0})
    with pytest.raises(ConfigurationError, match="true or false"):
        wants_kept_runs({"specprefill_return_kept": "yes"})
    with pytest.raises(ConfigurationError, match="true or false"):
        wants_kept_runs({"specprefill_return_kept": 2})


def test_a_speculator_with_another_tokenizer_is_refused() -> None:
    spec = FakeSpeculator()
    ids = [ord(c) for c in "abc" * 40]
    with pytest.raises(pruning.TokenizerMismatchError, match="tokenizer"):
        pruning.ScoreJob(ids=ids, probe=[1, 2, 3], config=SpecPrefillConfig(min_prompt_tokens=0))(spec)
    same = [ord(c) for c in pruning.TOKENIZER_PROBE]
    other = FakeSpeculator()
    out = pruning.ScoreJob(ids=ids, probe=same, config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8))(other)
    assert len(out.kept) < len(ids)


def test_engine_and_worker_processes_never_install_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    assert hooks.install_if_configured(ServerSettings()) is False  # no speculator: nothing to do
    # vLLM's engine core and workers are child processes of the API server: they load no speculator
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    assert hooks.install_if_configured(ServerSettings(speculator="fakes:letter_speculator")) is False
