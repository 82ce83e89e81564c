"""Speculator.prune with the real packaged SmolLM2-135M speculator (prompts of ~300-1000 tokens)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from conftest import needs_model
from specprefill import PruneResult, SpecPrefillConfig, SpeculatorError
from specprefill.prompt.segments import final_paragraph_tokens
from specprefill.scoring import chunk_bounds
from specprefill.spans import join_spans, kept_char_spans

pytestmark = [needs_model, pytest.mark.integration]

SENTENCES = [
    "The river bends twice before it reaches the old mill at the edge of the valley.",
    "Farmers in the region grow barley, oats and a little rye on the terraced hillsides.",
    "Most of the houses in the village were built from grey stone quarried nearby.",
    "In winter the mountain road is often closed for several weeks because of snow.",
    "The local market opens every Saturday morning and sells cheese, bread and honey.",
    "A small railway line once connected the valley to the coastal towns in the south.",
    "The church bell was recast in the nineteenth century after a fire damaged the tower.",
    "Children walk to the school in the neighbouring village along a path through the woods.",
    "Tourists come in summer to hike the ridge trails and swim in the cold lakes.",
    "The weather changes quickly, and fog can fill the valley within an hour.",
    "An old stone bridge crosses the stream near the bakery and the post office.",
    "Sheep graze on the upper pastures from late spring until the first frost.",
    "The library holds a collection of maps drawn by surveyors two hundred years ago.",
    "During the festival the streets are decorated with lanterns and paper flowers.",
    "The forest to the north is home to deer, foxes and many kinds of birds.",
    "Water from the springs is said to be among the cleanest in the country.",
]
FACT = "The secret code to open the blue vault is 7342."
QUESTION = "What is the secret code to open the blue vault?"
SYSTEM = "You are a careful assistant. Answer only from the given context."


def filler(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(n_sentences))


def check_result(
    r: PruneResult, cfg: SpecPrefillConfig, *, scored: bool = True, segments: list[int] | None = None
) -> None:
    """Invariants every PruneResult must satisfy; ``segments`` is the chunk grid it used (None: the paper's)."""
    n = r.original_length
    kept = r.kept_indices
    assert n == len(r.input_ids) > 0
    assert kept.dtype == np.int64
    assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < n
    assert r.position_ids == kept.tolist()
    assert r.kept_token_ids == [r.input_ids[i] for i in kept]
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, r.dropped_indices])), np.arange(n))
    s = r.stats
    assert s.tokens_in == n and s.tokens_kept == len(kept)
    assert math.isclose(s.keep_ratio, len(kept) / n)
    assert s.keep_rate == cfg.keep_rate
    bounds = chunk_bounds(n, cfg.chunk_size, segments)
    assert s.chunks_total == len(bounds)
    kept_set = set(kept.tolist())
    assert s.chunks_kept == sum(any(i in kept_set for i in range(a, b)) for a, b in bounds)
    assert s.speculator_seconds > 0
    assert s.speculator == "smollm2-135m"
    assert not s.fallback and s.fallback_reason is None
    if scored:
        assert r.importance is not None
        assert r.importance.dtype == np.float32 and r.importance.shape == (n,)
        assert np.all(np.isfinite(r.importance)) and np.all(r.importance >= 0)
        # the last prompt token (or the observation window, which holds it) plus the decoded look-ahead tokens;
        # by default the window stops at the final paragraph (known here for text prompts)
        window = max(1, min(cfg.observation_window, n))
        assert 1 <= s.lookahead_queries <= cfg.lookahead - 1 + window
        if r.messages is None and cfg.window_in_final_paragraph:
            paragraph = final_paragraph_tokens(r.source_text, r.offsets)
            window = window if paragraph is None else max(1, min(window, paragraph))
        if r.messages is None or not cfg.window_in_final_paragraph:
            assert s.lookahead_queries == len(r.lookahead_token_ids) + window
        assert s.windows >= 1
        assert s.pruned == (len(kept) < n)
    if r.source_text is not None and r.offsets is not None:
        assert len(r.offsets) == n
        assert r.kept_spans == kept_char_spans(r.offsets, kept)
        if len(kept) < n:
            assert r.text == join_spans(r.source_text, r.kept_spans, cfg.gap_marker)
        else:
            assert r.text == r.source_text
        # the kept spans appear in the kept text, in order
        cursor = 0
        for a, b in r.kept_spans:
            pos = r.text.find(r.source_text[a:b], cursor)
            assert pos >= 0
            cursor = pos + (b - a)
    json.dumps(r.to_dict(include_importance=True))


