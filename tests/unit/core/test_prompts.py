"""Chat messages: validation, locating contents in the template rendering, protection masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fakes import BosSpeculator, WordSpeculator, chatml
from specprefill import EmptyPromptError, PromptError, SpecPrefillConfig
from specprefill.prompt.messages import (
    locate_contents,
    locate_contents_by_template,
    message_text,
    plain_chat,
    validate_messages,
)
from specprefill.prompt.prepared import ScoredPrompt, prompt_kind, scrub_surrogates
from specprefill.prompt.protect import check_spans, protection_for_messages
from specprefill.prompt.segments import final_paragraph_start
from specprefill.speculator.base import ImportanceResult


def char_offsets(text: str) -> list[tuple[int, int]]:
    """One token per character: offsets are easy to reason about."""
    return [(i, i + 1) for i in range(len(text))]


# --- message_text / validate_messages --------------------------------------------------------------
def test_message_text_forms() -> None:
    assert message_text({"role": "user", "content": "hi"}) == "hi"
    assert message_text({"role": "user", "content": None}) == ""
    assert message_text({"role": "user"}) == ""
    parts = [{"type": "text", "text": "a "}, "b ", {"type": "text", "text": "c"}]
    assert message_text({"role": "user", "content": parts}) == "a b c"


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
        [{"type": "text", "text": "ok"}, {"type": "input_audio", "input_audio": {}}],
        [42],
        42,
        {"type": "text", "text": "a dict, not a list"},
    ],
)
def test_message_text_rejects_non_text(content: Any) -> None:
    with pytest.raises(PromptError):
        message_text({"role": "user", "content": content})


def test_validate_messages_normalises_content() -> None:
    out = validate_messages([{"role": "user", "content": [{"type": "text", "text": "x"}], "name": "bob"}])
    assert out == [{"role": "user", "content": "x", "name": "bob"}]


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([], EmptyPromptError, "empty"),
        ([{"role": "user", "content": "   "}], EmptyPromptError, "empty"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "\n"}], EmptyPromptError, "empty"),
        ([{"content": "no role"}], PromptError, "role"),
        ([{"role": 3, "content": "bad role"}], PromptError, "role"),
        (["just a string"], PromptError, "message 0"),
        ([{"role": "user", "content": "ok"}, None], PromptError, "message 1"),
    ],
)
def test_validate_messages_errors(messages: list[Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        validate_messages(messages)


# --- locating contents -------------------------------------------------------------------------------
def test_locate_contents_with_stripping_template() -> None:
    messages = [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "What is 2+2?\n"}]
    rendered = chatml(messages)
    spans = locate_contents(rendered, [m["content"] for m in messages])
    assert [rendered[s:e] for s, e in spans] == ["Be brief.", "What is 2+2?"]


def test_locate_contents_missing_and_empty() -> None:
    rendered = "<a>hello</a><b></b>"
    spans = locate_contents(rendered, ["hello", "", "absent"])
    assert spans[0] == (3, 8)
    assert spans[1][0] == spans[1][1] and spans[2][0] == spans[2][1]  # empty spans at the cursor


def test_locate_by_template_is_not_fooled_by_template_words() -> None:
    messages = [{"role": "system", "content": "user"}, {"role": "user", "content": "im_start"}]
    rendered = chatml(messages)
    naive = locate_contents(rendered, [m["content"] for m in messages])
    assert naive[0] == (rendered.index("user"), rendered.index("user") + 4)  # the role marker, wrongly
    spans = locate_contents_by_template(rendered, messages, chatml)
    start = len("<|im_start|>system\n")
    assert spans[0] == (start, start + len("user"))
    s, e = spans[1]
    assert rendered[s:e] == "im_start" and rendered[s - 1] == "\n" and rendered[e:].startswith("<|im_end|>")


def test_locate_by_template_handles_stripping_and_repeats() -> None:
    messages = [
        {"role": "user", "content": " same "},
        {"role": "assistant", "content": "same"},
        {"role": "user", "content": "same\n"},
    ]
    rendered = chatml(messages)
    spans = locate_contents_by_template(rendered, messages, chatml)
    assert [rendered[s:e] for s, e in spans] == ["same", "same", "same"]
    assert spans[0][1] < spans[1][0] < spans[2][0]


def test_locate_by_template_falls_back_when_template_rewrites_content() -> None:
    def shouting(messages: list[dict[str, Any]]) -> str:
        return "".join(f"[{m['role']}] {m['content'].upper()}\n" for m in messages)

    messages = [{"role": "user", "content": "abc DEF"}]
    rendered = shouting(messages)
    spans = locate_contents_by_template(rendered, messages, shouting)
    assert spans[0][0] == spans[0][1]  # not found: treated as template, like locate_contents does


def test_locate_by_template_falls_back_when_render_fails() -> None:
    calls = {"n": 0}

    def flaky(messages: list[dict[str, Any]]) -> str:
        calls["n"] += 1
        raise RuntimeError("template error")

    spans = locate_contents_by_template("<u>hello</u>", [{"role": "user", "content": "hello"}], flaky)
    assert spans == [(3, 8)] and calls["n"] == 1


def test_plain_chat_layout() -> None:
    text = plain_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert text == "System: S\n\nUser: Q\n\nAssistant:"


# --- protection_for_messages ----------------------------------------------------------------------
def _protect(messages: list[dict[str, Any]], **cfg: Any) -> tuple[str, list[tuple[int, int]], np.ndarray]:
    rendered = chatml(messages)
    spans = locate_contents_by_template(rendered, messages, chatml)
    mask = protection_for_messages(char_offsets(rendered), rendered, messages, spans, SpecPrefillConfig(**cfg))
    return rendered, spans, mask


def _kept_text(rendered: str, mask: np.ndarray) -> str:
    return "".join(ch for ch, keep in zip(rendered, mask, strict=True) if keep)


MESSAGES = [
    {"role": "system", "content": "SYSTEMPROMPT"},
    {"role": "user", "content": "old question"},
    {"role": "assistant", "content": "old answer"},
    {"role": "user", "content": "longdocument then FINALQ"},
]


def test_protection_defaults_template_system_and_question() -> None:
    rendered, spans, mask = _protect(MESSAGES)
    assert mask.shape == (len(rendered),)
    # every template character is protected
    content_chars = np.zeros(len(rendered), dtype=bool)
    for s, e in spans:
        content_chars[s:e] = True
    assert mask[~content_chars].all()
    # the whole system prompt and (default 256 tokens) the whole short final question
    kept = _kept_text(rendered, mask)
    assert "SYSTEMPROMPT" in kept and "longdocument then FINALQ" in kept
    # earlier turns are not protected
    s, e = spans[1]
    assert not mask[s:e].any()
    s, e = spans[2]
    assert not mask[s:e].any()


def test_protection_question_tail_only() -> None:
    rendered, spans, mask = _protect(MESSAGES, protect_question_tokens=6)
    s, e = spans[3]
    assert rendered[s:e][-6:] == "FINALQ"
    assert mask[e - 6 : e].all() and not mask[s : e - 6].any()


def test_the_question_is_the_final_paragraph_of_the_last_user_message() -> None:
    document = "Doc line one.\nDoc line two.\n\nSecond paragraph of the document."
    messages = [{"role": "user", "content": document + "\n\nQuestion: Which line?"}]
    rendered, _, mask = _protect(messages, protect_template=False)
    assert _kept_text(rendered, mask) == "Question: Which line?"
    _, _, capped = _protect(messages, protect_template=False, protect_question_tokens=5)
    assert _kept_text(rendered, capped) == "line?"  # the cap takes the question's last tokens
    assert final_paragraph_start("a\n\nb\n\n") == 3 and final_paragraph_start("a\nb") is None  # trailing blanks
    _, _, whole = _protect(messages, protect_template=False, protect_question_tokens=None)
    assert _kept_text(rendered, whole) == messages[0]["content"]


def test_protection_zero_and_none_semantics() -> None:
    _, spans, mask = _protect(MESSAGES, protect_question_tokens=0, protect_system_tokens=0)
    assert not mask[spans[0][0] : spans[0][1]].any()
    assert not mask[spans[3][0] : spans[3][1]].any()
    _, spans, mask = _protect(MESSAGES, protect_question_tokens=None, protect_system_tokens=3)
    s, e = spans[0]
    assert mask[s : s + 3].all() and not mask[s + 3 : e].any()
    assert mask[spans[3][0] : spans[3][1]].all()


def test_protection_template_off() -> None:
    _, _, mask = _protect(MESSAGES, protect_template=False, protect_system_tokens=0, protect_question_tokens=0)
    assert not mask.any()


def test_protection_developer_role_counts_as_system() -> None:
    messages = [{"role": "developer", "content": "DEVRULES"}, {"role": "user", "content": "q"}]
    rendered, _, mask = _protect(messages, protect_template=False)
    assert _kept_text(rendered, mask) == "DEVRULESq"


def test_protection_without_user_message() -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "assistant", "content": "partial answer"}]
    rendered, _, mask = _protect(messages, protect_template=False)
    assert _kept_text(rendered, mask) == "sys"


# --- protected span arguments ------------------------------------------------------------------------
def test_check_spans() -> None:
    assert check_spans([(0, 3), [4, 5], (np.int64(6), np.int64(7))]) == [(0, 3), (4, 5), (6, 7)]
    assert check_spans(()) == []
    for bad in ([(0, "a")], ["ab"], [(1, 2, 3)], [(True, 3)], [(0.5, 2)]):
        with pytest.raises(PromptError, match="span"):
            check_spans(bad)
    with pytest.raises(PromptError, match="pairs"):
        check_spans(5)  # type: ignore[arg-type]


def test_scrub_surrogates_keeps_length() -> None:
    assert scrub_surrogates("plain 中文 😀") == "plain 中文 😀"
    assert scrub_surrogates("a\ud800b\udfffc") == "a\ufffdb\ufffdc"
    broken = b"ok \xff end".decode("utf-8", errors="surrogateescape")
    assert scrub_surrogates(broken) == "ok \ufffd end" and len(scrub_surrogates(broken)) == len(broken)


def test_validate_messages_scrubs_surrogates() -> None:
    out = validate_messages([{"role": "user", "content": "x\udc80y"}])
    assert out[0]["content"] == "x\ufffdy"


# --- Speculator.prune with model-free speculators (hermetic) -----------------------------------------------
FAST = {"min_prompt_tokens": 0, "chunk_size": 4, "lookahead": 1, "segment_by": "none"}  # the paper grid


def test_fake_prune_text_keeps_important_chunks() -> None:
    spec = BosSpeculator()
    prompt = "abcdefghXYZWijklmnop"  # BOS + 20 chars = 21 tokens; the chunk of tokens 8..11 holds "hXYZ"
    r = spec.prune(prompt, keep_rate=0.1, **FAST)
    assert r.kept_indices.tolist() == [8, 9, 10, 11] == r.position_ids
    assert r.text == "… hXYZ …"
    assert r.kept_spans == [(7, 11)]


def test_fake_prune_messages_locate_real_content() -> None:
    spec = BosSpeculator()
    messages = [
        {"role": "user", "content": "user"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "xx QQ yy"},
    ]
    prepared = spec.prepare(messages)
    s, e = prepared.content_spans[0]  # type: ignore[index]
    assert prepared.text is not None and prepared.text[s:e] == "user" and prepared.text[s - 1] == "\n"
    r = spec.prune(messages, protect_question_tokens=0, keep_rate=0.01, **FAST)
    assert r.messages is not None
    assert [m["role"] for m in r.messages] == ["user", "assistant", "user"]
    assert r.messages[0]["content"] == r.messages[1]["content"] == ""  # wholly dropped contents
    assert "Q" in r.messages[2]["content"] and r.messages[2]["content"].endswith("…")
    r = spec.prune(messages, keep_rate=0.01, **FAST)  # by default the last user turn is protected
    assert r.messages is not None and r.messages[2]["content"] == "xx QQ yy"


def test_fake_prune_template_that_rewrites_content_keeps_it_whole() -> None:
    def shouting(messages: list[dict[str, Any]]) -> str:
        return "".join(f"[{m['role']}] {m['content'].upper()}\n" for m in messages)

    spec = BosSpeculator(template=shouting)
    messages = [{"role": "user", "content": "keep me " * 5}]
    r = spec.prune(messages, keep_rate=0.1, **FAST)
    assert r.messages is not None
    assert r.messages[0]["content"] == messages[0]["content"]  # not found in the rendering: passed on whole


def test_fake_prune_token_ids_decodes_kept_runs() -> None:
    spec = BosSpeculator()
    ids = spec.encode("abcdABCDefgh")[0]
    r = spec.prune(ids, keep_rate=0.1, **FAST)
    assert r.kept_indices.tolist() == [4, 5, 6, 7]
    assert r.text == "… ABCD …"
    assert r.offsets is None and r.kept_spans == []


def test_fake_prune_offsets_without_spaces_do_not_add_markers() -> None:
    spec = WordSpeculator()
    prompt = "aa bb cc EE FF GG HH ii jj kk ll"  # BOS + 11 words: the second chunk of 4 is all upper case
    r = spec.prune(prompt, keep_rate=0.1, **FAST)
    assert r.text == "… EE FF GG HH …"


def test_fake_prune_stats_for_passthrough_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    spec = BosSpeculator()
    r = spec.prune("short prompt")
    assert not r.stats.pruned and r.stats.windows == 0 and r.text == "short prompt"

    def boom(input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        raise MemoryError("simulated")

    spec.score = boom  # type: ignore[method-assign]
    r = spec.prune("X" * 50, **FAST)
    assert r.stats.fallback and r.stats.fallback_reason == "MemoryError: simulated"
    assert r.stats.tokens_kept == r.original_length == 51


# --- score_prompt, select and segments -------------------------------------------------------------------
def test_prompt_kind_is_decided_once() -> None:
    assert prompt_kind("hi") == ("text", "hi")
    assert prompt_kind(iter([1, 2])) == ("token_ids", [1, 2])
    assert prompt_kind([{"role": "user", "content": "x"}])[0] == "messages"
    for bad, error in [(b"x", PromptError), ({"role": "user"}, PromptError), (3, PromptError), ([], EmptyPromptError)]:
        with pytest.raises(error):
            prompt_kind(bad)


def test_score_prompt_scores_without_selecting_and_select_equals_prune() -> None:
    spec = BosSpeculator()
    prompt = "abcdefghXYZWijklmnop"
    scored = spec.score_prompt(prompt, **FAST)
    assert isinstance(scored, ScoredPrompt) and scored.kind == "text" and scored.text == prompt
    assert scored.n_tokens == 21 and scored.importance is not None and len(scored.importance) == 21
    assert scored.offsets is not None and scored.offsets[0] == (0, 0) and not scored.protected.any()
    assert scored.segments is None and not scored.fallback and scored.speculator == "char-fake"
    assert scored.queries == 1 and scored.windows == 1 and scored.speculator_seconds > 0
    selected = spec.select(scored, keep_rate=0.1, **FAST)
    pruned = spec.prune(prompt, keep_rate=0.1, **FAST)
    assert selected.kept_indices.tolist() == pruned.kept_indices.tolist() == [8, 9, 10, 11]
    assert selected.text == pruned.text and selected.position_ids == pruned.position_ids
    strip = {"speculator_seconds"}
    assert {k: v for k, v in selected.stats.to_dict().items() if k not in strip} == {
        k: v for k, v in pruned.stats.to_dict().items() if k not in strip
    }


def test_score_prompt_short_and_failing_prompts_are_not_scored() -> None:
    spec = BosSpeculator()
    short = spec.score_prompt("short prompt")
    assert short.importance is None and not short.fallback and short.windows == 0

    def boom(input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        raise MemoryError("simulated")

    spec.score = boom  # type: ignore[method-assign]
    failed = spec.score_prompt("X" * 50, **FAST)
    assert failed.importance is None and failed.fallback and failed.fallback_reason == "MemoryError: simulated"
    assert spec.select(failed).kept_indices.tolist() == list(range(51))


def test_caller_segments_restart_the_grid() -> None:
    spec = BosSpeculator()
    prompt = "abcXYZdefghijklm"  # BOS + 16 characters; character i is token i + 1
    paper = spec.prune(prompt, keep_rate=0.1, **FAST)
    assert paper.text == "… XYZd …"  # the paper's chunk (4, 8) straddles the passage end
    scored = spec.score_prompt(prompt, segments=[(3, 6)], **FAST)
    assert scored.segments == [4, 7]
    r = spec.select(scored, keep_rate=0.17, **FAST)  # ceil(0.17 * 17) = 3 tokens
    assert r.text == "… XYZ …" and r.kept_indices.tolist() == [4, 5, 6]
    assert r.stats.chunks_total == 5 and r.stats.chunks_kept == 1  # (0,4) (4,7) (7,11) (11,15) (15,17)
    assert spec.prune(prompt, keep_rate=0.17, segments=[3, 6], **FAST).text == r.text  # offsets work too
    with pytest.raises(PromptError, match="need a text"):
        spec.prune(spec.encode(prompt)[0], segments=[(3, 6)], **FAST)


def test_segment_by_levels_from_config() -> None:
    spec = BosSpeculator()
    GRID = {k: v for k, v in FAST.items() if k != "segment_by"}  # noqa: N806
    text = "ab. XY cd.\n\nef"
    assert spec.score_prompt(text, segment_by="paragraphs", **GRID).segments == [13]
    assert spec.score_prompt(text, segment_by="sentences", **GRID).segments == [4, 13]
    assert spec.score_prompt(text, segment_by="messages", **GRID).segments == []  # text has no messages
    assert spec.score_prompt(spec.encode(text)[0], segment_by="sentences", **GRID).segments == []
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello there"}]
    scored = spec.score_prompt(messages, segment_by="messages", **GRID)
    spans = scored.content_spans
    assert scored.kind == "messages" and spans is not None
    assert scored.segments == [p for span in spans for p in span]  # one character per token, no BOS for chats


async def test_ascore_prompt_matches_score_prompt() -> None:
    spec = BosSpeculator()
    a = await spec.ascore_prompt("abcXYZdefghijklm", segments=[(3, 6)], **FAST)
    b = spec.score_prompt("abcXYZdefghijklm", segments=[(3, 6)], **FAST)
    assert a.segments == b.segments and a.importance is not None and b.importance is not None
    np.testing.assert_array_equal(a.importance, b.importance)


def test_score_prompt_accepts_a_prepared_or_scored_prompt() -> None:
    spec = BosSpeculator()
    prepared = spec.prepare("abcXYZdefghijklm")
    scored = spec.score_prompt(prepared, protected_spans=[(0, 2)], segments=[3], **FAST)
    assert scored.protected.tolist()[:4] == [True, True, True, False]  # the zero-width BOS sits at 0
    assert scored.segments == [4] and not prepared.protected.any()  # the input is not changed
    again = spec.score_prompt(scored, **FAST)  # a scored prompt is a prepared one: scored afresh
    assert again.segments is None and again.protected.tolist() == scored.protected.tolist()
