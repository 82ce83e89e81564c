"""LlamaIndex node postprocessor for Speculative Prefill: query-aware pruning of retrieved nodes.

Example:
    >>> from llama_index.postprocessor.specprefill import SpecPrefillNodePostprocessor
    >>> query_engine = index.as_query_engine(
    ...     node_postprocessors=[SpecPrefillNodePostprocessor(keep_rate=0.2)], llm=llm
    ... )

"""

from llama_index.postprocessor.specprefill.base import DEFAULT_LOOKAHEAD, METADATA_KEY, SpecPrefillNodePostprocessor
from llama_index.postprocessor.specprefill.events import SpecPrefillPruneEndEvent, SpecPrefillPruneStartEvent
from llama_index.postprocessor.specprefill.stats import NodePruneStats, PostprocessStats
from specprefill.prompt.passages import DEFAULT_INSTRUCTION

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_LOOKAHEAD",
    "METADATA_KEY",
    "NodePruneStats",
    "PostprocessStats",
    "SpecPrefillNodePostprocessor",
    "SpecPrefillPruneEndEvent",
    "SpecPrefillPruneStartEvent",
]
