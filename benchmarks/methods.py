"""The methods compared by the quality benchmark, all as selectors over the speculator's tokenisation.

Every method sees the same :class:`PreparedSample` (the prompt tokenised by the speculator, with the template,
instruction and question protected) and returns kept token indices for each keep rate. Every method keeps the
same number of context tokens, ``round(keep_rate x context tokens)`` (:func:`context_budget`), so keep ratios
are identical: chunk methods score chunks of 32 tokens and take the best with :func:`specprefill.select_chunks`
(the last chunk cut to fit); LongLLMLingua gets the same ``target_token``. Protected tokens are kept by every
method and do not use the budget. Methods:

* ``full`` - the whole prompt (the reference).
* ``specprefill-lah8`` / ``specprefill-lah1`` - Speculative Prefill scoring with look-ahead 8 / 1, and any
  other SpecPrefill variant of :mod:`benchmarks.variants` (config overrides; one speculator pass per sample
  and scoring setting, shared through :class:`ImportanceCache`).
* ``random`` - random chunks (seeded per sample).
* ``head-tail`` - truncation: the chunks nearest the start and the end of the context, alternately.
* ``rag`` - embedding retrieval: chunks ranked by cosine similarity of their MiniLM embedding to the question
  (the paper's RAG baseline, with the packaged all-MiniLM-L6-v2).
* ``longllmlingua`` - LongLLMLingua (``llmlingua`` package) with the same small LM as the speculator; its
  text output is aligned back to speculator tokens (:mod:`benchmarks.llmlingua`).

Methods are built by name in :mod:`benchmarks.catalog`.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.tasks import RenderedPrompt, Sample, render_prompt
from benchmarks.variants import Variant, build_config, scoring_key, segment_starts
from specprefill.config import SpecPrefillConfig
from specprefill.prompt.segments import window_config
from specprefill.scoring import chunk_bounds, select_chunks
from specprefill.spans import char_spans_to_token_mask

__all__ = [
    "ChunkMethod",
    "EmbeddingRetrieval",
    "FullPrompt",
    "HeadTail",
    "ImportanceCache",
    "Method",
    "PreparedSample",
    "RandomChunks",
    "Selection",
    "SpecPrefillMethod",
    "broadcast_chunk_scores",
    "context_budget",
    "head_tail_importance",
    "prepare_sample",
    "random_chunk_importance",
]

Span = tuple[int, int]
FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PreparedSample:
    """A sample's prompt tokenised by the speculator, with its protected tokens."""

    sample: Sample
    prompt: RenderedPrompt
    input_ids: list[int]
    offsets: list[Span]
    protected: npt.NDArray[np.bool_]

    @property
    def n_tokens(self) -> int:
        """Prompt length in speculator tokens."""
        return len(self.input_ids)

    @property
    def context_tokens(self) -> list[int]:
        """Indices of the prunable tokens (the context)."""
        return [int(i) for i in np.flatnonzero(~self.protected)]


def prepare_sample(
    sample: Sample,
    encode: Callable[[str], tuple[list[int], list[Span]]],
    chat: Callable[[str], str] | None = None,
) -> PreparedSample:
    """Render and tokenise a sample; tokens touching the non-context parts are protected.

    Args:
        sample: The task sample.
        encode: Tokeniser returning ids and character offsets (e.g. ``speculator.encode_with_specials``).
        chat: Optional chat renderer for the user message (see :func:`~benchmarks.tasks.render_prompt`).

    Returns:
        The prepared sample.

    """
    prompt = render_prompt(sample, chat)
    ids, offsets = encode(prompt.text)
    protected = char_spans_to_token_mask(offsets, list(prompt.protected_spans))
    for i, (s, e) in enumerate(offsets):  # special tokens (BOS etc.) have empty offsets
        if e <= s:
            protected[i] = True
    return PreparedSample(sample, prompt, list(ids), [(int(s), int(e)) for s, e in offsets], protected)


