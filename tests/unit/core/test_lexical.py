"""The question-word channel (specprefill.scoring.lexical) on tiny literal prompts, and through select_scored."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from specprefill import SpecPrefillConfig
from specprefill.errors import ConfigurationError
from specprefill.prompt.assemble import ResultBuilder
from specprefill.prompt.prepared import ScoredPrompt
from specprefill.report_html import render_prune_html
from specprefill.scoring.lexical import (
    STOP_WORDS,
    blend_lexical,
    lexical_scores,
    normal_word,
    question_span,
    question_word_scores,
    with_question_words,
    word_weights,
)
from specprefill.scoring.select import fusion_words, ranking_importance, select_scored


def word_offsets(text: str) -> list[tuple[int, int]]:
    """One token per run of non-space characters (a stand-in tokenizer)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


# --- words and the question ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("word", "normal"), [("Supports", "support"), ("bus", "bus"), ("Python", "python"), ("GNU", "gnu")]
)
def test_normal_word_lowercases_and_drops_a_plural_s(word: str, normal: str) -> None:
    assert normal_word(word) == normal


def test_question_is_the_final_paragraph_without_trailing_space() -> None:
    text = "Doc line one.\nDoc line two.\n\nWhich line?\nAnswer: \n"
    start, end = question_span(text) or (0, 0)
    assert text[start:end] == "Which line?\nAnswer:"


def test_without_a_blank_line_the_last_line_is_the_question() -> None:
    text = "alpha beta gamma delta epsilon\nWhich letter?"
    start, end = question_span(text) or (0, 0)
    assert text[start:end] == "Which letter?"


@pytest.mark.parametrize(
    "text",
    [
        "One line holds it all?",  # nothing before the question
        "short\n\nA question that is much longer than everything before it, so it is no question?",
        "   \n\nWhat?",  # only white space before it
    ],
)
def test_no_question_when_nothing_precedes_it_or_it_is_most_of_the_text(text: str) -> None:
    assert question_span(text) is None


def test_in_a_chat_the_question_comes_from_the_last_content() -> None:
    text = "<s>Doc about cats and dogs.\n\nMore doc.</s><s>Which animal?</s>"
    first, last = (3, 38), (45, 58)
    assert text[last[0] : last[1]] == "Which animal?"
    assert question_span(text, [first, last]) == last


def test_word_weights_are_inverse_frequencies_over_lines_and_sentences() -> None:
    context = "alpha beta.\nbeta gamma. beta delta"
    weights = word_weights(context, "Is alpha or beta or omega here?")
    # three units; alpha in one, beta in all three (weight 0: left out), omega nowhere (left out)
    assert weights == {"alpha": pytest.approx(math.log(4 / 2))}


def test_stop_words_leave_function_words_out_of_the_question_words() -> None:
    # "what" and "does" are rare in this context (one unit each), so without the list they weigh like "alpha"
    context = "what alpha.\nthis does beta.\ngamma delta.\nepsilon zeta"
    question = "What does this alpha do?"
    plain = word_weights(context, question)
    assert set(plain) == {"what", "doe", "thi", "alpha"} and len(set(plain.values())) == 1
    assert word_weights(context, question, stop_words=True) == {"alpha": plain["alpha"]}
    assert {"what", "does", "this", "the"} <= STOP_WORDS


def test_the_defaults_drop_stop_words_from_the_channel_and_the_option_keeps_them() -> None:
    text = "what a day.\nthe zebra ran.\nthe bird flew.\n\nWhat did the zebra do?"
    offsets = word_offsets(text)
    protected = np.zeros(len(offsets), dtype=np.bool_)
    importance = np.full(len(offsets), 0.1, dtype=np.float32)
    scored = ScoredPrompt([0] * len(offsets), protected, text=text, offsets=offsets, importance=importance)
    words = [text[a:b] for a, b in offsets]

    def boosted(config: SpecPrefillConfig) -> set[str]:
        channel = fusion_words(scored, config)
        assert channel is not None
        return {words[i] for i in np.flatnonzero(channel)}

    assert SpecPrefillConfig().lexical_stop_words
    assert boosted(SpecPrefillConfig()) == {"zebra"}
    assert boosted(SpecPrefillConfig(lexical_stop_words=False)) == {"what", "the", "zebra"}