@pytest.fixture(scope="module", autouse=True)
def score_once(speculator: Any) -> Iterator[Callable[..., Any]]:
    """Let the real model score each distinct prompt once in this module (the tests vary selection, not scoring).

    Yields the unwrapped ``score`` for tests that must run the model themselves.
    """
    original = speculator.score
    cache: dict[tuple[Any, ...], Any] = {}

    def cached(input_ids: Any, config: SpecPrefillConfig) -> Any:
        key = (
            tuple(int(t) for t in input_ids),
            config.lookahead,
            config.pool_kernel,
            config.max_speculator_tokens,
            config.window_query_tokens,
            config.observation_window,
            config.query_reduction,
            config.query_mix,
        )
        if key not in cache:
            cache[key] = original(input_ids, config)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speculator, "score", cached)
        yield original


@pytest.fixture(scope="module")
def text_prompt() -> str:
    return filler(40, seed=1) + "\n\nQuestion: Which animals live in the forest?\nAnswer:"


def grid(speculator: Any, prompt: Any, cfg: SpecPrefillConfig) -> list[int] | None:
    """The chunk grid ``cfg`` gives ``prompt`` (segment starts; None for the paper's grid)."""
    segments: list[int] | None = speculator.score_prompt(prompt, cfg).segments
    return segments


@pytest.fixture(scope="module")
def text_result(speculator: Any, text_prompt: str) -> PruneResult:
    return speculator.prune(text_prompt)


def test_text_prompt_invariants(speculator: Any, text_result: PruneResult, text_prompt: str) -> None:
    cfg = SpecPrefillConfig()
    segments = grid(speculator, text_prompt, cfg)
    assert segments  # the default grid restarts at sentences
    check_result(text_result, cfg, segments=segments)
    # the segment grid counts its budget in tokens: nothing in a text prompt is protected
    assert text_result.stats.tokens_kept == math.ceil(cfg.keep_rate * text_result.original_length)
    assert text_result.source_text == text_prompt
    assert 300 <= text_result.original_length <= 1500
    assert text_result.stats.pruned and text_result.stats.windows == 1
    assert text_result.stats.protected_tokens == 0


def test_paper_grid_keeps_whole_chunks_at_budget(speculator: Any, text_prompt: str) -> None:
    paper = speculator.prune(text_prompt, SpecPrefillConfig.paper())
    n = paper.original_length
    bounds = chunk_bounds(n, 32)
    kept = set(paper.kept_indices.tolist())
    chosen = [(a, b) for a, b in bounds if any(i in kept for i in range(a, b))]
    assert all(all(i in kept for i in range(a, b)) for a, b in chosen)  # chunks are kept whole
    assert len(chosen) == math.ceil(0.3 * len(bounds))


def test_token_importance_is_deterministic(
    speculator: Any, text_result: PruneResult, score_once: Callable[..., Any]
) -> None:
    ids = text_result.input_ids[:64]
    imp = speculator.token_importance(ids)
    assert imp.dtype == np.float32 and imp.shape == (64,)
    # the model itself (not the module cache) gives the same scores again
    again = score_once(ids, SpecPrefillConfig()).importance
    np.testing.assert_allclose(imp, again, rtol=1e-4, atol=1e-6)


def test_token_id_prompt(speculator: Any, text_prompt: str) -> None:
    ids, _ = speculator.encode_with_specials(text_prompt)
    cfg = SpecPrefillConfig(keep_rate=0.25)
    r = speculator.prune(ids, cfg)
    check_result(r, cfg)
    assert r.input_ids == ids and r.source_text is None and r.offsets is None and r.kept_spans == []
    assert r.stats.pruned
    # text of a token prompt is the decoded kept runs joined with the gap marker
    pieces = [p.strip() for p in r.text.split("…") if p.strip()]
    assert pieces and all(p in speculator.decode(ids) for p in pieces)
    # numpy ids are accepted too
    r2 = speculator.prune(np.asarray(ids, dtype=np.int64), cfg)
    np.testing.assert_array_equal(r2.kept_indices, r.kept_indices)
    assert r2.kept_token_ids == r.kept_token_ids


CHAT_QUESTION = "Which animals live in the forest to the north?"
CHAT_MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Context:\n" + filler(45, seed=2) + "\n\n" + CHAT_QUESTION},
]