@dataclass(frozen=True)
class Selection:
    """What one method kept at one keep rate."""

    method: str
    keep_rate: float
    kept: IndexArray
    seconds: float
    """Cost of the method for this selection: scoring (shared across keep rates) plus selection."""
    note: str = ""


class Method(ABC):
    """A way to pick the prompt tokens the base model will see."""

    name: str = "method"

    @abstractmethod
    def select(self, prepared: PreparedSample, keep_rates: Sequence[float]) -> list[Selection]:
        """Kept token indices for every keep rate (in the order given)."""


class FullPrompt(Method):
    """Keep everything (the reference)."""

    name = "full"

    def select(self, prepared: PreparedSample, keep_rates: Sequence[float]) -> list[Selection]:
        """The whole prompt, once per keep rate."""
        kept = np.arange(prepared.n_tokens, dtype=np.int64)
        return [Selection(self.name, rate, kept, 0.0) for rate in keep_rates]


class ChunkMethod(Method):
    """A method that scores tokens once per sample, then keeps the best chunks at every keep rate."""

    chunk_size: int = 32

    @abstractmethod
    def importance(self, prepared: PreparedSample) -> FloatArray:
        """One score per prompt token (higher = keep)."""

    def scored(self, prepared: PreparedSample) -> tuple[FloatArray, float]:
        """The importance and the seconds it took."""
        start = time.perf_counter()
        scores = self.importance(prepared)
        return scores, time.perf_counter() - start

    def segments(self, prepared: PreparedSample) -> list[int] | None:
        """Token indices where the chunk grid restarts (None: one grid from token 0)."""
        return None

    def context_options(self) -> dict[str, Any]:
        """``select_chunks`` options that let a chunk's score see its neighbourhood (none by default)."""
        return {}

    def ranked_scores(self, prepared: PreparedSample, scores: FloatArray) -> FloatArray:
        """The scores selection ranks, from the method's importance (the importance itself by default)."""
        return scores

    def ranking_options(self, prepared: PreparedSample) -> dict[str, Any]:
        """Per-prompt ``select_chunks`` options beyond the grid (none by default)."""
        return {}

    def select(self, prepared: PreparedSample, keep_rates: Sequence[float]) -> list[Selection]:
        """Score once, then keep the best chunks up to :func:`context_budget` tokens at each keep rate."""
        scores, cost = self.scored(prepared)
        scores = self.ranked_scores(prepared, scores)
        segments = self.segments(prepared)
        grid: dict[str, Any] = {} if segments is None else {"segments": segments}
        grid.update(self.context_options())
        grid.update(self.ranking_options(prepared))
        n_context = int((~prepared.protected).sum())
        out = []
        for rate in keep_rates:
            t0 = time.perf_counter()
            kept = select_chunks(
                scores,
                keep_rate=1.0,
                chunk_size=self.chunk_size,
                protected=prepared.protected,
                max_kept_tokens=context_budget(rate, n_context),
                **grid,
            )
            out.append(Selection(self.name, rate, kept, cost + time.perf_counter() - t0))
        return out


