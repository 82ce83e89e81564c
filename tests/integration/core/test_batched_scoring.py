"""Batched speculator forward passes (micro-batches): every prompt scores as it does alone, to float rounding.

CPU runs it here with ``batch_forward=True`` (it is the CUDA default); short prompts keep it quick.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conftest import HAS_EMBEDDED, needs_model
from specprefill import SpecPrefillConfig
from specprefill.prompt.segments import scoring_config

pytestmark = needs_model

FACTS = [
    "The ferry to Osterholm leaves at 06:40 and again at 18:15.",
    "Tickets cost nine crowns, or five with a student card.",
    "The harbour café closes early on Sundays.",
    "In winter the second ferry is cancelled when ice forms in the channel.",
]


def prompt(n: int, question: str) -> str:
    body = " ".join(f"{FACTS[i % len(FACTS)]} (notice {i})" for i in range(n))
    return f"{body}\n\n{question}"


PROMPTS = [  # different lengths and final paragraphs, so windows and padding differ
    prompt(6, "When does the first ferry leave?"),
    prompt(20, "How much is a ticket with a student card, and when is the second ferry cancelled?"),
    prompt(11, "Cafe?"),
]


@pytest.fixture
def batching(speculator_fp32: Any) -> Iterator[Any]:
    before = speculator_fp32.batch_forward
    speculator_fp32.batch_forward = True
    yield speculator_fp32
    speculator_fp32.batch_forward = before


def assert_same(alone: Any, together: Any) -> None:
    assert together.lookahead_token_ids == alone.lookahead_token_ids
    assert together.queries == alone.queries and together.windows == alone.windows
    assert float(np.abs(together.importance - alone.importance).max()) < 1e-5


@pytest.mark.parametrize("paper", [False, True], ids=["defaults", "paper"])
def test_score_many_equals_scoring_each_alone(batching: Any, paper: bool) -> None:
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0) if paper else SpecPrefillConfig(min_prompt_tokens=0)
    prepared = [batching.prepare(p, config=cfg) for p in PROMPTS]
    batch = [(p.input_ids, scoring_config(p, cfg)) for p in prepared]
    assert len({c.observation_window for _, c in batch}) > 1 or paper  # the windows really differ
    together = batching.score_many(batch)
    for (ids, config), result in zip(batch, together, strict=True):
        assert_same(batching.score(ids, config), result)


def test_score_prompts_then_select_keeps_what_pruning_alone_keeps(batching: Any) -> None:
    cfg = SpecPrefillConfig(min_prompt_tokens=0, keep_rate=0.3)
    items = [(batching.prepare(p, config=cfg), cfg) for p in PROMPTS]
    for (prepared, config), scored in zip(items, batching.score_prompts(items), strict=True):
        alone = batching.score_prompt(prepared, config)
        assert scored.segments == alone.segments and scored.fallback_reason is None
        kept, want = batching.select(scored, config), batching.select(alone, config)
        assert kept.kept_indices.tolist() == want.kept_indices.tolist() and kept.stats.pruned


def test_a_prompt_over_the_context_is_scored_alone_in_windows(batching: Any) -> None:
    cfg = SpecPrefillConfig(min_prompt_tokens=0, max_speculator_tokens=160)
    ids = [batching.prepare(p, config=cfg).input_ids for p in PROMPTS]
    assert len(ids[1]) > 160 > len(ids[0])
    together = batching.score_many([(i, cfg) for i in ids])
    assert together[1].windows > 1
    for row, result in zip(ids, together, strict=True):
        assert_same(batching.score(row, cfg), result)


def _tiny(kind: str) -> Any:
    from test_equivalence import _tiny_model

    from specprefill.speculator.hf import HFSpeculator

    model, tokenizer = _tiny_model(kind)
    return HFSpeculator(copy.deepcopy(model), tokenizer, name=f"tiny-{kind}", batch_forward=True)


@pytest.mark.skipif(not HAS_EMBEDDED, reason="uses the packaged SmolLM2 tokenizer")
def test_rows_that_stop_early_and_another_architecture() -> None:
    spec = _tiny("qwen2")
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0, lookahead=5)
    rows = [spec.encode_with_specials(p)[0] for p in PROMPTS]
    first = spec.score(rows[0], cfg).lookahead_token_ids
    spec.eos_ids = frozenset({first[1]})  # row 0 stops after one look-ahead token; the others may go on
    alone = [spec.score(r, cfg) for r in rows]
    assert len(alone[0].lookahead_token_ids) == 1
    for a, b in zip(alone, spec.score_many([(r, cfg) for r in rows]), strict=True):
        assert_same(a, b)


@pytest.mark.skipif(not HAS_EMBEDDED, reason="uses the packaged SmolLM2 tokenizer")
def test_sliding_window_models_score_one_by_one() -> None:
    spec = _tiny("gemma3")
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0, lookahead=3)
    rows = [spec.encode_with_specials(p)[0] for p in PROMPTS[:2]]
    assert spec._sliding  # the padded batch would change which layers see the whole prompt
    for a, b in zip([spec.score(r, cfg) for r in rows], spec.score_many([(r, cfg) for r in rows]), strict=True):
        assert_same(a, b)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (batched scoring is the CUDA default); not run on CPU CI")
def test_batched_scoring_on_cuda_equals_alone() -> None:
    from specprefill import load_speculator

    spec = load_speculator("smollm2-135m", device="cuda:0", dtype="float32")
    assert spec.batch_forward  # on by default on CUDA
    cfg = SpecPrefillConfig(min_prompt_tokens=0)
    prepared = [spec.prepare(p, config=cfg) for p in PROMPTS]
    batch = [(p.input_ids, scoring_config(p, cfg)) for p in prepared]
    for (ids, config), result in zip(batch, spec.score_many(batch), strict=True):
        alone = spec.score(ids, config)
        assert result.lookahead_token_ids == alone.lookahead_token_ids
        assert float(np.abs(result.importance - alone.importance).max()) < 1e-4