def test_lexical_scores_mark_the_tokens_that_spell_a_question_word() -> None:
    text = "the cat sat.\nthe dog ran.\nthe bird flew.\n\nWhat did the dog do?"
    offsets = word_offsets(text)
    protected = np.zeros(len(offsets), dtype=np.bool_)
    protected[1] = True  # "cat" is protected: never boosted
    question = question_span(text)
    assert question is not None
    scores = lexical_scores(text, offsets, protected, question)
    words = [text[a:b] for a, b in offsets]
    boosted = {words[i] for i in np.flatnonzero(scores)}
    assert boosted == {"dog"}  # "the" is on every line; the question's own words are not boosted
    assert scores[words.index("dog")] == pytest.approx(math.log(4 / 2))


def test_lexical_scores_reject_mismatched_lengths() -> None:
    with pytest.raises(ConfigurationError, match="offsets"):
        lexical_scores("a b\n\nb?", [(0, 1)], np.zeros(2, dtype=np.bool_), (5, 7))


# --- blending -------------------------------------------------------------------------------------------------
def test_blend_adds_weight_times_the_free_peak_at_the_strongest_match() -> None:
    imp = np.array([0.9, 0.2, 0.4, 0.1], dtype=np.float32)
    lex = np.array([0.0, 2.0, 1.0, 0.0], dtype=np.float32)
    protected = np.array([True, False, False, False])
    out = blend_lexical(imp, lex, protected, 0.5)
    # peak over free tokens is 0.4 (token 0 is protected); the top match gains 0.5 * 0.4
    np.testing.assert_allclose(out, [0.9, 0.2 + 0.2, 0.4 + 0.1, 0.1], rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("lex", "weight"), [([0.0, 0.0, 0.0], 1.0), ([1.0, 0.0, 0.0], 0.0)], ids=["no match", "weight 0"]
)
def test_blend_leaves_importance_alone_without_a_match_or_weight(lex: list[float], weight: float) -> None:
    imp = np.array([0.3, 0.2, 0.1], dtype=np.float32)
    out = blend_lexical(imp, np.array(lex, dtype=np.float32), np.zeros(3, dtype=np.bool_), weight)
    np.testing.assert_array_equal(out, imp)


def test_blend_takes_the_peak_over_finite_scores_only() -> None:
    imp = np.array([np.nan, 0.2, 0.4], dtype=np.float32)
    out = blend_lexical(imp, np.array([0.0, 1.0, 0.0], dtype=np.float32), np.zeros(3, dtype=np.bool_), 1.0)
    np.testing.assert_allclose(out[1:], [0.6, 0.4], rtol=1e-6)


def test_blend_rejects_shapes_that_differ() -> None:
    with pytest.raises(ConfigurationError, match="differ"):
        blend_lexical(np.zeros(3), np.zeros(2), np.zeros(3, dtype=np.bool_), 1.0)


def test_a_prompt_without_text_or_question_keeps_its_importance() -> None:
    imp = np.array([0.3, 0.2], dtype=np.float32)
    protected = np.zeros(2, dtype=np.bool_)
    np.testing.assert_array_equal(with_question_words(imp, None, None, protected, 1.0), imp)
    np.testing.assert_array_equal(with_question_words(imp, "ab cd", [(0, 2), (3, 5)], protected, 1.0), imp)


# --- through select_scored ------------------------------------------------------------------------------------
TEXT = "aaa bbb ccc ddd\neee fff ggg hhh\niii zebra jjj kkk\nlll mmm nnn ooo\n\nWhere is the zebra?"


def scored_prompt() -> ScoredPrompt:
    offsets = word_offsets(TEXT)
    n = len(offsets)
    importance = np.full(n, 0.1, dtype=np.float32)
    importance[5] = 1.0  # attention peaks on the second line; the question names a word of the third
    protected = np.zeros(n, dtype=np.bool_)
    protected[16:] = True  # the question
    return ScoredPrompt(list(range(n)), protected, text=TEXT, offsets=offsets, importance=importance)


@pytest.mark.parametrize(("weight", "kept_line"), [(0.0, "eee fff ggg hhh"), (1.0, "iii zebra jjj kkk")])
def test_the_question_word_moves_selection_to_its_line(weight: float, kept_line: str) -> None:
    config = SpecPrefillConfig(
        chunk_size=4, segment_by="none", chunk_context=0, complete_tokens=0, lexical_weight=weight
    ).with_overrides(max_kept_tokens=4, keep_rate=1.0)
    scored = scored_prompt()
    kept = [int(i) for i in select_scored(scored, config) if not scored.protected[i]]
    assert " ".join(TEXT[slice(*scored.offsets[i])] for i in kept) == kept_line