class ImportanceCache:
    """Importance per sample and scoring settings, computed once and reused by every variant that shares them.

    Keys are ``(sample id, scoring_key(config))``: variants that differ only in selection fields (keep rate,
    chunk size, segment grid) share one speculator pass. Each hit reports the seconds of the pass that
    computed it, so every variant's cost is its own full scoring cost.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], tuple[FloatArray, float]] = {}
        self.computed = 0
        self.reused = 0

    def get(
        self, prepared: PreparedSample, config: SpecPrefillConfig, compute: Callable[[], FloatArray]
    ) -> tuple[FloatArray, float]:
        """The cached ``(importance, seconds)``, computing it on the first request."""
        key = (prepared.sample.sample_id, scoring_key(config))
        hit = self._store.get(key)
        if hit is None:
            start = time.perf_counter()
            scores = compute()
            hit = (scores, time.perf_counter() - start)
            self._store[key] = hit
            self.computed += 1
        else:
            self.reused += 1
        return hit

    def clear(self) -> None:
        """Forget every entry (call between samples to bound memory)."""
        self._store.clear()


def context_budget(keep_rate: float, n_context: int) -> int:
    """Context tokens every method may keep at ``keep_rate``: ``round(keep_rate * n_context)``, at least 1.

    One token budget for all methods makes keep ratios identical. Chunk methods take their best chunks in
    order and cut the last one to fit (its most important tokens), as ``select_chunks(max_kept_tokens=...)``
    does; without a budget equalisation, chunks straddling the protected question would make some methods keep
    fewer context tokens than others at the same keep rate.
    """
    if n_context <= 0:
        return 0
    return min(n_context, max(1, round(keep_rate * n_context)))


def broadcast_chunk_scores(chunk_values: Sequence[float], n_tokens: int, chunk_size: int) -> FloatArray:
    """Give every token its chunk's value."""
    bounds = chunk_bounds(n_tokens, chunk_size)
    if len(bounds) != len(chunk_values):
        raise ValueError(f"{len(chunk_values)} chunk values for {len(bounds)} chunks")
    out = np.zeros(n_tokens, dtype=np.float32)
    for (s, e), v in zip(bounds, chunk_values, strict=True):
        out[s:e] = v
    return out


def random_chunk_importance(n_tokens: int, chunk_size: int, seed: int | str) -> FloatArray:
    """Seeded random chunk scores (one value per chunk, repeated over its tokens)."""
    rng = random.Random(seed)
    n_chunks = len(chunk_bounds(n_tokens, chunk_size))
    return broadcast_chunk_scores([rng.random() for _ in range(n_chunks)], n_tokens, chunk_size)


def head_tail_importance(n_tokens: int, chunk_size: int, protected: npt.NDArray[np.bool_]) -> FloatArray:
    """Truncation scores: among the prunable chunks, the first and last score highest, then inwards.

    The r-th of m prunable chunks scores ``-min(r, m - 1 - r)``; ties go to the earlier (head) chunk, so
    the kept chunks alternate head, tail, head, ... - keeping the start and the end of the context.
    """
    bounds = chunk_bounds(n_tokens, chunk_size)
    candidates = [i for i, (s, e) in enumerate(bounds) if not protected[s:e].all()]
    values = [0.0] * len(bounds)
    m = len(candidates)
    for rank, chunk in enumerate(candidates):
        values[chunk] = -float(min(rank, m - 1 - rank))
    return broadcast_chunk_scores(values, n_tokens, chunk_size)


