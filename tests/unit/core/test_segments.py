"""Segment boundaries from text (messages, paragraphs, sentences, caller passages) mapped to tokens."""

from __future__ import annotations

import pytest

from specprefill.errors import PromptError
from specprefill.prompt.segments import boundary_chars, check_segments, segment_starts, token_starts


def test_levels_include_the_coarser_ones() -> None:
    text = "One. Two!\n\nThree? Four 3.5 five"
    #       0123456789 0 1234567890123456789
    assert boundary_chars(text, "none") == []
    assert boundary_chars(text, "messages") == []
    assert boundary_chars(text, "paragraphs") == [11]
    assert boundary_chars(text, "sentences") == [4, 11, 17]  # "3.5" is not a sentence end
    assert boundary_chars(text, "messages", [(0, 4), (5, 9)]) == [4, 5, 9]  # 0 is no boundary
    assert set(boundary_chars(text, "messages", [(0, 4)])) <= set(boundary_chars(text, "sentences", [(0, 4)]))


def test_paragraphs_allow_spaces_on_the_blank_line_and_several_blank_lines() -> None:
    assert boundary_chars("a\n \t\nb", "paragraphs") == [5]
    assert boundary_chars("a\n\n\n\nb\nc", "paragraphs") == [5]  # a single line break is no paragraph


def test_an_indented_paragraph_starts_at_its_indentation_not_inside_its_first_token() -> None:
    text = "a.\n\n      DPKG_LEVEL\n     Sets"
    assert boundary_chars(text, "paragraphs") == [4]
    # a tokenizer that joins the first word to the space before it (" DP"): the word stays in its paragraph
    offsets = [(0, 1), (1, 2), (2, 4), (4, 9), (9, 12), (12, 14), (14, 20), (20, 25), (25, 30)]
    assert [text[a:b] for a, b in offsets] == ["a", ".", "\n\n", "     ", " DP", "KG", "_LEVEL", "\n    ", " Sets"]
    assert segment_starts(offsets, text, "paragraphs") == [3]
    assert segment_starts(offsets, text, "sentences") == [3]  # the sentence end (with its line breaks) agrees


def test_sentence_ends_with_quotes_brackets_and_cjk() -> None:
    assert boundary_chars('He said "stop." Then (see above.) ok', "sentences") == [15, 33]
    assert boundary_chars("第一句。第二句！第三句？", "sentences") == [4, 8]  # the end of the text is no boundary
    # hard-wrapped text: a single line break ends no sentence, a sentence end before one does
    assert boundary_chars("a sentence wrapped\nover two lines. Next", "sentences") == [34]
    assert boundary_chars("line one\nline two", "sentences") == []
    assert boundary_chars("One.\n\nTwo.\nThree", "sentences") == [6, 11]  # line breaks stay with their sentence
    assert boundary_chars("Wait... what?! Yes", "sentences") == [7, 14]


def test_token_starts_maps_to_the_first_token_at_or_after() -> None:
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]  # a BOS and a zero-width special at 9
    assert token_starts(offsets, [3, 4, 9, 0, 12, 50]) == [0, 2, 3, 4, 6]
    assert token_starts([], [0, 5]) == [0]
    # offsets that go backwards (a merged special) still give a monotone mapping
    assert token_starts([(0, 2), (5, 6), (2, 5), (6, 8)], [3]) == [1]


def test_check_segments_accepts_offsets_and_spans() -> None:
    assert check_segments([(10, 20), 5, [20, 30]]) == [5, 10, 20, 30]
    assert check_segments(()) == []
    for bad in ([(1, 2, 3)], ["a"], [-1], [(1.5, 2)], [True], 7):
        with pytest.raises(PromptError):
            check_segments(bad)  # type: ignore[arg-type]


def test_segment_starts_for_each_prompt_kind() -> None:
    text = "Ab. Cd.\n\nEf"
    offsets = [(i, i + 1) for i in range(len(text))]
    assert segment_starts(offsets, text, "none") is None  # the paper grid
    assert segment_starts(offsets, text, "none", extra=[5]) == [5]
    assert segment_starts(offsets, text, "paragraphs") == [9]
    assert segment_starts(offsets, text, "sentences", extra=[1]) == [1, 3, 9]
    assert segment_starts(None, None, "sentences") == []  # token ids: nothing to find
    with pytest.raises(PromptError, match="need a text"):
        segment_starts(None, None, "none", extra=[3])
