"""Query-aware pruning of several passages (retrieved documents, nodes) scored together as one prompt.

The passages and the question form one chat prompt: the instruction as system message, then a user
message holding ``Passages:``, every passage under a numbered header (``[1] <header>``), and
``Question: <question>``. The speculator scores it once; then

- every passage starts its own chunk grid (``segments``), so no chunk straddles two passages or a passage
  and its header, and chunks score the mean importance of their unprotected tokens only;
- everything outside the passages (instruction, headers, question, chat template) is protected and, by
  default, does not use the budget, which counts the passages' tokens (``keep_rate`` of them,
  ``max_kept_tokens`` at most; see :func:`specprefill.scoring.select_chunks` with segments); with
  ``protected_count_toward_budget`` it does;
- ``min_tokens_per_passage`` then tops every passage up to that many kept tokens, best chunks first;
- the kept character spans are written back passage by passage.

Adapters (the LangChain document compressor, the LlamaIndex node postprocessor) only move their documents
in and out of :class:`Passage` and :class:`PassageOutcome`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
from typing_extensions import Unpack

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.assemble import ResultBuilder
from specprefill.prompt.messages import validate_messages
from specprefill.prompt.prepared import PreparedPrompt, ScoredPrompt, scrub_surrogates
from specprefill.prompt.segments import check_segments, segment_starts_of, token_starts
from specprefill.result import Message, PruneResult
from specprefill.scoring import PickRules, chunk_bounds, fill_chunks, segment_edges
from specprefill.scoring.select import fusion_words, ranking_importance, select_scored
from specprefill.spans import Span, char_spans_to_token_mask, cut_spans, join_spans, kept_char_spans
from specprefill.speculator.base import Speculator

__all__ = [
    "DEFAULT_INSTRUCTION",
    "PASSAGE_LOOKAHEAD",
    "Passage",
    "PassageLayout",
    "PassageOptions",
    "PassageOutcome",
    "PrunedPassages",
    "aprune_passages",
    "layout_passages",
    "protect_passages",
    "protect_scored_passages",
    "prune_passages",
    "score_passages",
    "scored_windows",
    "select_passages",
]

DEFAULT_INSTRUCTION = "Answer the question using the numbered passages below."
"""System message of the scored prompt (protected, never part of the output)."""

PASSAGE_LOOKAHEAD = 16
"""Look-ahead of the integrations' default passage-pruning config (the LangChain compressor, the LlamaIndex
postprocessor). A small speculator first restates the question ("The stone bridge in Lanternfield ..."); its
queries reach the answer tokens only after about ten generated tokens. On the README's RAG questions the
LangChain example keeps 8 answer sentences of its 13 retrieved with 16, 7 with 8."""

PASSAGES_HEADER = "Passages:"
QUESTION_HEADER = "Question:"


class PassageOptions(TypedDict, total=False):
    """Keyword options of :func:`prune_passages` (and of every passage pruner that takes the same)."""

    instruction: str
    """The system message of the joint prompt (default :data:`DEFAULT_INSTRUCTION`)."""
    min_tokens_per_passage: int
    """Every passage keeps at least this many tokens (all of a shorter one); default 0."""


@dataclass(frozen=True)
class Passage:
    """One passage to prune."""

    text: str
    """The text that is pruned and written back."""
    header: str = ""
    """Shown to the speculator after the passage number (e.g. metadata); protected, never output."""
    protected: tuple[Span, ...] = ()
    """``(start, end)`` character spans of ``text`` that are never dropped."""


@dataclass(frozen=True)
class PassageLayout:
    """The joint prompt and where each passage sits in its user message."""

    messages: list[Message]
    """System instruction and the user message (passages and question)."""
    indices: list[int]
    """Index (into the input list) of each laid-out passage: passages without text are left out."""
    windows: list[Span]
    """Character span of each laid-out passage in the user message."""
    protected: list[Span]
    """Caller-protected spans of the passages, in user-message characters."""

    @property
    def content(self) -> str:
        """The user message."""
        return str(self.messages[1]["content"])


@dataclass(frozen=True)
class PassageOutcome:
    """What pruning did to one passage (token counts are speculator tokens of its text)."""

    text: str
    """The kept text (the kept spans joined with the gap marker; the input text when nothing was dropped)."""
    tokens_in: int = 0
    """Tokens of the passage."""
    tokens_kept: int = 0
    """Tokens kept (protected ones included)."""
    protected_tokens: int = 0
    """Tokens kept because they overlap a protected span."""
    minimum_tokens_added: int = 0
    """Tokens added on top of the budget to reach ``min_tokens_per_passage``."""
    pruned: bool = False
    """True when some of the text was dropped."""
    dropped: bool = False
    """True when no visible text survived."""

    @property
    def keep_ratio(self) -> float:
        """``tokens_kept / tokens_in`` (1.0 for an empty passage)."""
        return self.tokens_kept / self.tokens_in if self.tokens_in else 1.0


@dataclass(frozen=True)
class PrunedPassages:
    """The outcome for every input passage plus the result for the whole scored prompt."""

    passages: list[PassageOutcome]
    """One per input passage, in input order."""
    result: PruneResult
    """The whole prompt (instruction, passages, question): kept tokens and statistics."""


def layout_passages(
    passages: Sequence[Passage], question: str | None, instruction: str = DEFAULT_INSTRUCTION
) -> PassageLayout:
    """Lay the passages and the question out as one chat prompt (see the module docstring).

    Passages whose text is empty or white space are left out (they come back unchanged).
    """
    parts = [PASSAGES_HEADER]
    cursor = len(PASSAGES_HEADER)
    indices: list[int] = []
    windows: list[Span] = []
    protected: list[Span] = []
    for i, passage in enumerate(passages):
        if not passage.text.strip():
            continue
        head = scrub_surrogates(passage.header.strip())
        header = f"\n\n[{len(indices) + 1}]" + (f" {head}\n" if head else "\n")
        start = cursor + len(header)
        parts += [header, scrub_surrogates(passage.text)]
        cursor = start + len(passage.text)
        indices.append(i)
        windows.append((start, cursor))
        protected += [(start + max(s, 0), start + min(e, len(passage.text))) for s, e in passage.protected]
    if question is not None and question.strip():
        parts.append(f"\n\n{QUESTION_HEADER} {scrub_surrogates(question.strip())}")
    messages = validate_messages(
        [{"role": "system", "content": instruction}, {"role": "user", "content": "".join(parts)}]
    )
    return PassageLayout(messages=messages, indices=indices, windows=windows, protected=protected)


def score_passages(
    speculator: Speculator,
    layout: PassageLayout,
    config: SpecPrefillConfig,
    *,
    segments: Sequence[Sequence[int]] = (),
) -> ScoredPrompt:
    """Render and score the joint prompt once; everything outside the passages and their protected spans is protected.

    Args:
        speculator: The speculator.
        layout: What :func:`layout_passages` laid out.
        config: Scoring settings.
        segments: Per laid-out passage, character offsets within its text where its chunk grid also restarts.

    Raises:
        PromptError: The speculator's chat template changes the passages' text (kept spans could not be
            mapped back).
        SpeculatorError: Scoring failed and ``config.fallback_on_error`` is off.

    """
    prepared = speculator.prepare(layout.messages, config=config)
    protected, windows = protect_passages(prepared, layout, speculator.name)
    starts = [s + p for (s, e), extra in zip(windows, segments, strict=False) for p in extra if p <= e - s]
    return speculator.score_prompt(replace(prepared, protected=protected), config, segments=[*windows, *starts])


def scored_windows(scored: PreparedPrompt, layout: PassageLayout) -> list[Span]:
    """Each laid-out passage's character window in the rendered prompt (the user message's offset added)."""
    offset = _message_offset(scored)
    return [(s + offset, e + offset) for s, e in layout.windows]


def _message_offset(prepared: PreparedPrompt) -> int:
    """Where the user message (the passages and the question) starts in the rendered prompt."""
    return (prepared.content_spans or [(0, 0), (0, 0)])[1][0]


def protect_passages(
    prepared: PreparedPrompt, layout: PassageLayout, speculator: str
) -> tuple[npt.NDArray[np.bool_], list[Span]]:
    """The protection mask of a rendered passage prompt, and each passage's character window in the rendering.

    Everything outside the passages is protected, and so are the passages' protected spans.

    Raises:
        PromptError: The chat template of ``speculator`` (its name, for the message) changes the passages' text.

    """
    spans = prepared.content_spans or []
    offset = spans[1][0] if len(spans) > 1 else -1
    text, offsets = prepared.text or "", prepared.offsets or []
    if offset < 0 or text[offset : offset + len(layout.content)] != layout.content:
        raise PromptError(
            f"the chat template of speculator {speculator!r} changes the passages text, so kept spans "
            "cannot be mapped back; use a speculator whose template keeps message contents verbatim"
        )
    windows = [(s + offset, e + offset) for s, e in layout.windows]
    inside = np.zeros(len(offsets), dtype=np.bool_)
    for lo, hi in _token_ranges(offsets, windows):
        inside[lo:hi] = True
    extra = char_spans_to_token_mask(offsets, [(s + offset, e + offset) for s, e in layout.protected])
    return ~inside | extra, windows


def protect_scored_passages(scored: ScoredPrompt, layout: PassageLayout, config: SpecPrefillConfig) -> ScoredPrompt:
    """A passage prompt scored elsewhere (e.g. by a server, as plain messages) with the passages' protection.

    Gives what :func:`score_passages` gives for the same speculator: the protection of
    :func:`protect_passages`, the chunk grid restarting at every passage (and at ``config.segment_by``), and no
    importance when the prompt is shorter than ``config.min_prompt_tokens``. Importance does not depend on
    protection or segments, so the server's scores are used as they are.

    Raises:
        PromptError: The template changed the passages' text.

    """
    protected, windows = protect_passages(scored, layout, scored.speculator)
    segments = segment_starts_of(scored, config, check_segments(windows))
    importance = scored.importance if config.long_enough(scored.n_tokens) else None
    return replace(scored, protected=protected, segments=segments, importance=importance)


def select_passages(
    speculator: ResultBuilder,
    scored: ScoredPrompt,
    layout: PassageLayout,
    passages: Sequence[Passage],
    config: SpecPrefillConfig,
    *,
    min_tokens_per_passage: int = 0,
) -> PrunedPassages:
    """Keep the best passage chunks, top passages up to the minimum, and cut every passage to its kept spans.

    Args:
        speculator: The speculator that scored (it builds the :class:`PruneResult`).
        scored: What :func:`score_passages` returned.
        layout: The layout that was scored.
        passages: The input passages, as given to :func:`layout_passages`.
        config: Budget settings (``keep_rate``, ``max_kept_tokens``, ``chunk_size``, ``gap_marker``).
        min_tokens_per_passage: Every passage keeps at least this many tokens (all of a shorter one).

    Returns:
        One :class:`PassageOutcome` per input passage, and the whole prompt's result.

    """
    start = time.perf_counter()
    n = scored.n_tokens
    windows = scored_windows(scored, layout)
    offset = _message_offset(scored)
    ranges = _token_ranges(scored.offsets or [], windows)
    added = [0] * len(ranges)
    words = fusion_words(scored, config)
    ranked = ranking_importance(scored, config, words=words)
    if ranked is None:
        keep = np.ones(n, dtype=np.bool_)
    else:
        keep = np.zeros(n, dtype=np.bool_)
        keep[select_scored(scored, config, ranked=ranked, words=words)] = True
        if min_tokens_per_passage > 0:
            bounds = chunk_bounds(n, config.chunk_size, scored.segments)
            added = [
                fill_chunks(
                    ranked,
                    keep,
                    [(s, e) for s, e in bounds if lo <= s < hi],
                    min(min_tokens_per_passage, hi - lo) - int(keep[lo:hi].sum()),
                    protected=scored.protected,
                    rules=PickRules.of(config),
                    edges=None if scored.segments is None else segment_edges(n, scored.segments),
                    words=words,
                )
                for lo, hi in ranges
            ]
    result = speculator.build_result(
        scored, np.flatnonzero(keep).astype(np.int64), config, seconds=time.perf_counter() - start, ranked=ranked
    )
    outcomes = [PassageOutcome(text=p.text) for p in passages]
    spans = kept_char_spans(scored.offsets or [], result.kept_indices)
    extra = char_spans_to_token_mask(scored.offsets or [], [(s + offset, e + offset) for s, e in layout.protected])
    for j, index in enumerate(layout.indices):
        text, (lo, hi) = passages[index].text, ranges[j]
        local = cut_spans(spans, windows[j])
        whole = local == [(0, len(text))]
        outcomes[index] = PassageOutcome(
            text=text if whole else join_spans(text, local, config.gap_marker),
            tokens_in=hi - lo,
            tokens_kept=int(keep[lo:hi].sum()),
            protected_tokens=int(extra[lo:hi].sum()),
            minimum_tokens_added=added[j],
            pruned=not whole,
            dropped=not any(text[s:e].strip() for s, e in local),
        )
    return PrunedPassages(passages=outcomes, result=result)


def prune_passages(
    speculator: Speculator,
    passages: Sequence[Passage],
    question: str | None,
    config: SpecPrefillConfig,
    **options: Unpack[PassageOptions],
) -> PrunedPassages:
    """Lay out, score and prune passages for a question: layout, :func:`score_passages`, :func:`select_passages`.

    Args:
        speculator: The speculator that scores.
        passages: The passages, in order.
        question: What they should answer (laid out last, protected; None or blank: no question).
        config: Scoring and budget settings.
        **options: ``instruction`` and ``min_tokens_per_passage`` (:class:`PassageOptions`).

    Raises:
        PromptError: The speculator's chat template changes the passages' text.
        SpeculatorError: Scoring failed and ``config.fallback_on_error`` is off.

    """
    layout = layout_passages(passages, question, options.get("instruction", DEFAULT_INSTRUCTION))
    scored = score_passages(speculator, layout, config)
    minimum = options.get("min_tokens_per_passage", 0)
    return select_passages(speculator, scored, layout, passages, config, min_tokens_per_passage=minimum)


async def aprune_passages(
    speculator: Speculator, passages: Sequence[Passage], question: str | None, config: SpecPrefillConfig, **options: Any
) -> PrunedPassages:
    """Async :func:`prune_passages` (same arguments): the work runs in a worker thread, the event loop stays free."""
    return await asyncio.to_thread(prune_passages, speculator, passages, question, config, **options)


def _token_ranges(offsets: Sequence[Span], windows: Sequence[Span]) -> list[tuple[int, int]]:
    """Token range of each character window: the tokens that start inside it (as the segment grid cuts)."""
    return [(token_starts(offsets, [s])[0], token_starts(offsets, [e])[0]) for s, e in windows]
