"""Pure functions for steps 4-6 of Speculative Prefill: smoothing, query reduction, chunking and selection.

Everything here works on NumPy arrays and has no model in it, so it is tested on tiny literal inputs; the
speculator computes the same reductions layer by layer in torch (:mod:`specprefill.speculator.capture`) and
is checked against these.

- :mod:`.reduce`: smoothing and the query reductions (a table: :func:`~.reduce.register_reduction`);
- :mod:`.chunks`: the chunk grid and chunk scores (with their neighbourhood, ``chunk_context``);
- :mod:`.lexical`: the question-word channel blended into the importance before selection (``lexical_weight``)
  and rank-fused with it (``lexical_fusion``), English function words left out (``lexical_stop_words``);
- :mod:`.ranking`: the order chunks are taken in (coverage, rank fusion) and the best run of a partial chunk;
- :mod:`.select`: the budget and the selection of kept chunks.
"""

from __future__ import annotations

from specprefill.scoring.chunks import (
    blend_context,
    budget_chunks,
    chunk_bounds,
    chunk_scores,
    protected_mask,
    segment_edges,
)
from specprefill.scoring.ranking import best_run, fused_ranks, ranked_chunks
from specprefill.scoring.reduce import avg_pool1d, importance_from_attention, reduce_queries, register_reduction
from specprefill.scoring.select import PickRules, fill_chunks, select_chunks, select_scored

__all__ = [
    "PickRules",
    "avg_pool1d",
    "best_run",
    "blend_context",
    "budget_chunks",
    "chunk_bounds",
    "chunk_scores",
    "fill_chunks",
    "fused_ranks",
    "importance_from_attention",
    "protected_mask",
    "ranked_chunks",
    "reduce_queries",
    "register_reduction",
    "segment_edges",
    "select_chunks",
    "select_scored",
]