def test_chat_messages_protect_system_template_and_question(speculator: Any) -> None:
    cfg = SpecPrefillConfig(keep_rate=0.1, protect_question_tokens=20)
    r = speculator.prune(CHAT_MESSAGES, cfg)
    check_result(r, cfg, segments=grid(speculator, CHAT_MESSAGES, cfg))
    assert r.stats.pruned and r.stats.protected_tokens > 0
    assert r.source_text == speculator.render_chat(CHAT_MESSAGES)
    kept_text = speculator.decode(r.kept_token_ids)
    assert SYSTEM in kept_text and CHAT_QUESTION in kept_text
    assert SYSTEM in r.text and CHAT_QUESTION in r.text
    # every chat-template special token is kept, and the rendering still ends with the assistant turn
    specials = set(speculator.tokenizer.all_special_ids)
    kept = set(r.kept_indices.tolist())
    assert all(i in kept for i, t in enumerate(r.input_ids) if t in specials)
    assert r.text.endswith("<|im_start|>assistant\n")
    # the pruned messages keep roles and the protected parts
    assert r.messages is not None
    assert [m["role"] for m in r.messages] == ["system", "user"]
    assert r.messages[0]["content"] == SYSTEM
    assert r.messages[1]["content"].endswith(CHAT_QUESTION)
    assert len(r.messages[1]["content"]) < len(CHAT_MESSAGES[1]["content"])
    assert cfg.gap_marker.strip() in r.messages[1]["content"]


def test_chat_protected_count_toward_budget(speculator: Any) -> None:
    cfg = SpecPrefillConfig(keep_rate=0.2, protect_question_tokens=20)
    off = speculator.prune(CHAT_MESSAGES, cfg)
    on = speculator.prune(CHAT_MESSAGES, cfg, protected_count_toward_budget=True)
    assert on.stats.protected_tokens == off.stats.protected_tokens > 0
    assert set(on.kept_indices.tolist()) <= set(off.kept_indices.tolist())
    assert on.stats.tokens_kept < off.stats.tokens_kept


def test_min_prompt_tokens_passthrough(speculator: Any) -> None:
    prompt = "A short prompt that is far below the pruning threshold."
    r = speculator.prune(prompt)
    cfg = SpecPrefillConfig()
    check_result(r, cfg, scored=False)
    assert not r.stats.pruned and r.importance is None and r.stats.windows == 0
    assert r.stats.tokens_kept == r.original_length < cfg.min_prompt_tokens
    assert r.text == prompt
    # lowering the threshold makes the same prompt prunable
    r2 = speculator.prune(prompt, min_prompt_tokens=1, chunk_size=2, keep_rate=0.3)
    assert r2.stats.pruned and r2.importance is not None


def test_max_kept_tokens(speculator: Any, text_prompt: str) -> None:
    cfg = SpecPrefillConfig(keep_rate=1.0, max_kept_tokens=50)
    r = speculator.prune(text_prompt, cfg)
    check_result(r, cfg, segments=grid(speculator, text_prompt, cfg))
    assert r.stats.tokens_kept == 50


def test_extra_protected_spans(speculator: Any, text_prompt: str, text_result: PruneResult) -> None:
    # protect a sentence that plain pruning at this rate drops
    cfg = SpecPrefillConfig(keep_rate=0.05)
    plain = speculator.prune(text_prompt, cfg)
    start = next(text_prompt.index(x) for x in SENTENCES if x in text_prompt and x not in plain.text)
    sentence = text_prompt[start : text_prompt.index(".", start) + 1]
    spans = [(start, start + len(sentence))]
    r = speculator.prune(text_prompt, cfg, protected_spans=spans)
    check_result(r, cfg, segments=grid(speculator, text_prompt, cfg))
    assert sentence in r.text
    protected = r.stats.protected_tokens
    assert protected >= 5
    # the default segment grid counts its budget in unprotected tokens; the protected ones come on top
    assert r.stats.tokens_kept - protected == math.ceil(cfg.keep_rate * (r.original_length - protected))
    # on the paper grid (a budget in chunks, none of them wholly protected) protection only adds tokens
    paper = SpecPrefillConfig.paper(keep_rate=0.05)
    plain_paper = speculator.prune(text_prompt, paper).kept_indices.tolist()
    assert set(plain_paper) <= set(speculator.prune(text_prompt, paper, protected_spans=spans).kept_indices.tolist())


