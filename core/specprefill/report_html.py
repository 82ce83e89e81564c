"""A self-contained HTML view of one pruning: every token shaded by importance, kept vs dropped text.

:func:`render_prune_html` is a pure function of a :class:`~specprefill.result.PruneResult`: no model, no
files, no network. The page has inline CSS only (no scripts, no external assets); every piece of prompt
text is HTML-escaped, and each token carries a tooltip with its index, importance and fate.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from specprefill.result import PruneResult

__all__ = ["importance_shades", "render_prune_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
h2 { font-size: 1.1rem; margin-top: 1.6rem; }
.sub { color: #666; margin-top: 0; }
table.stats { border-collapse: collapse; font-size: .9rem; }
table.stats td { padding: .15rem .8rem .15rem 0; vertical-align: top; }
table.stats td.k { color: #555; }
.legend { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: center; font-size: .9rem;
          margin: .6rem 0; }
.ramp { display: inline-block; width: 10rem; height: .9rem; border: 1px solid #ccc; vertical-align: middle;
        background: linear-gradient(to right, rgba(255,140,0,0), rgba(255,140,0,.85)); }
.prompt { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, SFMono-Regular, Menlo,
          Consolas, monospace; font-size: .85rem; line-height: 1.65; border: 1px solid #ddd; padding: 1rem;
          border-radius: 6px; }
.t { border-radius: 2px; }
.kept { border-bottom: 2px solid #1a7f37; }
.dropped { color: #8c8c8c; text-decoration: line-through; text-decoration-color: #c9c9c9; }
.special { display: inline-block; min-width: .5rem; height: .8rem; margin: 0 1px; vertical-align: middle;
           border: 1px dashed #999; border-radius: 2px; }
.gap { color: #b0b0b0; }
.note { color: #666; font-size: .9rem; }
details { margin-top: 1rem; }
details pre { white-space: pre-wrap; word-wrap: break-word; font-size: .85rem; background: #f6f8fa;
              padding: 1rem; border-radius: 6px; }
"""


def importance_shades(importance: Sequence[float] | npt.NDArray[np.floating] | None, n: int) -> list[float]:
    """Map raw importance scores to shades in ``[0, 1]`` for display.

    Attention mass is heavy-tailed, so scores are compared on a log scale: the 5th percentile and below
    map to 0, the maximum to 1. Missing scores (an unscored prompt) give all zeros.

    Args:
        importance: One score per token, or None.
        n: Number of tokens.

    Returns:
        ``n`` floats in ``[0, 1]``.

    """
    if importance is None or n == 0:
        return [0.0] * n
    values = np.asarray(importance, dtype=np.float64)[:n]
    if values.size < n:
        values = np.concatenate([values, np.zeros(n - values.size)])
    finite = np.where(np.isfinite(values), values, 0.0)
    positive = finite[finite > 0]
    if positive.size == 0:
        return [0.0] * n
    logs = np.log10(np.maximum(finite, positive.min()))
    lo = float(np.percentile(logs, 5))
    hi = float(logs.max())
    if not math.isfinite(hi - lo) or hi - lo <= 0:
        return [1.0 if v > 0 else 0.0 for v in finite]
    return [float(x) for x in np.clip((logs - lo) / (hi - lo), 0.0, 1.0)]


