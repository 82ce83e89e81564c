"""Hostile and malformed inputs: each gives a typed SpecPrefillError or a correct result, never a raw error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import needs_model
from specprefill import (
    ConfigurationError,
    EmptyPromptError,
    PromptError,
    PruneResult,
    SpecPrefillConfig,
    SpecPrefillError,
)
from specprefill.spans import join_spans

pytestmark = [needs_model, pytest.mark.integration]

# Scoring settings that make even a few-token prompt go through the speculator, cheaply.
SCORE_SHORT = {"min_prompt_tokens": 0, "chunk_size": 4, "keep_rate": 0.5, "lookahead": 2}

MIXED = (
    "Emoji 😀🎉👩‍👩‍👧 and CJK 中文字符、日本語のテキスト, 한국어 문장. "
    "RTL: עברית שלום and العربية مرحبا with \u202eoverride\u202c. "
    "Controls: NUL[\x00] ESC[\x1b[31m] ZWSP[\u200b] BOM[\ufeff] tab[\t] CR[\r]. "
)


def outcome(call: Callable[[], PruneResult]) -> PruneResult | SpecPrefillError:
    """Run a prune call; a typed library error is an acceptable outcome, anything else fails the test."""
    try:
        return call()
    except SpecPrefillError as exc:
        assert str(exc), "errors must say what went wrong"
        return exc


def assert_text_result(r: PruneResult, prompt: str) -> None:
    """A correct result for a text prompt: consistent indices and kept text made of the prompt's own text."""
    n = r.original_length
    assert n == len(r.input_ids) >= 1
    assert r.position_ids == r.kept_indices.tolist()
    assert r.kept_token_ids == [r.input_ids[i] for i in r.kept_indices]
    assert r.source_text == prompt
    if r.stats.tokens_kept == n:
        assert r.text == prompt
    else:
        assert r.text == join_spans(prompt, r.kept_spans, SpecPrefillConfig().gap_marker)
    if "\ufffd" not in prompt:
        assert "\ufffd" not in r.text  # kept spans never cut a character in half
    if r.importance is not None:
        assert r.importance.shape == (n,) and r.importance.dtype == np.float32
        assert np.all(np.isfinite(r.importance))


# --- empty -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t  \r\n", [], (), [{"role": "user", "content": "  "}]])
def test_empty_prompts(speculator: Any, prompt: Any) -> None:
    with pytest.raises(EmptyPromptError):
        speculator.prune(prompt)


def test_empty_token_ids_for_importance(speculator: Any) -> None:
    with pytest.raises(EmptyPromptError):
        speculator.token_importance([])


# --- tiny prompts ----------------------------------------------------------------------------------------
def test_one_token_prompt_passthrough(speculator: Any) -> None:
    r = speculator.prune("a")
    assert r.original_length == 1 and not r.stats.pruned
    assert_text_result(r, "a")


def test_one_token_prompt_scored(speculator: Any) -> None:
    r = speculator.prune("a", min_prompt_tokens=0)
    assert_text_result(r, "a")
    assert r.importance is not None and r.stats.tokens_kept == 1
    ids = speculator.encode("a")[0]
    r = speculator.prune(ids, min_prompt_tokens=0)
    assert r.kept_token_ids == ids


def test_eos_only_token_prompt(speculator: Any) -> None:
    eos = sorted(speculator.eos_ids)[0]
    r = speculator.prune([eos] * 5, **SCORE_SHORT)
    assert r.original_length == 5 and r.importance is not None


# --- unusual characters ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt",
    [
        "😀",
        "中文",
        "\x00",
        "\x1b[2J\x1b[H",
        "\u200b",
        "\u202e",
        "a\x00b\x00c",
        MIXED,
    ],
)
def test_unusual_characters_short(speculator: Any, prompt: str) -> None:
    r = speculator.prune(prompt, **SCORE_SHORT)
    assert_text_result(r, prompt)


def test_unusual_characters_long_pruned(speculator: Any) -> None:
    prompt = MIXED * 3 + "\nWhat does the CJK part say?"
    r = speculator.prune(prompt, keep_rate=0.2)
    assert r.stats.pruned and r.original_length > 256
    assert_text_result(r, prompt)


