"""Metrics of the evaluation suite: span retention, answer scoring, keep ratios and the FLOP model.

All pure functions over plain Python/NumPy data, tested on tiny literal inputs.

FLOP model (used for the TTFT ceiling). For a decoder with ``L`` layers, query width ``d_q = heads x head_dim``,
and ``P`` non-embedding parameters (attention and MLP weights; the input embedding is a lookup):

* prefill of ``n`` tokens: ``2 n P + 2 L n^2 d_q`` (the linear layers, plus causal ``QK^T`` and ``AV``:
  ``n^2 / 2`` query-key pairs x ``d_q`` multiply-adds each, twice), plus ``2 d V`` for the logits of the
  last token (``V`` = vocabulary size, ``d`` = hidden size);
* each decode step at context ``c``: ``2 P + 4 L c d_q + 2 d V``;
* the speculator = prefill of ``n`` + ``lookahead - 1`` decode steps + scoring (``2 L heads Q n head_dim``).

The paper's ceiling is ``speedup <= 1 / (keep_rate + r)`` with ``r = F_speculator(n) / F_base(n)``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ModelShape",
    "answer_score",
    "context_keep_ratio",
    "decode_flops",
    "kept_mask",
    "normalize_answer",
    "prefill_flops",
    "span_retention",
    "spans_kept",
    "speculator_flops",
    "speedup_ceiling",
    "tokens_in_span",
]

Span = tuple[int, int]


def kept_mask(n_tokens: int, kept: Iterable[int]) -> npt.NDArray[np.bool_]:
    """Boolean mask of length ``n_tokens`` that is True at the kept indices."""
    mask = np.zeros(n_tokens, dtype=np.bool_)
    idx = np.asarray(list(kept) if not isinstance(kept, np.ndarray) else kept, dtype=np.int64)
    if idx.size:
        mask[idx] = True
    return mask


def tokens_in_span(offsets: Sequence[Span], span: Span) -> list[int]:
    """Indices of the tokens whose character range overlaps ``span`` (zero-width tokens are ignored)."""
    start, end = span
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def spans_kept(offsets: Sequence[Span], kept: Iterable[int], spans: Sequence[Span]) -> list[bool]:
    """For each gold span, whether every token overlapping it is kept (the span is wholly in the kept text).

    Args:
        offsets: Character range of each prompt token.
        kept: Kept token indices.
        spans: Gold character spans.

    Returns:
        One flag per span, in order (a span no token overlaps counts as not kept).

    """
    mask = kept_mask(len(offsets), kept)
    flags = []
    for span in spans:
        idx = tokens_in_span(offsets, span)
        flags.append(bool(idx) and bool(mask[idx].all()))
    return flags


def span_retention(offsets: Sequence[Span], kept: Iterable[int], spans: Sequence[Span]) -> tuple[float, bool]:
    """How much of the gold information survives pruning (see :func:`spans_kept`).

    Args:
        offsets: Character range of each prompt token.
        kept: Kept token indices.
        spans: Gold character spans.

    Returns:
        ``(fraction of spans retained, whether all are)``; ``(1.0, True)`` when there is no span.

    """
    if not spans:
        return 1.0, True
    flags = spans_kept(offsets, kept, spans)
    return sum(flags) / len(flags), all(flags)


def context_keep_ratio(kept: Iterable[int], protected: npt.NDArray[np.bool_]) -> float:
    """Kept share of the prunable (unprotected) tokens; 1.0 when nothing is prunable."""
    mask = kept_mask(len(protected), kept)
    free = ~protected
    total = int(free.sum())
    return float((mask & free).sum()) / total if total else 1.0


def normalize_answer(text: str) -> str:
    """Case-folded, accent-free text with punctuation turned into single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def answer_score(output: str, answers: Sequence[str]) -> float:
    """RULER's ``string_match_all``: the fraction of gold answers found in the output (normalised)."""
    if not answers:
        return 1.0
    got = f" {normalize_answer(output)} "
    return sum(f" {normalize_answer(a)} " in got for a in answers) / len(answers)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP model needs to know about a decoder-only transformer."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    name: str = ""

    @property
    def attention_params(self) -> int:
        """Q, K, V and output projection weights of one layer."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        return q + kv + self.heads * self.head_dim * self.hidden

    @property
    def mlp_params(self) -> int:
        """Gated MLP (gate, up, down) weights of one layer."""
        return 3 * self.hidden * self.intermediate

    @property
    def non_embedding_params(self) -> int:
        """Matrix weights used per token (norms and embeddings left out)."""
        return self.layers * (self.attention_params + self.mlp_params)

    @classmethod
    def from_config(cls, config: Any, name: str = "") -> ModelShape:
        """Read the shape from a transformers config (text config for multimodal ones)."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        return cls(
            layers=int(cfg.num_hidden_layers),
            hidden=int(cfg.hidden_size),
            heads=heads,
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            intermediate=int(cfg.intermediate_size),
            vocab=int(cfg.vocab_size),
            name=name,
        )


def prefill_flops(shape: ModelShape, n_tokens: int) -> float:
    """FLOPs of a causal prefill over ``n_tokens`` tokens, logits for the last token only."""
    n = float(n_tokens)
    d_q = shape.heads * shape.head_dim
    return 2 * n * shape.non_embedding_params + 2 * shape.layers * n * n * d_q + 2 * shape.hidden * shape.vocab


def decode_flops(shape: ModelShape, context: int) -> float:
    """FLOPs of one decode step attending over ``context`` cached tokens."""
    d_q = shape.heads * shape.head_dim
    return 2 * shape.non_embedding_params + 4 * shape.layers * float(context) * d_q + 2 * shape.hidden * shape.vocab


def speculator_flops(shape: ModelShape, n_tokens: int, lookahead: int = 8) -> float:
    """Speculator cost: prefill, ``lookahead - 1`` decode steps and the scoring products."""
    total = prefill_flops(shape, n_tokens)
    total += sum(decode_flops(shape, n_tokens + j) for j in range(1, lookahead))
    total += 2 * shape.layers * shape.heads * lookahead * float(n_tokens) * shape.head_dim
    return total


def speedup_ceiling(keep_rate: float, flop_ratio: float) -> float:
    """The paper's theoretical TTFT speedup ``1 / (keep_rate + flop_ratio)``."""
    return 1.0 / (keep_rate + flop_ratio)