def render_prune_html(result: PruneResult, *, title: str | None = None) -> str:
    """Render a pruning result as one self-contained HTML page.

    The page shows the stats, a legend, and the whole prompt (for chat prompts, as rendered with the chat
    template): kept tokens are underlined, dropped tokens are struck through in grey, and every token's
    background is shaded by its importance as selection ranked it (``result.ranked_importance``: the
    speculator's, plus the question-word channel; ``result.importance`` for results without it). Hovering a
    token shows its index, importance and whether it was kept. Prompts given as token ids (no text offsets)
    are shown as token ids.

    Args:
        result: What :meth:`specprefill.Speculator.prune` returned.
        title: Page title (default: ``"specprefill: kept vs dropped"``).

    Returns:
        The HTML document as a string.

    """
    esc = html.escape
    n = result.original_length
    kept = np.zeros(n, dtype=np.bool_)
    if n:
        kept[np.asarray(result.kept_indices, dtype=np.int64)] = True
    shown = result.ranked_importance if result.ranked_importance is not None else result.importance
    shades = importance_shades(shown, n)
    scores = [float(v) for v in np.asarray(shown, dtype=np.float64)[:n]] if shown is not None else None
    page_title = title or "specprefill: kept vs dropped"
    stats = result.stats

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(page_title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{esc(page_title)}</h1>",
        f'<p class="sub">{stats.tokens_kept} of {stats.tokens_in} tokens kept '
        f"({stats.keep_ratio:.1%}) by speculator {esc(stats.speculator or '?')} "
        f"in {stats.speculator_seconds:.2f} s</p>",
        "<h2>Stats</h2>",
        _stats_table(result),
        "<h2>Prompt</h2>",
        _legend(scored=scores is not None, fallback=stats.fallback),
    ]
    if result.source_text is not None and result.offsets is not None and len(result.offsets) == n:
        tokens = _text_tokens(result.source_text, result.offsets, kept, shades, scores)
    else:
        tokens = _id_tokens(result.input_ids, kept, shades, scores)
    # one line: the container keeps white space, so no separators may go between the token spans
    parts.append('<div class="prompt" id="prompt">' + "".join(tokens) + "</div>")
    parts.append(
        "<details><summary>Kept text (what a base model with another tokenizer receives)</summary>"
        f"<pre>{esc(result.text)}</pre></details>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _stats_table(result: PruneResult) -> str:
    stats = result.stats
    rows = [
        ("tokens in", f"{stats.tokens_in}"),
        ("tokens kept", f"{stats.tokens_kept}"),
        ("keep ratio", f"{stats.keep_ratio:.3f} (asked: keep_rate {stats.keep_rate:g})"),
        ("chunks kept / total", f"{stats.chunks_kept} / {stats.chunks_total}"),
        ("protected tokens", f"{stats.protected_tokens}"),
        ("look-ahead queries", f"{stats.lookahead_queries}"),
        ("speculator windows", f"{stats.windows}"),
        ("speculator seconds", f"{stats.speculator_seconds:.3f}"),
        ("speculator", stats.speculator or "?"),
        ("pruned", "yes" if stats.pruned else "no"),
    ]
    if stats.fallback:
        rows.append(("fallback", f"yes: {stats.fallback_reason or 'speculator failed'}"))
    body = "".join(f'<tr><td class="k">{html.escape(k)}</td><td>{html.escape(v)}</td></tr>' for k, v in rows)
    return f'<table class="stats">{body}</table>'


def _legend(*, scored: bool, fallback: bool) -> str:
    items = [
        '<span><span class="t kept">kept text</span></span>',
        '<span><span class="t dropped">dropped text</span></span>',
        '<span>importance: low <span class="ramp"></span> high</span>',
        '<span><span class="special"></span> special token</span>',
        "<span>hover a token for its index and importance</span>",
    ]
    out = f'<div class="legend">{"".join(items)}</div>'
    if fallback:
        out += '<p class="note">The speculator failed, so the whole prompt was kept (no scores).</p>'
    elif not scored:
        out += (
            '<p class="note">This prompt was not scored (shorter than min_prompt_tokens), so every token was kept.</p>'
        )
    return out


def _token_span(
    index: int, text: str, is_kept: bool, shade: float, scores: list[float] | None, *, special: bool = False
) -> str:
    fate = "kept" if is_kept else "dropped"
    score = f"{scores[index]:.4g}" if scores is not None else "not scored"
    tip = f"token {index} · importance {score} · {fate}"
    style = f' style="background:rgba(255,140,0,{0.85 * shade:.3f})"' if shade > 0 else ""
    if special:
        return f'<span class="t {fate} special" title="{html.escape(tip)}"{style}></span>'
    return f'<span class="t {fate}" title="{html.escape(tip)}"{style}>{html.escape(text)}</span>'


def _text_tokens(
    text: str,
    offsets: Sequence[tuple[int, int]],
    kept: npt.NDArray[np.bool_],
    shades: list[float],
    scores: list[float] | None,
) -> list[str]:
    out: list[str] = []
    cursor = 0
    for i, (start, end) in enumerate(offsets):
        start, end = int(start), int(end)
        if start > cursor:
            out.append(f'<span class="gap">{html.escape(text[cursor:start])}</span>')
            cursor = start
        if end <= start:
            out.append(_token_span(i, "", bool(kept[i]), shades[i], scores, special=True))
            continue
        piece = text[max(start, cursor) : end]
        if piece:
            out.append(_token_span(i, piece, bool(kept[i]), shades[i], scores))
        cursor = max(cursor, end)
    if cursor < len(text):
        out.append(f'<span class="gap">{html.escape(text[cursor:])}</span>')
    return out


def _id_tokens(
    ids: Sequence[int], kept: npt.NDArray[np.bool_], shades: list[float], scores: list[float] | None
) -> list[str]:
    return [_token_span(i, f"⟨{int(t)}⟩ ", bool(kept[i]), shades[i], scores) for i, t in enumerate(ids)]
