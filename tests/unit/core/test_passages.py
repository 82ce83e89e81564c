"""Passage pruning in core (specprefill.prompt.passages) with a character-level fake speculator."""

from __future__ import annotations

import math

import pytest

from fakes import BosSpeculator  # one token per character; upper-case letters are important
from specprefill import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.messages import plain_chat
from specprefill.prompt.passages import (
    DEFAULT_INSTRUCTION,
    Passage,
    aprune_passages,
    layout_passages,
    prune_passages,
    score_passages,
)

CFG = SpecPrefillConfig(chunk_size=4, lookahead=1, min_prompt_tokens=0, gap_marker="|", chunk_context=0)


def spec() -> BosSpeculator:
    return BosSpeculator(template=plain_chat)  # keeps contents verbatim


def test_layout_numbers_passages_skips_empty_ones_and_shifts_protected_spans() -> None:
    layout = layout_passages(
        [Passage("alpha"), Passage("  "), Passage("beta", header=" title: B\n", protected=((1, 3), (2, 99)))],
        "why?",
    )
    assert layout.content == "Passages:\n\n[1]\nalpha\n\n[2] title: B\nbeta\n\nQuestion: why?"
    assert layout.messages[0] == {"role": "system", "content": DEFAULT_INSTRUCTION}
    assert layout.indices == [0, 2]
    assert [layout.content[s:e] for s, e in layout.windows] == ["alpha", "beta"]
    assert [layout.content[s:e] for s, e in layout.protected] == ["et", "ta"]  # clipped to the passage
    assert "Question" not in layout_passages([Passage("x")], "  ").content


def test_every_passage_starts_its_own_grid_and_everything_else_is_protected() -> None:
    layout = layout_passages([Passage("abXY"), Passage("ZWcd")], "q?")
    scored = score_passages(spec(), layout, CFG)
    assert scored.importance is not None and scored.segments is not None
    offset = (scored.content_spans or [])[1][0]
    starts = {s + offset for s, _ in layout.windows} | {e + offset for _, e in layout.windows}
    assert starts <= set(scored.segments)  # one character per token: characters are token indices
    inside = [i for s, e in layout.windows for i in range(s + offset, e + offset)]
    assert not scored.protected[inside].any()
    assert scored.protected.sum() == scored.n_tokens - len(inside)


def test_budget_counts_passage_tokens_and_goes_where_the_scores_are() -> None:
    passages = [Passage("abcdefgh"), Passage("ijklMNOP"), Passage("qrstuvwx")]
    out = prune_passages(spec(), passages, "q?", CFG.with_overrides(keep_rate=0.25))
    # ceil(0.25 * 24) = 6 tokens: the chunk MNOP, then a tie of plain chunks goes to the earliest, cut to 2
    assert [o.text for o in out.passages] == ["ab|", "|MNOP", ""]
    kept = [o.tokens_kept for o in out.passages]
    assert kept == [2, 4, 0] and sum(kept) == math.ceil(0.25 * 24)
    assert [o.dropped for o in out.passages] == [False, False, True]
    assert [o.pruned for o in out.passages] == [True, True, True]


def test_max_kept_tokens_is_exact_and_protected_spans_come_on_top() -> None:
    passages = [Passage("abcdefgh", protected=((0, 2),)), Passage("ijklMNOP")]
    out = prune_passages(spec(), passages, "q?", CFG.with_overrides(keep_rate=1.0, max_kept_tokens=3))
    a, b = out.passages
    assert a.text == "ab|" and a.protected_tokens == 2 and a.tokens_kept == 2
    assert b.text == "|MNO|" and b.tokens_kept == 3 and b.protected_tokens == 0
    assert out.result.stats.pruned and out.result.stats.tokens_kept == out.result.stats.tokens_in - 11


def test_minimum_per_passage_adds_exactly_what_is_missing_best_chunk_first() -> None:
    passages = [Passage("abcdEFgh"), Passage("ijklMNOP"), Passage("xy")]
    out = prune_passages(spec(), passages, "q?", CFG.with_overrides(max_kept_tokens=4), min_tokens_per_passage=3)
    a, b, c = out.passages
    assert b.text == "|MNOP" and b.minimum_tokens_added == 0  # the budget went here
    assert a.tokens_kept == 3 and a.minimum_tokens_added == 3 and a.text == "|EFg|"  # best chunk, best run of 3
    assert c.tokens_kept == 2 and c.minimum_tokens_added == 2 and c.text == "xy"  # shorter than the minimum
    assert not c.pruned and b.pruned


def test_unscored_prompts_keep_everything() -> None:
    passages = [Passage("abcdefgh"), Passage("")]
    short = prune_passages(spec(), passages, "q?", CFG.with_overrides(min_prompt_tokens=10_000))
    assert [o.text for o in short.passages] == ["abcdefgh", ""]
    assert not short.passages[0].pruned and short.passages[0].tokens_kept == 8 and not short.result.stats.pruned
    failing = spec()
    failing.score = lambda ids, cfg: 1 / 0  # type: ignore[method-assign,assignment,misc,return-value]
    out = prune_passages(failing, passages, "q?", CFG)
    assert out.passages[0].text == "abcdefgh" and out.result.stats.fallback
    with pytest.raises(Exception, match="division by zero"):
        prune_passages(failing, passages, "q?", CFG.with_overrides(fallback_on_error=False))


def test_refusals() -> None:
    with pytest.raises(PromptError, match="changes the passages text"):
        prune_passages(BosSpeculator(template=lambda m: plain_chat(m).upper()), [Passage("ab")], "q", CFG)


def test_protected_count_toward_budget_is_honoured() -> None:
    passages = [Passage("abcdEFghijklmnop"), Passage("qrstUVwxyzABCDEF")]
    free = prune_passages(spec(), passages, "q?", CFG.with_overrides(keep_rate=0.5))
    counted = prune_passages(
        spec(), passages, "q?", CFG.with_overrides(keep_rate=0.5, protected_count_toward_budget=True)
    )
    protected = free.result.stats.protected_tokens
    assert protected > 0 and free.result.stats.tokens_kept - protected == 16  # half of the 32 passage tokens
    # the headers, instruction and question use up the budget: ceil(0.5 * all tokens) kept in all
    assert counted.result.stats.tokens_kept == max(protected, -(-counted.result.stats.tokens_in // 2))
    assert sum(o.tokens_kept for o in counted.passages) < sum(o.tokens_kept for o in free.passages)


async def test_async_matches_sync() -> None:
    passages = [Passage("abcdEFgh"), Passage("ijklMNOP")]
    sync = prune_passages(spec(), passages, "q?", CFG.with_overrides(keep_rate=0.3), min_tokens_per_passage=2)
    got = await aprune_passages(spec(), passages, "q?", CFG.with_overrides(keep_rate=0.3), min_tokens_per_passage=2)
    assert got.passages == sync.passages
    assert got.result.kept_indices.tolist() == sync.result.kept_indices.tolist()