class RandomChunks(ChunkMethod):
    """Random chunks at the same budget (seeded by the sample)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def importance(self, prepared: PreparedSample) -> FloatArray:
        """Seeded random chunk scores."""
        return random_chunk_importance(prepared.n_tokens, self.chunk_size, f"{self.seed}:{prepared.sample.sample_id}")


class HeadTail(ChunkMethod):
    """Keep the head and the tail of the context (truncation)."""

    name = "head-tail"

    def importance(self, prepared: PreparedSample) -> FloatArray:
        """Chunks nearest either end of the context first."""
        return head_tail_importance(prepared.n_tokens, self.chunk_size, prepared.protected)


class SpecPrefillMethod(ChunkMethod):
    """Speculative Prefill: the speculator's attention-based token importance, under one variant's config.

    Args:
        speculator: Scores prompts (``speculator.score(ids, config).importance``).
        variant: Name and config overrides (see :mod:`benchmarks.variants`); validated here.
        cache: Shared importance per sample and scoring settings (None: score on every call, as timing
            runs need).

    """

    def __init__(self, speculator: Any, variant: Variant, cache: ImportanceCache | None = None) -> None:
        self.speculator = speculator
        self.variant = variant
        self.config = build_config(variant)
        self.chunk_size = self.config.chunk_size
        self.name = variant.name
        self.cache = cache
        self.segment_by = str(getattr(self.config, "segment_by", "none"))

    def scoring_config(self, prepared: PreparedSample) -> SpecPrefillConfig:
        """The config the library scores this prompt with (as ``Speculator.prune`` does).

        Under ``window_in_final_paragraph`` the observation window is cut to the final paragraph: the question
        and the answer prefix.
        """
        return window_config(self.config, prepared.prompt.text, prepared.offsets)

    def importance(self, prepared: PreparedSample) -> FloatArray:
        """``Speculator.score`` over the whole prompt, under :meth:`scoring_config`."""
        result = self.speculator.score(prepared.input_ids, self.scoring_config(prepared))
        return np.asarray(result.importance, dtype=np.float32)

    def scored(self, prepared: PreparedSample) -> tuple[FloatArray, float]:
        """Importance from the shared cache when there is one."""
        if self.cache is None:
            return super().scored(prepared)
        return self.cache.get(prepared, self.scoring_config(prepared), lambda: self.importance(prepared))

    def segments(self, prepared: PreparedSample) -> list[int] | None:
        """Segment starts of the prompt at the variant's ``segment_by`` level (None without one)."""
        if self.segment_by == "none":
            return None
        prompt = prepared.prompt
        return segment_starts(prompt.text, prepared.offsets, [prompt.context_span], self.segment_by)

    def ranked_scores(self, prepared: PreparedSample, scores: FloatArray) -> FloatArray:
        """The importance plus the variant's question-word channel (``lexical_weight``), as ``select_scored`` does.

        A library without the channel ranks the importance alone.
        """
        weight = float(getattr(self.config, "lexical_weight", 0.0))
        if not weight:
            return scores
        from specprefill.scoring.lexical import with_question_words

        return with_question_words(
            scores, prepared.prompt.text, prepared.offsets, prepared.protected, weight, stop_words=self._stop_words()
        )

    def ranking_options(self, prepared: PreparedSample) -> dict[str, Any]:
        """The question-word channel alone for rank fusion (``lexical_fusion``), as ``select_scored`` passes it.

        Nothing when fusion is off, the prompt has no question, or the library has no rank fusion.
        """
        if not float(getattr(self.config, "lexical_weight", 0.0)) or not int(getattr(self.config, "lexical_fusion", 0)):
            return {}
        from specprefill.scoring.lexical import question_word_scores

        words = question_word_scores(
            prepared.prompt.text, prepared.offsets, prepared.protected, stop_words=self._stop_words()
        )
        return {} if words is None else {"words": words}

    def _stop_words(self) -> bool:
        """Whether the question words leave out the stop words (``lexical_stop_words``)."""
        return bool(getattr(self.config, "lexical_stop_words", False))

    def context_options(self) -> dict[str, Any]:
        """The variant's ranking and completion rules (``PickRules``).

        A library without them gets only the chunk context; one without that either, nothing.
        """
        try:
            from specprefill.scoring.select import PickRules
        except ImportError:
            context = int(getattr(self.config, "chunk_context", 0))
            if not context:
                return {}
            return {"chunk_context": context, "context_weight": float(getattr(self.config, "context_weight", 0.5))}
        return {"rules": PickRules.of(self.config)}


class EmbeddingRetrieval(ChunkMethod):
    """RAG baseline: chunks ranked by embedding similarity to the question.

    Args:
        embed: Maps texts to unit-length embedding rows (e.g. ``PackagedEmbedder().embed``).

    """

    name = "rag"

    def __init__(self, embed: Callable[[Sequence[str]], npt.NDArray[np.float32]]) -> None:
        self.embed = embed

    def importance(self, prepared: PreparedSample) -> FloatArray:
        """Cosine similarity of each chunk's text to the question."""
        bounds = chunk_bounds(prepared.n_tokens, self.chunk_size)
        text = prepared.prompt.text
        chunks = []
        for s, e in bounds:
            spans = [prepared.offsets[i] for i in range(s, e) if prepared.offsets[i][1] > prepared.offsets[i][0]]
            chunks.append(text[spans[0][0] : spans[-1][1]] if spans else "")
        rows = self.embed([prepared.sample.question, *chunks])
        sims = rows[1:] @ rows[0]
        return broadcast_chunk_scores([float(v) for v in sims], prepared.n_tokens, self.chunk_size)
