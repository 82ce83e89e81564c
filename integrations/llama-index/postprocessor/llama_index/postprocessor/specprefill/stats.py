"""Statistics of :class:`~llama_index.postprocessor.specprefill.SpecPrefillNodePostprocessor` (plain data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.prompt.passages import PassageOutcome
from specprefill.result import PruneStats

__all__ = ["NodePruneStats", "PostprocessStats"]


@dataclass(frozen=True)
class NodePruneStats:
    """What pruning did to one node (token counts are speculator tokens of the node's text)."""

    node_id: str
    """Id of the node."""
    rank: int
    """Position of the node in the input list."""
    tokens_in: int
    """Tokens of the node's text before pruning."""
    tokens_kept: int
    """Tokens of the node's text that were kept (protected ones included)."""
    keep_ratio: float
    """``tokens_kept / tokens_in`` (1.0 for an empty text)."""
    protected_tokens: int
    """Tokens kept because they hold a protected metadata value."""
    minimum_tokens_added: int = 0
    """Tokens added to reach ``min_tokens_per_node`` (on top of the budget)."""
    dropped: bool = False
    """True when no text of the node survived (the node is then removed if ``drop_empty_nodes``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for metadata or JSON."""
        return asdict(self)

    @classmethod
    def of(cls, node_id: str, rank: int, outcome: PassageOutcome) -> NodePruneStats:
        """The statistics of one node from its passage outcome."""
        return cls(
            node_id=node_id,
            rank=rank,
            tokens_in=outcome.tokens_in,
            tokens_kept=outcome.tokens_kept,
            keep_ratio=outcome.keep_ratio,
            protected_tokens=outcome.protected_tokens,
            minimum_tokens_added=outcome.minimum_tokens_added,
            dropped=outcome.dropped,
        )


@dataclass(frozen=True)
class PostprocessStats:
    """Numbers about one postprocessing call."""

    nodes_in: int
    """Nodes received."""
    nodes_out: int
    """Nodes returned."""
    nodes_dropped: int
    """Nodes whose text was dropped entirely (removed when ``drop_empty_nodes``)."""
    context_tokens_in: int
    """Speculator tokens of all prunable node texts."""
    context_tokens_kept: int
    """Of those, tokens kept."""
    context_keep_ratio: float
    """``context_tokens_kept / context_tokens_in`` (1.0 when there is no text)."""
    protected_context_tokens: int
    """Node-text tokens that were protected (protected metadata values)."""
    minimum_tokens_added: int
    """Tokens added on top of the budget to honour ``min_tokens_per_node``."""
    keep_rate: float
    """Keep rate used."""
    max_kept_tokens: int | None
    """Token budget used (None: keep rate only)."""
    prompt: PruneStats | None
    """Statistics of the whole scored prompt (instruction, passages, question); None if nothing was scored."""
    nodes: list[NodePruneStats] = field(default_factory=list)
    """Per-node statistics, in input order (nodes without text are not listed)."""

    @property
    def speculator_seconds(self) -> float:
        """Wall time of scoring and selection (0 when nothing was scored)."""
        return self.prompt.speculator_seconds if self.prompt is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for events, callback payloads or JSON."""
        return asdict(self)

    @classmethod
    def collect(
        cls,
        nodes_in: int,
        per_node: list[NodePruneStats],
        prompt: PruneStats | None,
        config: SpecPrefillConfig,
        drop_empty_nodes: bool,
    ) -> PostprocessStats:
        """Totals over the nodes' statistics."""
        tokens_in = sum(s.tokens_in for s in per_node)
        tokens_kept = sum(s.tokens_kept for s in per_node)
        dropped = sum(s.dropped for s in per_node)
        return cls(
            nodes_in=nodes_in,
            nodes_out=nodes_in - (dropped if drop_empty_nodes else 0),
            nodes_dropped=dropped,
            context_tokens_in=tokens_in,
            context_tokens_kept=tokens_kept,
            context_keep_ratio=tokens_kept / tokens_in if tokens_in else 1.0,
            protected_context_tokens=sum(s.protected_tokens for s in per_node),
            minimum_tokens_added=sum(s.minimum_tokens_added for s in per_node),
            keep_rate=config.keep_rate,
            max_kept_tokens=config.max_kept_tokens,
            prompt=prompt,
            nodes=per_node,
        )

    def shared(self, speculator_name: str) -> dict[str, Any]:
        """The call-wide entries every node's metadata gets next to its own statistics."""
        prompt = self.prompt
        return {
            "context_tokens_in": self.context_tokens_in,
            "context_tokens_kept": self.context_tokens_kept,
            "prompt_tokens_in": prompt.tokens_in if prompt else 0,
            "prompt_tokens_kept": prompt.tokens_kept if prompt else 0,
            "speculator_seconds": self.speculator_seconds,
            "speculator": prompt.speculator if prompt and prompt.speculator else speculator_name,
            "pruned": bool(prompt and prompt.pruned),
            "fallback": prompt is None or prompt.fallback,
            "keep_rate": self.keep_rate,
            "max_kept_tokens": self.max_kept_tokens,
        }
