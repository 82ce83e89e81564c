"""Selectors and metrics on tiny literal inputs (no model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.catalog import build_method
from benchmarks.llmlingua import align_subsequence
from benchmarks.methods import (
    ChunkMethod,
    EmbeddingRetrieval,
    FullPrompt,
    HeadTail,
    PreparedSample,
    RandomChunks,
    broadcast_chunk_scores,
    context_budget,
    head_tail_importance,
    prepare_sample,
    random_chunk_importance,
)
from benchmarks.metrics import (
    ModelShape,
    answer_score,
    context_keep_ratio,
    decode_flops,
    normalize_answer,
    prefill_flops,
    span_retention,
    speculator_flops,
    speedup_ceiling,
    tokens_in_span,
)
from benchmarks.tasks import Sample
from specprefill.errors import ConfigurationError

Span = tuple[int, int]


def _char_encode(text: str) -> tuple[list[int], list[Span]]:
    """One token per character (ids = code points), like a tokenizer with exact offsets."""
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]


def _sample(context: str, question: str = "Q?", spans: tuple[Span, ...] = ((0, 1),)) -> Sample:
    return Sample(
        task="niah_single",
        target_tokens=128,
        seed=0,
        instruction="I",
        context=context,
        question=question,
        answer_prefix="A",
        answers=("x",),
        answer_spans=spans,
        documents=tuple(context.split("\n\n")),
    )


def test_prepare_sample_protects_outside_the_context() -> None:
    prepared = prepare_sample(_sample("abcdefgh"), _char_encode)
    text = prepared.prompt.text
    assert text == "I\n\nabcdefgh\n\nQ?\nAnswer: A"
    start = text.index("abcdefgh")
    assert prepared.context_tokens == list(range(start, start + 8))
    assert prepared.protected.sum() == len(text) - 8


def test_context_budget() -> None:
    assert context_budget(0.1, 1000) == 100
    assert context_budget(0.1, 4) == 1  # at least one token
    assert context_budget(1.0, 7) == 7
    assert context_budget(0.5, 0) == 0


def test_broadcast_and_random_scores() -> None:
    assert broadcast_chunk_scores([1.0, 2.0], 5, 3).tolist() == [1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="chunk values"):
        broadcast_chunk_scores([1.0], 5, 3)
    a = random_chunk_importance(100, 32, "s")
    assert np.array_equal(a, random_chunk_importance(100, 32, "s"))
    assert not np.array_equal(a, random_chunk_importance(100, 32, "t"))
    assert len(set(a[:32].tolist())) == 1


def test_head_tail_prefers_both_ends_of_the_context() -> None:
    protected = np.zeros(8, dtype=np.bool_)
    protected[:2] = True  # chunk 0 (size 2) is wholly protected
    scores = head_tail_importance(8, 2, protected)
    # prunable chunks 1, 2, 3 -> ranks 0, 1, 2 -> scores 0, -1, 0
    assert scores.tolist() == [0, 0, 0, 0, -1, -1, 0, 0]


class _Fixed(ChunkMethod):
    name = "fixed"
    chunk_size = 4

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = np.asarray(scores, dtype=np.float32)

    def importance(self, prepared: PreparedSample) -> npt.NDArray[np.float32]:
        return self.scores


def test_chunk_methods_keep_the_same_number_of_context_tokens() -> None:
    prepared = prepare_sample(_sample("x" * 40, spans=((20, 23),)), _char_encode)
    n = prepared.n_tokens
    n_context = len(prepared.context_tokens)
    rng = np.random.default_rng(0)
    methods: list[ChunkMethod] = [HeadTail(), RandomChunks(1), _Fixed(rng.random(n))]
    for method in methods:
        method.chunk_size = 4
        for sel in method.select(prepared, [0.1, 0.3, 0.5]):
            assert len(sel.kept) - int(prepared.protected.sum()) == context_budget(sel.keep_rate, n_context)
            assert set(np.flatnonzero(prepared.protected)) <= set(sel.kept.tolist())
            assert sel.seconds >= 0 and sel.method == method.name
    full = FullPrompt().select(prepared, [1.0])[0]
    assert full.kept.tolist() == list(range(n))


def test_fixed_scores_pick_the_best_chunk_and_retain_its_span() -> None:
    prepared = prepare_sample(_sample("a" * 16 + "GOLD" + "b" * 20, spans=((16, 20),)), _char_encode)
    start = prepared.prompt.context_span[0]
    scores = np.zeros(prepared.n_tokens, dtype=np.float32)
    scores[start + 16 : start + 20] = 1.0
    method = _Fixed(scores)
    sel = method.select(prepared, [0.25])[0]  # 10 tokens: GOLD straddles two 4-token chunks
    assert span_retention(prepared.offsets, sel.kept, prepared.prompt.gold_spans) == (1.0, True)


def test_embedding_retrieval_ranks_chunks_by_similarity() -> None:
    prepared = prepare_sample(_sample("zzzzzzzzGOLDzzzzzzzz", question="GOLD?"), _char_encode)

    def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows = [[1.0, 0.0] if set("GOLD") & set(t) else [0.0, 1.0] for t in texts]
        return np.asarray(rows, dtype=np.float32)

    method = EmbeddingRetrieval(embed)
    method.chunk_size = 4
    scores = method.importance(prepared)
    gold = prepared.prompt.text.index("GOLD", prepared.prompt.context_span[0])
    assert scores[gold] == scores.max() == 1.0
    assert scores[prepared.prompt.context_span[1] - 1] == 0.0


def test_align_subsequence() -> None:
    assert align_subsequence([5, 6, 7, 8, 9], [6, 7, 9]) == [1, 2, 4]
    assert align_subsequence([1, 2, 3], []) == []
    assert align_subsequence([1, 2, 3], [4, 5]) == []
    assert align_subsequence([1, 1, 2, 1], [1, 2]) == [1, 2]


def test_build_method_names() -> None:
    assert build_method("full").name == "full"
    assert build_method("random", seed=3).name == "random"
    assert build_method("head-tail").name == "head-tail"
    with pytest.raises(ConfigurationError, match="unknown method"):
        build_method("llmlingua-3")


def test_span_retention_and_keep_ratios() -> None:
    offsets = [(0, 2), (2, 4), (4, 6), (6, 6), (6, 8)]
    assert tokens_in_span(offsets, (3, 5)) == [1, 2]
    assert tokens_in_span(offsets, (6, 6)) == []
    assert span_retention(offsets, [1, 2], [(3, 5)]) == (1.0, True)
    assert span_retention(offsets, [1], [(3, 5)]) == (0.0, False)
    assert span_retention(offsets, [0, 4], [(0, 1), (2, 3), (7, 8)]) == (pytest.approx(2 / 3), False)
    assert span_retention(offsets, [], []) == (1.0, True)
    protected = np.array([True, False, False, False, True])
    assert context_keep_ratio([0, 1, 4], protected) == pytest.approx(1 / 3)
    assert context_keep_ratio([0], np.ones(1, dtype=np.bool_)) == 1.0


def test_answer_score() -> None:
    assert normalize_answer("  The Old-Granary! ") == "the old granary"
    assert answer_score(" 1234567.", ["1234567"]) == 1.0
    assert answer_score("12345678", ["1234567"]) == 0.0  # whole-token match, not a substring of a number
    assert answer_score("A: 1, 2", ["1", "2", "3", "4"]) == 0.5
    assert answer_score("Café Ochre", ["cafe ochre"]) == 1.0
    assert answer_score("anything", []) == 1.0


def test_flop_model_on_a_tiny_shape() -> None:
    shape = ModelShape(layers=2, hidden=4, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    # per layer: q 4*4 + kv 2*4*2 + o 4*4 = 48; mlp 3*4*8 = 96
    assert shape.attention_params == 48 and shape.mlp_params == 96 and shape.non_embedding_params == 288
    assert prefill_flops(shape, 3) == 2 * 3 * 288 + 2 * 2 * 9 * 4 + 2 * 4 * 10
    assert decode_flops(shape, 5) == 2 * 288 + 4 * 2 * 5 * 4 + 2 * 4 * 10
    lah1 = speculator_flops(shape, 3, lookahead=1)
    assert lah1 == prefill_flops(shape, 3) + 2 * 2 * 2 * 1 * 3 * 2
    assert speculator_flops(shape, 3, lookahead=2) == pytest.approx(
        prefill_flops(shape, 3) + decode_flops(shape, 4) + 2 * 2 * 2 * 2 * 3 * 2
    )
    assert speedup_ceiling(0.1, 0.0296) == pytest.approx(7.716, abs=1e-3)  # the paper's 405B example


def test_model_shape_from_config() -> None:
    class Cfg:
        num_hidden_layers = 24
        hidden_size = 2048
        num_attention_heads = 32
        num_key_value_heads = 32
        intermediate_size = 8192
        vocab_size = 49152

    shape = ModelShape.from_config(Cfg())
    assert shape.head_dim == 64
    # SmolLM2-1.7B: 1.71B parameters = 24 x (16.8M attention + 50.3M MLP) + 100.7M tied embedding
    assert shape.non_embedding_params + shape.vocab * shape.hidden == pytest.approx(1.711e9, rel=1e-3)