def test_unusual_characters_in_messages(speculator: Any) -> None:
    messages = [
        {"role": "system", "content": "Réponds en 中文 😀 \x1b[0m"},
        {"role": "user", "content": MIXED * 3 + "\u200bQuestion: عن ماذا يتحدث النص؟"},
    ]
    r = speculator.prune(messages, keep_rate=0.2, protect_question_tokens=24)  # "\u200bQuestion: ..." is 24 tokens
    assert r.stats.pruned
    assert r.messages is not None
    assert r.messages[0]["content"] == messages[0]["content"]
    assert r.messages[1]["content"].endswith("عن ماذا يتحدث النص؟")
    assert "\ufffd" not in r.text


def test_replacement_character_from_invalid_utf8(speculator: Any) -> None:
    # What a file read with errors="replace" looks like after invalid UTF-8 bytes
    prompt = b"caf\xe9 na\xefve \xff\xfe text".decode("utf-8", errors="replace")
    assert "\ufffd" in prompt
    r = speculator.prune(prompt, **SCORE_SHORT)
    assert_text_result(r, prompt)


def test_lone_surrogates_are_replaced(speculator: Any) -> None:
    # e.g. json.loads('"\\ud800"'): tokenizers cannot encode these; the library scrubs them to U+FFFD
    prompt = "hello \ud800 world \udfff!"
    r = speculator.prune(prompt, **SCORE_SHORT)
    assert r.source_text == "hello \ufffd world \ufffd!"
    assert len(r.source_text) == len(prompt)
    r = speculator.prune([{"role": "user", "content": "hi \udc80 there"}], **SCORE_SHORT)
    assert r.messages is not None and r.messages[0]["content"] == "hi \ufffd there"


def test_protected_span_over_surrogate_keeps_offsets(speculator: Any) -> None:
    prompt = "x \ud800 " + "filler words " * 40 + "KEEPME end"
    start = prompt.index("KEEPME")
    r = speculator.prune(prompt, min_prompt_tokens=0, keep_rate=0.05, protected_spans=[(start, start + 6)])
    assert "KEEPME" in r.text


