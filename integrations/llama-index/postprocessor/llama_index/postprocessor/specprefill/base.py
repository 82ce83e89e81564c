"""``SpecPrefillNodePostprocessor``: query-aware pruning of retrieved nodes with a speculator model.

All retrieved nodes and the query go to the speculator as **one** chat prompt (an instruction, the numbered
passages, then the question; see :mod:`specprefill.prompt.passages`), so the budget goes to whichever passages the
question needs rather than being split evenly. The kept character spans are then written back node by node:
every input node gives one output node with the same id, score and metadata, its text cut down to its kept
spans with ``set_content``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # no __all__ upstream
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from llama_index.postprocessor.specprefill.events import SpecPrefillPruneEndEvent, SpecPrefillPruneStartEvent
from llama_index.postprocessor.specprefill.stats import NodePruneStats, PostprocessStats
from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError
from specprefill.prompt.passages import (
    DEFAULT_INSTRUCTION,
    PASSAGE_LOOKAHEAD,
    Passage,
    PassageOutcome,
    PrunedPassages,
    aprune_passages,
    prune_passages,
)
from specprefill.result import STATS_KEY
from specprefill.spans import Span
from specprefill.speculator.base import Speculator
from specprefill.speculator.remote import RemoteSpeculator

__all__ = ["DEFAULT_LOOKAHEAD", "METADATA_KEY", "SpecPrefillNodePostprocessor"]

logger = logging.getLogger("specprefill.llama_index")
dispatcher = get_dispatcher(__name__)

METADATA_KEY = STATS_KEY
"""Metadata key of the per-node pruning statistics (excluded from LLM and embedding text)."""

DEFAULT_LOOKAHEAD = PASSAGE_LOOKAHEAD
"""Look-ahead of the default config (:data:`specprefill.prompt.passages.PASSAGE_LOOKAHEAD`, shared with LangChain)."""


@dataclass
class _Run:
    """One postprocess call: config, query and passages in; the pruning and the output nodes out."""

    cfg: SpecPrefillConfig
    query: str | None
    passages: list[Passage]
    prunable: bool
    pruned: PrunedPassages | None = None
    out: list[NodeWithScore] = field(default_factory=list)

    @property
    def args(self) -> tuple[list[Passage], str | None, SpecPrefillConfig]:
        """``(passages, question, config)``, as :func:`~specprefill.prompt.passages.prune_passages` takes them."""
        return self.passages, self.query, self.cfg


class SpecPrefillNodePostprocessor(BaseNodePostprocessor):
    """Prune retrieved nodes before synthesis with Speculative Prefill's speculator, node identity kept.

    The nodes and the query are scored together as one prompt, so the kept budget is spent where the
    question needs it. Each input node gives one output node with the same ``id_``, ``score`` and metadata;
    its text is replaced (``set_content``) by its kept spans joined with the config's ``gap_marker``. Nodes
    whose text is dropped entirely are removed (``drop_empty_nodes``). Statistics go to each node's metadata
    under :data:`METADATA_KEY` (excluded from the LLM and embedding text), to the callback manager (a
    ``RERANKING`` event with ``additional_kwargs``) and to the instrumentation dispatcher
    (:class:`SpecPrefillPruneStartEvent`, :class:`SpecPrefillPruneEndEvent`). Input nodes are not modified.

    Layout, scoring and selection are :mod:`specprefill.prompt.passages`: the chunk grid restarts at every node,
    so no chunk straddles two nodes or a node and its header, and a chunk is scored by its unprotected
    tokens only. The default config also looks ahead :data:`DEFAULT_LOOKAHEAD` tokens instead of 8. On the
    bundled example documents (15 retrievable README questions, top-4 nodes of 256 tokens) with the
    embedded 135M speculator at ``keep_rate=0.2``, the whole answer sentence survives for 11 of 15 with the
    library's default config (10 without its chunk context, 7 with ``SpecPrefillConfig.paper()``; measured
    by ``python -m benchmarks.rag_examples``).

    Budgets count speculator tokens of the node texts: ``keep_rate`` keeps ``ceil(keep_rate * tokens)`` of
    them, ``max_kept_tokens`` caps the kept unprotected tokens exactly. Node headers, the instruction and
    the question are protected and do not use the budget. Prompts shorter than
    ``config.min_prompt_tokens`` pass through unchanged.

    Args:
        speculator: A loaded :class:`~specprefill.speculator.base.Speculator`, or a name/path for
            :func:`specprefill.load_speculator`, loaded on first use (default: the embedded
            ``"smollm2-135m"``), or a :class:`~specprefill.speculator.remote.RemoteSpeculator`. Constructing
            the postprocessor never loads a model.
        base_url: Root URL of a specprefill server (``specprefill serve``): the joint prompt is scored by the
            server's speculator (``POST /specprefill/v1/prune``) and selected here, so no model loads in this
            process. Give either ``speculator`` or ``base_url``.
        api_key: Bearer token of that server (``--api-key``).
        timeout: Seconds to wait for the server.
        keep_rate: Fraction of the node texts' tokens to keep, in (0, 1] (default: ``config.keep_rate``).
        max_kept_tokens: Token budget for the node texts. Given alone, it is the only budget
            (``keep_rate`` becomes 1.0); given with ``keep_rate``, both apply.
        min_tokens_per_node: Keep at least this many tokens of every node (its best chunks; the last one
            cut to its best run so the count is exact), on top of the budget. 0 lets a node be dropped.
        protected_metadata_keys: Metadata keys whose values are never dropped where they occur in a node's
            text (e.g. ``["title"]``).
        drop_empty_nodes: Remove nodes whose text was dropped entirely (otherwise they are returned with
            empty text).
        include_metadata: Show the speculator each node's metadata as the LLM sees it
            (``MetadataMode.LLM``), as protected context for scoring; it is never part of the output.
        instruction: System message of the scored prompt.
        config: Base :class:`~specprefill.config.SpecPrefillConfig` (chunk size, look-ahead, gap marker, ...);
            default: the defaults with ``lookahead=DEFAULT_LOOKAHEAD``.
        **kwargs: Other fields of ``BaseNodePostprocessor``, e.g. ``callback_manager``.

    Raises:
        ConfigurationError: A setting is out of range.

    Example:
        >>> postprocessor = SpecPrefillNodePostprocessor(keep_rate=0.2, protected_metadata_keys=["title"])
        >>> engine = index.as_query_engine(node_postprocessors=[postprocessor], llm=llm)

    """

    speculator_name: str = Field(default="smollm2-135m", description="Name or path of the speculator.")
    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0, description="Fraction of tokens to keep.")
    max_kept_tokens: int | None = Field(default=None, ge=1, description="Token budget for the node texts.")
    min_tokens_per_node: int = Field(default=0, ge=0, description="Tokens every node keeps at least.")
    protected_metadata_keys: list[str] = Field(
        default_factory=list, description="Metadata keys whose values are never dropped from a node's text."
    )
    drop_empty_nodes: bool = Field(default=True, description="Remove nodes whose text was dropped entirely.")
    include_metadata: bool = Field(default=True, description="Show node metadata (LLM mode) to the speculator.")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, description="System message of the scored prompt.")
    config: SpecPrefillConfig = Field(
        default_factory=lambda: SpecPrefillConfig(lookahead=DEFAULT_LOOKAHEAD), description="Pruning settings."
    )

    base_url: str | None = Field(default=None, description="Root URL of the specprefill server that scores.")

    _speculator: Speculator | None = PrivateAttr(default=None)
    _remote: RemoteSpeculator | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        speculator: Speculator | RemoteSpeculator | str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        if speculator is not None and base_url is not None:
            raise ConfigurationError("pass either speculator= (a local model) or base_url= (a server), not both")
        if base_url is not None:
            speculator = RemoteSpeculator(base_url, timeout=timeout, api_key=api_key)
        speculator = "smollm2-135m" if speculator is None else speculator
        if not isinstance(speculator, (Speculator, RemoteSpeculator, str)):
            raise ConfigurationError(
                f"speculator must be a Speculator, a RemoteSpeculator or a model name, got {type(speculator).__name__}"
            )
        name = speculator if isinstance(speculator, str) else speculator.name
        remote_url = speculator.base_url if isinstance(speculator, RemoteSpeculator) else None
        fields: dict[str, Any] = {"speculator_name": name, "base_url": remote_url, **kwargs}
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid SpecPrefillNodePostprocessor settings: {exc}") from exc
        if isinstance(speculator, Speculator):
            self._speculator = speculator
        elif isinstance(speculator, RemoteSpeculator):
            self._remote = speculator

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised LlamaIndex components."""
        return "SpecPrefillNodePostprocessor"

    # --- speculator ---------------------------------------------------------------------------------
    @property
    def speculator(self) -> Speculator:
        """The speculator (loaded now if it was given by name).

        Raises:
            ModelLoadError: The named speculator cannot be loaded.
            ConfigurationError: The postprocessor scores on a server (``base_url``); it has no local model.

        """
        if self._remote is not None:
            raise ConfigurationError(f"this postprocessor scores on the server at {self.base_url}; it loads no model")
        if self._speculator is None:
            with self._load_lock:
                if self._speculator is None:
                    from specprefill.speculator.loading import load_speculator

                    logger.info("loading speculator %s", self.speculator_name)
                    self._speculator = load_speculator(self.speculator_name)
        return self._speculator

    @property
    def effective_config(self) -> SpecPrefillConfig:
        """The config used for pruning: ``config`` with this postprocessor's budget and protection applied.

        The question and passage headers are protected by character spans, so the message-based protection
        of the question is turned off (``protect_question_tokens=0``) and the instruction is protected whole.
        """
        data = self.config.model_dump()
        if self.keep_rate is not None:
            data["keep_rate"] = self.keep_rate
        if self.max_kept_tokens is not None:
            data["max_kept_tokens"] = self.max_kept_tokens
            if self.keep_rate is None:
                data["keep_rate"] = 1.0
        data["protect_question_tokens"] = 0
        data["protect_system_tokens"] = None
        return SpecPrefillConfig(**data)

    # --- LlamaIndex contract ------------------------------------------------------------------------
    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """Prune the nodes' texts for the query (see the class docstring)."""
        with self._pruning(nodes, query_bundle) as run:
            if run.prunable and self._remote is not None:
                run.pruned = self._remote.prune_passages(*run.args, **self._passage_options())
            elif run.prunable:
                run.pruned = prune_passages(self.speculator, *run.args, **self._passage_options())
        return run.out

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """Async pruning: the speculator loads and scores in worker threads."""
        with self._pruning(nodes, query_bundle) as run:
            if run.prunable and self._remote is not None:
                run.pruned = await self._remote.aprune_passages(*run.args, **self._passage_options())
            elif run.prunable:
                speculator = self._speculator or await asyncio.to_thread(lambda: self.speculator)
                run.pruned = await aprune_passages(speculator, *run.args, **self._passage_options())
        return run.out

    # --- shared by the sync and async paths ---------------------------------------------------------
    @contextmanager
    def _pruning(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> Iterator[_Run]:
        """Everything around the pruning, which the ``with`` body does and stores in ``run.pruned``.

        Empty input yields a run that is not prunable and returns no nodes, without events. A failure in the
        body falls back to the unpruned nodes or is raised (see :meth:`_fallback_or_raise`); either way the
        callback and instrumentation events close, and ``run.out`` holds the output nodes.
        """
        if not nodes:
            yield _Run(SpecPrefillConfig(), None, [], prunable=False)
            return
        cfg, query, passages = self._begin(nodes, query_bundle)
        run = _Run(cfg, query, passages, prunable=self._prunable(passages))
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            try:
                yield run
            except Exception as exc:
                self._fallback_or_raise(cfg, exc)
            run.out = self._finish(nodes, passages, run.pruned, cfg, event)

    # --- shared by the sync and async paths ---------------------------------------------------------
    def _begin(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[SpecPrefillConfig, str | None, list[Passage]]:
        cfg = self.effective_config
        query = query_bundle.query_str if query_bundle is not None else None
        dispatcher.event(
            SpecPrefillPruneStartEvent(
                query=query,
                nodes=nodes,
                model_name=self.speculator_name,
                keep_rate=cfg.keep_rate,
                max_kept_tokens=cfg.max_kept_tokens,
            )
        )
        return cfg, query, [self._passage(item) for item in nodes]

    def _finish(
        self,
        nodes: list[NodeWithScore],
        passages: list[Passage],
        pruned: PrunedPassages | None,
        cfg: SpecPrefillConfig,
        event: Any,
    ) -> list[NodeWithScore]:
        out, stats = self._emit(nodes, passages, pruned, cfg)
        event.on_end(payload={EventPayload.NODES: out, EventPayload.ADDITIONAL_KWARGS: {METADATA_KEY: stats.to_dict()}})
        dispatcher.event(SpecPrefillPruneEndEvent(nodes=out, stats=stats.to_dict()))
        return out

    def _passage_options(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "min_tokens_per_passage": self.min_tokens_per_node}

    def _payload(self, nodes: list[NodeWithScore], query: str | None) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.speculator_name,
            EventPayload.QUERY_STR: query,
        }

    def _fallback_or_raise(self, cfg: SpecPrefillConfig, exc: Exception) -> None:
        if isinstance(exc, PromptError) or not cfg.fallback_on_error:
            raise exc
        logger.warning(
            "speculator %s is unavailable (%s: %s); returning the nodes unpruned",
            self.speculator_name,
            type(exc).__name__,
            exc,
        )

    # --- nodes in and out ---------------------------------------------------------------------------
    @staticmethod
    def _prunable(passages: Sequence[Passage]) -> bool:
        return any(p.text.strip() for p in passages)

    def _passage(self, item: NodeWithScore) -> Passage:
        text = item.node.get_content(metadata_mode=MetadataMode.NONE) or ""
        header = item.node.get_metadata_str(MetadataMode.LLM) if self.include_metadata else ""
        return Passage(text=text, header=header, protected=tuple(self._value_spans(item, text)))

    def _value_spans(self, item: NodeWithScore, text: str) -> list[Span]:
        """Every occurrence, in ``text``, of the values of ``protected_metadata_keys``."""
        spans: list[Span] = []
        for key in self.protected_metadata_keys:
            value = item.node.metadata.get(key)
            needle = "" if value is None else str(value).strip()
            if not needle:
                continue
            start = text.find(needle)
            while start >= 0:
                spans.append((start, start + len(needle)))
                start = text.find(needle, start + len(needle))
        return spans

    def _emit(
        self, nodes: list[NodeWithScore], passages: list[Passage], pruned: PrunedPassages | None, cfg: SpecPrefillConfig
    ) -> tuple[list[NodeWithScore], PostprocessStats]:
        """One output node per input node (dropped ones removed if asked), with the statistics."""
        outcomes = pruned.passages if pruned is not None else [PassageOutcome(text=p.text) for p in passages]
        per_node = {
            i: NodePruneStats.of(item.node.node_id, i, outcome)
            for i, (item, passage, outcome) in enumerate(zip(nodes, passages, outcomes, strict=True))
            if passage.text.strip()
        }
        prompt = pruned.result.stats if pruned is not None else None
        stats = PostprocessStats.collect(len(nodes), list(per_node.values()), prompt, cfg, self.drop_empty_nodes)
        shared = stats.shared(self.speculator_name)
        out: list[NodeWithScore] = []
        for i, item in enumerate(nodes):
            node_stats = per_node.get(i)
            if node_stats is None:  # no text: nothing to prune, passed through as it is
                out.append(item)
                continue
            if node_stats.dropped and self.drop_empty_nodes:
                continue
            node = item.node.model_copy()
            node.metadata = {**item.node.metadata, METADATA_KEY: {**node_stats.to_dict(), **shared}}
            node.excluded_llm_metadata_keys = _with_key(item.node.excluded_llm_metadata_keys)
            node.excluded_embed_metadata_keys = _with_key(item.node.excluded_embed_metadata_keys)
            if outcomes[i].pruned:
                node.set_content("" if node_stats.dropped else outcomes[i].text)
            out.append(NodeWithScore(node=node, score=item.score))
        return out, stats


def _with_key(keys: Sequence[str]) -> list[str]:
    return list(keys) if METADATA_KEY in keys else [*keys, METADATA_KEY]
