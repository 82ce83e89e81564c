"""Results and statistics of pruning (plain data, separate from logging and export)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["STATS_KEY", "Message", "PruneResult", "PruneStats"]

STATS_KEY = "specprefill"
"""The one key under which every integration reports pruning stats (response metadata, node metadata)."""

Message = dict[str, Any]
"""A chat message: ``{"role": ..., "content": ...}`` as in the OpenAI and Hugging Face chat formats."""


@dataclass(frozen=True)
class PruneStats:
    """Numbers about one pruning call. ``speculator_seconds`` is the whole cost of scoring and selection."""

    tokens_in: int
    """Prompt length in speculator tokens."""
    tokens_kept: int
    """Tokens kept (protected ones included)."""
    keep_ratio: float
    """``tokens_kept / tokens_in`` (1.0 for an empty prompt)."""
    keep_rate: float
    """The keep rate that was asked for."""
    chunks_total: int = 0
    """Chunks the prompt was cut into."""
    chunks_kept: int = 0
    """Chunks with at least one kept token."""
    protected_tokens: int = 0
    """Tokens that were protected from dropping."""
    lookahead_queries: int = 0
    """Queries that scored the prompt (last prompt token or observation window, plus look-ahead tokens)."""
    windows: int = 0
    """Speculator passes: 1 normally, more when a long prompt was scored in windows."""
    speculator_seconds: float = 0.0
    """Wall time of tokenisation, speculator forward passes, scoring and selection."""
    pruned: bool = False
    """False when the prompt went through whole (shorter than ``min_prompt_tokens``, or a fallback)."""
    fallback: bool = False
    """True when the speculator failed and the full prompt was used instead."""
    fallback_reason: str | None = None
    """Why the fallback happened."""
    speculator: str = ""
    """Name of the speculator model."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for JSON or response metadata."""
        return asdict(self)


@dataclass(frozen=True)
class PruneResult:
    """What survives pruning, in every form a base backend may need.

    ``kept_token_ids`` with ``position_ids`` feed a base model with the same tokenizer (positions are the
    original indices, decoding continues at ``original_length``); ``text`` / ``messages`` feed a base with
    another tokenizer. ``position_ids`` is derived from ``kept_indices``.
    """

    original_length: int
    """Prompt length N in speculator tokens."""
    input_ids: list[int]
    """All N prompt token ids."""
    kept_indices: npt.NDArray[np.int64]
    """Sorted indices of the kept tokens."""
    kept_token_ids: list[int]
    """Token ids of the kept tokens, in order."""
    text: str
    """Kept text: the kept character spans in order, joined with the config's ``gap_marker``."""
    stats: PruneStats
    """Counts and timings."""
    importance: npt.NDArray[np.float32] | None = None
    """Per-token importance (None when the prompt was not scored)."""
    source_text: str | None = None
    """The full prompt as text (for messages: rendered with the chat template)."""
    offsets: list[tuple[int, int]] | None = None
    """Character span of each token in ``source_text`` (None for token-id prompts)."""
    kept_spans: list[tuple[int, int]] = field(default_factory=list)
    """Kept character spans of ``source_text``, merged and in order."""
    messages: list[Message] | None = None
    """For chat prompts: the messages with each content cut down to its kept spans."""
    lookahead_token_ids: list[int] = field(default_factory=list)
    """Tokens the speculator decoded during look-ahead (useful for debugging and tests)."""
    ranked_importance: npt.NDArray[np.float32] | None = None
    """What selection ranked chunks by: ``importance`` with the question-word channel blended in
    (``SpecPrefillConfig.lexical_weight``; with ``lexical_fusion`` the chunk ranks also fuse the question words
    alone); equal to ``importance`` without it, None when not scored."""

    @property
    def position_ids(self) -> list[int]:
        """Original positions of the kept tokens: ``kept_indices`` as a list of ints (derived, not stored)."""
        return [int(i) for i in self.kept_indices]

    @property
    def dropped_indices(self) -> npt.NDArray[np.int64]:
        """Sorted indices of the dropped tokens."""
        mask = np.ones(self.original_length, dtype=np.bool_)
        mask[self.kept_indices] = False
        return np.flatnonzero(mask).astype(np.int64)

    def to_dict(self, *, include_importance: bool = False) -> dict[str, Any]:
        """Plain ``dict`` for JSON output."""
        out: dict[str, Any] = {
            "original_length": self.original_length,
            "kept_indices": self.kept_indices.tolist(),
            "kept_token_ids": list(self.kept_token_ids),
            "position_ids": list(self.position_ids),
            "text": self.text,
            "kept_spans": [list(s) for s in self.kept_spans],
            "messages": self.messages,
            "stats": self.stats.to_dict(),
        }
        if include_importance and self.importance is not None:
            out["importance"] = [float(v) for v in self.importance]
        if include_importance and self.ranked_importance is not None:
            out["ranked_importance"] = [float(v) for v in self.ranked_importance]
        return out
