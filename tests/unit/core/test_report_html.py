"""The HTML report is a pure function of a PruneResult: built here from literal data, no model."""

from __future__ import annotations

import html
import html.parser
import re

import numpy as np
import pytest

from specprefill.report_html import __all__ as report_all
from specprefill.report_html import importance_shades, render_prune_html
from specprefill.result import PruneResult, PruneStats


def _result(
    text: str,
    offsets: list[tuple[int, int]] | None,
    kept: list[int],
    importance: list[float] | None,
    *,
    fallback: bool = False,
) -> PruneResult:
    n = len(offsets) if offsets is not None else len(importance or kept)
    stats = PruneStats(
        tokens_in=n,
        tokens_kept=len(kept),
        keep_ratio=len(kept) / n,
        keep_rate=0.5,
        chunks_total=2,
        chunks_kept=1,
        speculator_seconds=0.25,
        pruned=importance is not None and len(kept) < n,
        fallback=fallback,
        fallback_reason="RuntimeError: boom <b>" if fallback else None,
        speculator="tiny<spec>",
    )
    return PruneResult(
        original_length=n,
        input_ids=list(range(100, 100 + n)),
        kept_indices=np.asarray(kept, dtype=np.int64),
        kept_token_ids=[100 + i for i in kept],
        text="kept & text",
        stats=stats,
        importance=None if importance is None else np.asarray(importance, dtype=np.float32),
        source_text=text if offsets is not None else None,
        offsets=offsets,
    )


class _Collector(html.parser.HTMLParser):
    """Collects token spans (class, title, text) and checks the document parses."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[dict[str, str]] = []
        self._current: dict[str, str] | None = None
        self.has_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.has_script = True
        if tag == "span" and "t" in a.get("class", "").split():
            self._current = {"class": a["class"], "title": a.get("title", ""), "style": a.get("style", ""), "text": ""}
            self.tokens.append(self._current)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current["text"] += data


def test_all_is_explicit() -> None:
    assert sorted(report_all) == ["importance_shades", "render_prune_html"]


def test_tokens_kept_dropped_escaped_and_shaded() -> None:
    text = '<b>Tom & Jerry</b> said "hi"'
    offsets = [(0, 3), (3, 6), (6, 8), (8, 14), (14, 18), (18, 23), (23, 28)]
    importance = [0.5, 0.01, 0.02, 0.3, 0.001, 0.2, 0.9]
    page = render_prune_html(_result(text, offsets, [0, 3, 5, 6], importance))

    assert page.startswith("<!DOCTYPE html>")
    assert "<b>Tom" not in page  # raw prompt markup never reaches the page
    for escaped in ("&lt;b&gt;", " &amp;", "&lt;/b&gt;", "&quot;hi&quot;"):
        assert escaped in page
    assert "tiny&lt;spec&gt;" in page  # stats are escaped too
    assert "kept &amp; text" in page

    parser = _Collector()
    parser.feed(page)
    assert not parser.has_script
    tokens = [t for t in parser.tokens if "title" in t and t["title"].startswith("token ")]
    assert "".join(t["text"] for t in tokens) == text  # the whole prompt, in order
    prompt_div = re.search(r'<div class="prompt" id="prompt">(.*?)</div>', page, flags=re.S)
    assert prompt_div is not None
    assert html.unescape(re.sub(r"<[^>]+>", "", prompt_div.group(1))) == text  # nothing added between tokens
    fates = ["kept" if "kept" in t["class"].split() else "dropped" for t in tokens]
    assert fates == ["kept", "dropped", "dropped", "kept", "dropped", "kept", "kept"]
    assert tokens[1]["title"] == "token 1 · importance 0.01 · dropped"
    assert tokens[6]["title"] == "token 6 · importance 0.9 · kept"
    # the most important token is shaded darkest; the least important not at all
    assert "0.850" in tokens[6]["style"]
    assert tokens[4]["style"] == ""
    assert "legend" in page and "kept text" in page and "dropped text" in page


def test_gaps_and_special_tokens() -> None:
    text = "AB  CD"
    offsets = [(0, 0), (0, 2), (4, 6)]  # a zero-width special token and an uncovered gap
    page = render_prune_html(_result(text, offsets, [0, 1], [0.1, 0.2, 0.3]))
    parser = _Collector()
    parser.feed(page)
    tokens = [t for t in parser.tokens if t["title"].startswith("token ")]
    assert "special" in tokens[0]["class"]
    assert [t["text"] for t in tokens] == ["", "AB", "CD"]
    assert '<span class="gap">  </span>' in page


def test_overlapping_offsets_do_not_repeat_text() -> None:
    text = "é!"
    offsets = [(0, 1), (0, 1), (1, 2)]  # byte-level BPE: two tokens share one character
    page = render_prune_html(_result(text, offsets, [0, 1, 2], [1.0, 1.0, 1.0]))
    parser = _Collector()
    parser.feed(page)
    assert "".join(t["text"] for t in parser.tokens if t["title"].startswith("token ")) == text


def test_unscored_and_fallback_notes() -> None:
    offsets = [(0, 1), (1, 2)]
    unscored = render_prune_html(_result("ab", offsets, [0, 1], None))
    assert "not scored" in unscored and "background" not in re.sub(r"<style>.*?</style>", "", unscored, flags=re.S)
    fallback = render_prune_html(_result("ab", offsets, [0, 1], None, fallback=True))
    assert "speculator failed" in fallback
    assert "RuntimeError: boom &lt;b&gt;" in fallback


def test_token_id_prompt_and_title() -> None:
    page = render_prune_html(_result("", None, [1], [0.1, 0.9]), title="My <report>")
    assert "<title>My &lt;report&gt;</title>" in page
    assert "⟨100⟩" in page and "⟨101⟩" in page


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, [0.0, 0.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),
        ([1e-4, 1e-2, 1.0], [0.0, 0.5, 1.0]),
    ],
)
def test_importance_shades(values: list[float] | None, expected: list[float]) -> None:
    shades = importance_shades(values, 3)
    assert len(shades) == 3
    # the 5th percentile of the log scores is the zero point; compare loosely
    assert shades == pytest.approx(expected, abs=0.06)
    assert all(0.0 <= s <= 1.0 for s in shades)


def test_importance_shades_handles_nan_and_short_input() -> None:
    shades = importance_shades([float("nan"), 1.0], 4)
    assert len(shades) == 4 and shades[1] == 1.0 and shades[0] == 0.0