def test_aprune(speculator: Any, text_prompt: str) -> None:
    async def main() -> PruneResult:
        result: PruneResult = await speculator.aprune(text_prompt, keep_rate=0.2)
        return result

    r = asyncio.run(main())
    cfg = SpecPrefillConfig(keep_rate=0.2)
    check_result(r, cfg, segments=grid(speculator, text_prompt, cfg))
    assert r.stats.keep_rate == 0.2


@pytest.mark.parametrize("position", [0.2, 0.5, 0.8])
def test_needle_fact_survives_keep_rate_02(speculator: Any, position: float) -> None:
    before = filler(int(60 * position), seed=7)
    after = filler(int(60 * (1 - position)), seed=107)
    prompt = f"Read the text and answer the question.\n\n{before} {FACT} {after}\n\nQuestion: {QUESTION}\nAnswer:"
    r = speculator.prune(prompt, keep_rate=0.2)
    assert 800 <= r.original_length <= 1200 and r.stats.keep_ratio < 0.3
    assert "7342" in r.text, f"fact dropped; kept text: {r.text[:400]!r}"


def test_sentence_segments_exact_token_budget_and_needle(speculator: Any) -> None:
    prompt = (
        f"Read the text and answer the question.\n\n{filler(30, seed=7)} {FACT} {filler(30, seed=107)}\n\n"
        f"Question: {QUESTION}\nAnswer:"
    )
    cfg = SpecPrefillConfig(keep_rate=0.2, segment_by="sentences")
    scored = speculator.score_prompt(prompt, cfg)
    assert scored.segments is not None and len(scored.segments) >= 60  # one per sentence at least
    assert scored.text is not None and scored.offsets is not None
    fact_start = scored.text.index(FACT)
    assert any(scored.offsets[t][0] >= fact_start - 1 and scored.offsets[t][0] <= fact_start for t in scored.segments)
    r = speculator.select(scored, cfg)
    budget = math.ceil(0.2 * int((~scored.protected).sum()))
    assert r.stats.tokens_kept == budget and not scored.protected.any()  # a text prompt: nothing protected
    assert r.stats.chunks_total == len(chunk_bounds(r.original_length, cfg.chunk_size, scored.segments))
    assert "7342" in r.text
    assert speculator.prune(prompt, cfg).kept_indices.tolist() == r.kept_indices.tolist()


def test_needle_in_chat_with_short_question_protection(speculator: Any) -> None:
    doc = f"{filler(30, seed=11)} {FACT} {filler(30, seed=12)}"
    messages = [{"role": "user", "content": f"{doc}\n\n{QUESTION}"}]
    r = speculator.prune(messages, keep_rate=0.2, protect_question_tokens=16)
    assert r.messages is not None
    assert "7342" in r.messages[0]["content"]
    assert r.messages[0]["content"].endswith(QUESTION)


# --- fallback -----------------------------------------------------------------------------------------
def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("simulated speculator crash")


def test_fallback_keeps_everything_and_warns(
    speculator: Any, text_prompt: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(speculator, "score", _boom)
    with caplog.at_level(logging.WARNING, logger="specprefill"):
        r = speculator.prune(text_prompt)
    assert r.stats.fallback and not r.stats.pruned
    assert r.stats.fallback_reason is not None and "simulated speculator crash" in r.stats.fallback_reason
    assert r.stats.tokens_kept == r.original_length
    np.testing.assert_array_equal(r.kept_indices, np.arange(r.original_length))
    assert r.text == text_prompt and r.importance is None
    assert any("simulated speculator crash" in rec.getMessage() for rec in caplog.records)


def test_fallback_off_raises_speculator_error(
    speculator: Any, text_prompt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speculator, "score", _boom)
    with pytest.raises(SpeculatorError, match="simulated speculator crash") as info:
        speculator.prune(text_prompt, fallback_on_error=False)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_fallback_on_typed_speculator_error(speculator: Any, text_prompt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def typed(*args: Any, **kwargs: Any) -> Any:
        raise SpeculatorError("out of memory while scoring")

    monkeypatch.setattr(speculator, "score", typed)
    r = speculator.prune(text_prompt)
    assert r.stats.fallback and "out of memory" in (r.stats.fallback_reason or "")
    with pytest.raises(SpeculatorError, match="out of memory"):
        speculator.prune(text_prompt, fallback_on_error=False)