# --- wrong types ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        (b"raw bytes", PromptError),
        (bytearray(b"raw bytes"), PromptError),
        (None, PromptError),
        (42, PromptError),
        (3.5, PromptError),
        ({"role": "user", "content": "a dict, not a list"}, PromptError),
        ([-1, 5, 7], PromptError),
        ([0, 10**9], PromptError),
        ([49152], PromptError),  # == vocab size
        ([1, 2.0], PromptError),
        (["1", "2"], PromptError),
        ([True, False], PromptError),
        ([[1, 2], [3]], PromptError),
        ([{"content": "no role"}], PromptError),
        ([{"role": None, "content": "x"}], PromptError),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], PromptError),
        ([{"role": "user", "content": 12}], PromptError),
        ([{"role": "user", "content": "ok"}, "not a message"], PromptError),
        (np.int64(3), PromptError),
    ],
)
def test_malformed_prompts_raise_prompt_error(speculator: Any, prompt: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        speculator.prune(prompt)


def test_out_of_vocab_ids_in_token_importance(speculator: Any) -> None:
    with pytest.raises(PromptError, match="vocabulary"):
        speculator.token_importance([1, -3])
    with pytest.raises(PromptError, match="vocabulary"):
        speculator.token_importance([speculator.vocab_size])


def test_messages_with_unknown_role_or_extra_keys(speculator: Any) -> None:
    for messages in (
        [{"role": "narrator", "content": "Once upon a time."}],
        [{"role": "user", "content": "hi", "name": "bob", "metadata": {"k": 1}}],
        [{"role": "user", "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}]}],
    ):
        result = outcome(lambda m=messages: speculator.prune(m, **SCORE_SHORT))
        if isinstance(result, PruneResult):
            assert result.original_length > 0
        else:
            assert isinstance(result, PromptError)


@pytest.mark.parametrize("spans", [[(0, "a")], ["ab"], [(1, 2, 3)], 5, [(0.0, 1.0)]])
def test_bad_protected_spans(speculator: Any, spans: Any) -> None:
    with pytest.raises(PromptError, match="span"):
        speculator.prune("hello world", protected_spans=spans)


def test_protected_spans_outside_the_text_are_harmless(speculator: Any) -> None:
    r = speculator.prune("hello world " * 30, protected_spans=[(-50, 0), (10**9, 10**9 + 5), (7, 3)], **SCORE_SHORT)
    assert r.stats.protected_tokens == 0


def test_protected_spans_need_text(speculator: Any) -> None:
    with pytest.raises(PromptError, match="character spans"):
        speculator.prune([1, 2, 3], protected_spans=[(0, 1)])


# --- bad settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0, 0.0, -1, 1.01, 5, math.nan, math.inf, "half"])
def test_bad_keep_rate_override(speculator: Any, rate: Any) -> None:
    with pytest.raises(ConfigurationError, match="keep_rate"):
        speculator.prune("hello world", keep_rate=rate)


@pytest.mark.parametrize("rate", [0, 1.5, math.nan])
def test_bad_keep_rate_in_config(rate: float) -> None:
    with pytest.raises(ConfigurationError, match="keep_rate"):
        SpecPrefillConfig(keep_rate=rate)


def test_unknown_override(speculator: Any) -> None:
    with pytest.raises(ConfigurationError, match="keeprate"):
        speculator.prune("hello", keeprate=0.1)


def test_config_as_mapping_or_garbage(speculator: Any) -> None:
    r = speculator.prune("hello world " * 20, {"min_prompt_tokens": 0, "chunk_size": 4, "keep_rate": 0.5})
    assert r.stats.pruned and r.stats.keep_rate == 0.5
    with pytest.raises(ConfigurationError, match="keep_rate"):
        speculator.prune("hello", {"keep_rate": 3})
    with pytest.raises(ConfigurationError, match="SpecPrefillConfig"):
        speculator.prune("hello", 0.3)
    with pytest.raises(ConfigurationError, match="SpecPrefillConfig"):
        speculator.token_importance([1, 2, 3], "fast")


def test_window_smaller_than_lookahead_is_a_config_error() -> None:
    with pytest.raises(ConfigurationError, match="max_speculator_tokens"):
        SpecPrefillConfig(max_speculator_tokens=64, lookahead=64)


# --- longer than the speculator context ------------------------------------------------------------------
LONG_PROMPT = " ".join(f"item{i} is stored on shelf {i % 17} in aisle {i % 5}." for i in range(70)) + (
    "\nWhere is item42 stored?"
)
WINDOW_CFG = SpecPrefillConfig(max_speculator_tokens=256, keep_rate=0.25)


@pytest.fixture(scope="module")
def windowed(speculator: Any) -> PruneResult:
    result: PruneResult = speculator.prune(LONG_PROMPT, WINDOW_CFG)
    return result


def test_prompt_three_times_the_speculator_context(windowed: PruneResult) -> None:
    r = windowed
    n = r.original_length
    assert n >= 3 * 256, n
    assert r.stats.windows >= 3
    assert r.importance is not None and r.importance.shape == (n,) and np.all(np.isfinite(r.importance))
    assert np.all(r.importance >= 0) and r.importance.max() > 0
    assert r.stats.pruned and not r.stats.fallback
    assert_text_result(r, LONG_PROMPT)
    assert r.stats.chunks_kept >= math.ceil(0.25 * r.stats.chunks_total)


def test_windowed_scoring_has_no_sink_spikes_at_window_starts(speculator: Any) -> None:
    # The paper's mean over the look-ahead queries: scored in one pass, no middle token of this prompt comes
    # within 10x of the sink. (The default max over the 32 window queries legitimately lifts some middle
    # tokens to the sink's level in one pass too: some head of some question token attends to one of them.)
    imp = speculator.prune(LONG_PROMPT, SpecPrefillConfig.paper(max_speculator_tokens=256, keep_rate=0.25)).importance
    assert imp is not None
    sink = float(imp[:16].max())  # the prompt's own first tokens: the one legitimate sink
    middle = imp[16:-64]  # away from the start and from the question tail that every window sees
    # Windowed scoring must not create new sinks.
    assert int((middle >= 0.5 * sink).sum()) <= 2