def test_the_paper_preset_has_no_lexical_channel_and_the_defaults_do() -> None:
    assert SpecPrefillConfig.paper().lexical_weight == 0.0
    assert SpecPrefillConfig().lexical_weight > 0


def test_the_result_carries_what_selection_ranked_and_the_html_shades_by_it() -> None:
    config = SpecPrefillConfig(
        chunk_size=4, segment_by="none", chunk_context=0, complete_tokens=0, lexical_weight=1.0
    ).with_overrides(max_kept_tokens=4, keep_rate=1.0)
    scored = scored_prompt()
    result = ResultBuilder().select(scored, config)
    assert result.importance is not None and result.ranked_importance is not None
    zebra = [TEXT[a:b] for a, b in word_offsets(TEXT)].index("zebra")
    assert result.ranked_importance[zebra] == pytest.approx(1.1)  # 0.1 + weight 1 x peak 1 x idf / max idf
    others = np.arange(len(result.importance)) != zebra
    np.testing.assert_array_equal(result.ranked_importance[others], result.importance[others])
    payload = result.to_dict(include_importance=True)
    assert payload["ranked_importance"][zebra] == pytest.approx(1.1)
    assert payload["importance"][zebra] == pytest.approx(0.1)
    assert "ranked_importance" not in result.to_dict()
    assert f"token {zebra} · importance 1.1 · kept" in render_prune_html(result)


def test_without_the_channel_the_ranking_is_the_speculators_importance() -> None:
    config = SpecPrefillConfig(lexical_weight=0.0)
    scored = scored_prompt()
    ranked = ranking_importance(scored, config)
    assert ranked is not None
    np.testing.assert_array_equal(ranked, scored.importance)
    assert ranking_importance(ScoredPrompt([1, 2], np.zeros(2, dtype=np.bool_)), config) is None


# --- rank fusion ----------------------------------------------------------------------------------------------
def test_question_word_scores_are_the_questions_lexical_scores() -> None:
    scored = scored_prompt()
    words = question_word_scores(TEXT, scored.offsets, scored.protected)
    question = question_span(TEXT)
    assert words is not None and question is not None
    np.testing.assert_array_equal(words, lexical_scores(TEXT, scored.offsets or [], scored.protected, question))
    assert question_word_scores(None, None, scored.protected) is None
    assert question_word_scores("ab cd", [(0, 2), (3, 5)], np.zeros(2, dtype=np.bool_)) is None  # no question
    given = with_question_words(scored.importance, TEXT, scored.offsets, scored.protected, 0.5, words=words)
    np.testing.assert_array_equal(
        given, with_question_words(scored.importance, TEXT, scored.offsets, scored.protected, 0.5)
    )


def test_fusion_words_only_when_fusion_and_the_channel_are_on() -> None:
    scored = scored_prompt()
    words = fusion_words(scored, SpecPrefillConfig())
    assert words is not None and words.max() > 0
    assert fusion_words(scored, SpecPrefillConfig(lexical_fusion=0)) is None
    assert fusion_words(scored, SpecPrefillConfig(lexical_weight=0)) is None
    assert fusion_words(ScoredPrompt([1, 2], np.zeros(2, dtype=np.bool_)), SpecPrefillConfig()) is None


@pytest.mark.parametrize(("fusion", "kept_line"), [(0, "eee fff ggg hhh"), (9, "iii zebra jjj kkk")])
def test_rank_fusion_lets_the_question_words_line_win_over_a_light_blend(fusion: int, kept_line: str) -> None:
    # at weight 0.25 the zebra line's chunk averages 0.1625 against attention's line at 0.325: the blend alone
    # keeps attention's line; fused, the zebra line ranks first by question words and second by the blend
    config = SpecPrefillConfig(
        chunk_size=4, segment_by="none", chunk_context=0, complete_tokens=0, lexical_weight=0.25, lexical_fusion=fusion
    ).with_overrides(max_kept_tokens=4, keep_rate=1.0)
    scored = scored_prompt()
    for kept_indices in (select_scored(scored, config), ResultBuilder().select(scored, config).kept_indices):
        kept = [int(i) for i in kept_indices if not scored.protected[i]]
        assert " ".join(TEXT[slice(*scored.offsets[i])] for i in kept) == kept_line
