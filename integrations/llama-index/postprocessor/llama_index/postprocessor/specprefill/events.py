"""Instrumentation events of :class:`~llama_index.postprocessor.specprefill.SpecPrefillNodePostprocessor`.

They go through LlamaIndex's dispatcher (``llama_index.core.instrumentation``), so any event handler added
to the root dispatcher sees them, inside the postprocessor's span.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.schema import NodeWithScore

__all__ = ["SpecPrefillPruneEndEvent", "SpecPrefillPruneStartEvent"]


class SpecPrefillPruneStartEvent(BaseEvent):
    """Pruning of retrieved nodes starts.

    Attributes:
        query: The query string the nodes are pruned for (None when there is none).
        nodes: The input nodes.
        model_name: Name of the speculator.
        keep_rate: Fraction of prunable chunks kept.
        max_kept_tokens: Token budget for the nodes' text (None: keep rate only).

    """

    query: str | None
    nodes: list[NodeWithScore]
    model_name: str
    keep_rate: float
    max_kept_tokens: int | None = None

    @classmethod
    def class_name(cls) -> str:
        """Event name."""
        return "SpecPrefillPruneStartEvent"


class SpecPrefillPruneEndEvent(BaseEvent):
    """Pruning of retrieved nodes finished.

    Attributes:
        nodes: The output nodes (one per input node that kept any text).
        stats: :meth:`PostprocessStats.to_dict() <llama_index.postprocessor.specprefill.PostprocessStats.to_dict>`.

    """

    nodes: list[NodeWithScore]
    stats: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        """Event name."""
        return "SpecPrefillPruneEndEvent"
