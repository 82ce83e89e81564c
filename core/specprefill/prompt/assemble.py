"""Step 6 and the result: selecting on a scored prompt and building its :class:`~specprefill.result.PruneResult`.

Pure: no model in it. :class:`ResultBuilder` is the part every speculator shares, the in-process one
(:class:`~specprefill.speculator.base.Speculator`) and the remote client
(:class:`~specprefill.speculator.remote.RemoteSpeculator`, which selects locally on a prompt the server
scored), so a prompt scored in another process prunes exactly as one scored here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.messages import cut_messages
from specprefill.prompt.prepared import ScoredPrompt
from specprefill.result import Message, PruneResult, PruneStats
from specprefill.scoring.chunks import chunk_bounds, protected_mask
from specprefill.scoring.select import fusion_words, ranking_importance, select_scored
from specprefill.spans import Span, index_runs, join_runs, join_spans, kept_char_spans

__all__ = ["ResultBuilder", "assemble_result"]


def assemble_result(
    scored: ScoredPrompt,
    kept: npt.NDArray[np.int64],
    config: SpecPrefillConfig,
    *,
    name: str,
    seconds: float = 0.0,
    decode: Callable[[Sequence[int]], str] | None = None,
    ranked: npt.NDArray[np.float32] | None = None,
) -> PruneResult:
    """The :class:`PruneResult` of keeping ``kept`` (sorted token indices) of a scored prompt.

    Args:
        scored: The scored prompt.
        kept: Sorted kept token indices.
        config: Settings (``chunk_size`` for the chunk counts, ``gap_marker``, ``keep_rate`` for the stats).
        name: Speculator name for the stats.
        seconds: Time the selection took, added to ``scored.speculator_seconds``.
        decode: Token ids to text; needed only for token-id prompts (which have no text).
        ranked: What selection ranked by (:func:`~specprefill.scoring.select.ranking_importance`), when the
            caller has it; computed from ``scored`` and ``config`` otherwise.

    Raises:
        PromptError: A token-id prompt and no ``decode``.

    """
    ids = scored.input_ids
    n = len(ids)
    spans: list[Span] = []
    messages: list[Message] | None = None
    if scored.text is not None and scored.offsets is not None:
        spans = kept_char_spans(scored.offsets, kept)
        text = join_spans(scored.text, spans, config.gap_marker) if len(kept) < n else scored.text
        if scored.messages is not None and scored.content_spans is not None:
            messages = cut_messages(scored.messages, scored.content_spans, spans, scored.text, config.gap_marker)
    else:
        if decode is None:
            raise PromptError("a token-id prompt needs the speculator's tokenizer to build its kept text")
        whole = [(0, n)] if len(kept) == n else index_runs(kept)
        text = join_runs(n, whole, lambda s, e: decode(ids[s:e]), config.gap_marker)
    bounds = chunk_bounds(n, config.chunk_size, scored.segments)
    kept_mask = protected_mask(n, kept)
    stats = PruneStats(
        tokens_in=n,
        tokens_kept=len(kept),
        keep_ratio=len(kept) / n if n else 1.0,
        keep_rate=config.keep_rate,
        chunks_total=len(bounds),
        chunks_kept=sum(bool(kept_mask[s:e].any()) for s, e in bounds),
        protected_tokens=int(scored.protected.sum()),
        lookahead_queries=scored.queries,
        windows=scored.windows,
        speculator_seconds=scored.speculator_seconds + seconds,
        pruned=scored.importance is not None and len(kept) < n,
        fallback=scored.fallback,
        fallback_reason=scored.fallback_reason,
        speculator=name,
    )
    return PruneResult(
        original_length=n,
        input_ids=list(ids),
        kept_indices=kept,
        kept_token_ids=[ids[i] for i in kept],
        text=text,
        stats=stats,
        importance=scored.importance,
        ranked_importance=ranking_importance(scored, config) if ranked is None else ranked,
        source_text=scored.text,
        offsets=scored.offsets,
        kept_spans=spans,
        messages=messages,
        lookahead_token_ids=scored.lookahead_token_ids,
    )


class ResultBuilder:
    """Selection on a scored prompt and its result: what the in-process and the remote speculator share."""

    name: str = "speculator"
    """The speculator's name (in the stats of every result)."""

    def _token_text(self) -> Callable[[Sequence[int]], str] | None:
        """Token ids to text, for token-id prompts (None: this builder has no tokenizer)."""
        return None

    def select(self, scored: ScoredPrompt, config: SpecPrefillConfig | None = None, **overrides: Any) -> PruneResult:
        """Step 6 on a scored prompt: keep its most important chunks and build the result.

        Args:
            scored: What ``score_prompt`` returned.
            config: Budget settings (``keep_rate``, ``max_kept_tokens``, ``chunk_size``, ``gap_marker``, ...).
            **overrides: Per-call config changes.

        Returns:
            A :class:`~specprefill.result.PruneResult`; everything is kept when ``scored.importance`` is None.

        """
        cfg = SpecPrefillConfig.of(config).with_overrides(**overrides)
        start = time.perf_counter()
        words = fusion_words(scored, cfg)
        ranked = ranking_importance(scored, cfg, words=words)
        kept = select_scored(scored, cfg, ranked=ranked, words=words)
        return self.build_result(scored, kept, cfg, seconds=time.perf_counter() - start, ranked=ranked)

    def build_result(
        self,
        scored: ScoredPrompt,
        kept: npt.NDArray[np.int64],
        config: SpecPrefillConfig | None = None,
        *,
        seconds: float = 0.0,
        ranked: npt.NDArray[np.float32] | None = None,
    ) -> PruneResult:
        """The :class:`~specprefill.result.PruneResult` of keeping ``kept`` (sorted token indices) of ``scored``.

        For callers that select tokens themselves (e.g. :mod:`specprefill.prompt.passages`); ``seconds`` (the
        time their selection took) is added to ``scored.speculator_seconds`` in the stats; ``ranked`` is what
        they ranked by, when they have it. See :func:`assemble_result`.
        """
        name = scored.speculator or self.name
        cfg = SpecPrefillConfig.of(config)
        return assemble_result(scored, kept, cfg, name=name, seconds=seconds, decode=self._token_text(), ranked=ranked)
