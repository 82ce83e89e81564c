"""``SpecPrefillNodePostprocessor``: query-aware pruning of retrieved nodes with a speculator model.

All retrieved nodes and the query go to the speculator as **one** chat prompt (an instruction, the numbered
passages, then the question), so the budget goes to whichever passages the question needs rather than being
split evenly. The kept character spans are then written back node by node: every input node gives one
output node with the same id, score and metadata, its text cut down to its kept spans with ``set_content``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # no __all__ upstream
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from llama_index.postprocessor.specprefill.events import SpecPrefillPruneEndEvent, SpecPrefillPruneStartEvent
from llama_index.postprocessor.specprefill.selection import passage_chunks, select_passage_chunks
from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError
from specprefill.prompts import locate_contents_by_template, validate_messages
from specprefill.result import Message, PruneResult, PruneStats
from specprefill.spans import Span, char_spans_to_token_mask, cut_spans, join_spans, kept_char_spans
from specprefill.speculator import Speculator

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_LOOKAHEAD",
    "METADATA_KEY",
    "NodePruneStats",
    "PostprocessStats",
    "SpecPrefillNodePostprocessor",
]

logger = logging.getLogger("specprefill.llama_index")
dispatcher = get_dispatcher(__name__)

METADATA_KEY = "specprefill"
"""Metadata key of the per-node pruning statistics (excluded from LLM and embedding text)."""

DEFAULT_INSTRUCTION = "Answer the question using the numbered passages below."
"""System message of the prompt the speculator scores (protected, never part of the output)."""

DEFAULT_LOOKAHEAD = 16
"""Look-ahead of the default config: a small speculator first restates the question ("The stone bridge in
Lanternfield ..."); its queries reach the answer tokens only after about ten generated tokens."""

_PASSAGES_HEADER = "Passages:"
_QUESTION_HEADER = "Question:"


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
    """Tokens kept because they hold a protected metadata value (or touch the passage header)."""
    minimum_tokens_added: int = 0
    """Tokens added to reach ``min_tokens_per_node`` (on top of the budget)."""
    dropped: bool = False
    """True when no text of the node survived (the node is then removed if ``drop_empty_nodes``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for metadata or JSON."""
        return asdict(self)


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


@dataclass(frozen=True)
class _Layout:
    """The speculator prompt and where each node's text sits in its chat-template rendering."""

    messages: list[Message]
    rendered: str
    positions: list[int]
    """Indices (into the input list) of the nodes that have text."""
    texts: list[str]
    windows: list[Span]
    """Character span of each node's text in ``rendered``."""
    protected: list[Span]
    """Rendered-text spans never dropped: passage headers, separators, question, protected metadata values."""


class SpecPrefillNodePostprocessor(BaseNodePostprocessor):
    """Prune retrieved nodes before synthesis with Speculative Prefill's speculator, node identity kept.

    The nodes and the query are scored together as one prompt, so the kept budget is spent where the
    question needs it. Each input node gives one output node with the same ``id_``, ``score`` and metadata;
    its text is replaced (``set_content``) by its kept spans joined with the config's ``gap_marker``. Nodes
    whose text is dropped entirely are removed (``drop_empty_nodes``). Statistics go to each node's metadata
    under :data:`METADATA_KEY` (excluded from the LLM and embedding text), to the callback manager (a
    ``RERANKING`` event with ``additional_kwargs``) and to the instrumentation dispatcher
    (:class:`SpecPrefillPruneStartEvent`, :class:`SpecPrefillPruneEndEvent`). Input nodes are not modified.

    Selection differs from the paper's in two ways that matter with several passages (see
    :mod:`~llama_index.postprocessor.specprefill.selection`): the chunk grid restarts at every passage, so
    no chunk straddles two passages or a passage and its header, and a chunk is scored by its unprotected
    tokens only. The default config also looks ahead :data:`DEFAULT_LOOKAHEAD` tokens instead of 8. On the
    bundled example documents (15 retrievable README questions) with the embedded 135M speculator at
    ``keep_rate=0.2`` they raised the questions whose whole answer sentence survives from 5 to 10 (7 to 10
    depending on metadata headers and index layout).

    Budgets count speculator tokens of the node texts: ``keep_rate`` keeps ``ceil(keep_rate * chunks)`` of
    the passages' chunks; ``max_kept_tokens`` caps the kept unprotected tokens exactly. Passage headers,
    the instruction and the question are protected and do not use the budget. Prompts shorter than
    ``config.min_prompt_tokens`` pass through unchanged.

    Args:
        speculator: A loaded :class:`~specprefill.speculator.Speculator`, or a name/path for
            :func:`specprefill.load_speculator`, loaded on first use (default: the embedded
            ``"smollm2-135m"``). Constructing the postprocessor never loads a model.
        keep_rate: Fraction of the prunable chunks to keep, in (0, 1] (default: ``config.keep_rate``).
        max_kept_tokens: Token budget for the node texts. Given alone, it is the only budget
            (``keep_rate`` becomes 1.0); given with ``keep_rate``, both apply.
        min_tokens_per_node: Keep at least this many tokens of every node (its best chunks, rounded up to
            chunk boundaries), on top of the budget. 0 lets a node be dropped entirely.
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
    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0, description="Fraction of chunks to keep.")
    max_kept_tokens: int | None = Field(default=None, ge=1, description="Token budget for the node texts.")
    min_tokens_per_node: int = Field(default=0, ge=0, description="Tokens every node keeps at least.")
    protected_metadata_keys: list[str] = Field(
        default_factory=list, description="Metadata keys whose values are never dropped from a node's text."
    )
    drop_empty_nodes: bool = Field(default=True, description="Remove nodes whose text was dropped entirely.")
    include_metadata: bool = Field(default=True, description="Show node metadata (LLM mode) to the speculator.")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, description="System message of the scored prompt.")
    config: SpecPrefillConfig = Field(default_factory=lambda: SpecPrefillConfig(lookahead=DEFAULT_LOOKAHEAD),
                                      description="Pruning settings.")

    _speculator: Speculator | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, speculator: Speculator | str = "smollm2-135m", **kwargs: Any) -> None:
        if not isinstance(speculator, (Speculator, str)):
            raise ConfigurationError(
                f"speculator must be a Speculator or a model name, got {type(speculator).__name__}"
            )
        name = speculator if isinstance(speculator, str) else speculator.name
        fields: dict[str, Any] = {"speculator_name": name, **kwargs}
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid SpecPrefillNodePostprocessor settings: {exc}") from exc
        if self.config.protected_count_toward_budget:
            raise ConfigurationError(
                "SpecPrefillNodePostprocessor does not support protected_count_toward_budget: passage headers, "
                "the question and protected metadata values never use the budget; lower max_kept_tokens instead"
            )
        if isinstance(speculator, Speculator):
            self._speculator = speculator

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

        """
        if self._speculator is None:
            with self._load_lock:
                if self._speculator is None:
                    from specprefill.models import load_speculator

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
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Prune the nodes' texts for the query (see the class docstring)."""
        if not nodes:
            return []
        cfg = self.effective_config
        query = query_bundle.query_str if query_bundle is not None else None
        self._start_event(nodes, query, cfg)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            pruned: PruneResult | None = None
            layout: _Layout | None = None
            if self._prunable(nodes):
                try:
                    speculator = self.speculator
                    layout = self._layout(speculator, nodes, query)
                    pruned = speculator.prune(layout.messages, _scoring(cfg), protected_spans=layout.protected)
                except PromptError:
                    raise
                except Exception as exc:
                    self._fallback_or_raise(cfg, exc)
                    layout = pruned = None
            out, stats = self._write_back(nodes, layout, pruned, cfg)
            event.on_end(payload=_end_payload(out, stats))
        dispatcher.event(SpecPrefillPruneEndEvent(nodes=out, stats=stats.to_dict()))
        return out

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Async pruning: the speculator loads and scores in worker threads (``Speculator.aprune``)."""
        if not nodes:
            return []
        cfg = self.effective_config
        query = query_bundle.query_str if query_bundle is not None else None
        self._start_event(nodes, query, cfg)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            pruned: PruneResult | None = None
            layout: _Layout | None = None
            if self._prunable(nodes):
                try:
                    speculator = self._speculator
                    if speculator is None:
                        speculator = await asyncio.to_thread(lambda: self.speculator)
                    layout = self._layout(speculator, nodes, query)
                    pruned = await speculator.aprune(layout.messages, _scoring(cfg), protected_spans=layout.protected)
                except PromptError:
                    raise
                except Exception as exc:
                    self._fallback_or_raise(cfg, exc)
                    layout = pruned = None
            out, stats = self._write_back(nodes, layout, pruned, cfg)
            event.on_end(payload=_end_payload(out, stats))
        dispatcher.event(SpecPrefillPruneEndEvent(nodes=out, stats=stats.to_dict()))
        return out

    # --- events -------------------------------------------------------------------------------------
    def _start_event(self, nodes: list[NodeWithScore], query: str | None, cfg: SpecPrefillConfig) -> None:
        dispatcher.event(
            SpecPrefillPruneStartEvent(
                query=query,
                nodes=nodes,
                model_name=self.speculator_name,
                keep_rate=cfg.keep_rate,
                max_kept_tokens=cfg.max_kept_tokens,
            )
        )

    def _payload(self, nodes: list[NodeWithScore], query: str | None) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.speculator_name,
            EventPayload.QUERY_STR: query,
        }

    def _fallback_or_raise(self, cfg: SpecPrefillConfig, exc: Exception) -> None:
        if not cfg.fallback_on_error:
            raise exc
        logger.warning(
            "speculator %s is unavailable (%s: %s); returning the nodes unpruned",
            self.speculator_name,
            type(exc).__name__,
            exc,
        )

    # --- prompt layout ------------------------------------------------------------------------------
    @staticmethod
    def _text_of(node: NodeWithScore) -> str:
        return node.node.get_content(metadata_mode=MetadataMode.NONE) or ""

    def _prunable(self, nodes: Sequence[NodeWithScore]) -> bool:
        return any(self._text_of(n).strip() for n in nodes)

    def _layout(self, speculator: Speculator, nodes: Sequence[NodeWithScore], query: str | None) -> _Layout:
        """Build the chat prompt and locate every node text and protected span in its rendering."""
        parts: list[str] = [_PASSAGES_HEADER]
        cursor = len(_PASSAGES_HEADER)
        positions: list[int] = []
        texts: list[str] = []
        local_windows: list[Span] = []
        local_protected: list[Span] = []
        for i, item in enumerate(nodes):
            text = self._text_of(item)
            if not text.strip():
                continue
            header = f"\n\n[{len(positions) + 1}]"
            meta = item.node.get_metadata_str(MetadataMode.LLM).strip() if self.include_metadata else ""
            header += f" {meta}\n" if meta else "\n"
            start = cursor + len(header)
            parts.extend((header, text))
            cursor = start + len(text)
            positions.append(i)
            texts.append(text)
            local_windows.append((start, cursor))
            local_protected.extend((s + start, e + start) for s, e in self._value_spans(item, text))
        if query is not None and query.strip():
            parts.append(f"\n\n{_QUESTION_HEADER} {query.strip()}")
        content = "".join(parts)
        messages = validate_messages([{"role": "system", "content": self.instruction},
                                      {"role": "user", "content": content}])
        rendered = speculator.render_chat(messages)
        located = locate_contents_by_template(rendered, messages, speculator.render_chat)[1]
        offset = located[0]
        if rendered[offset : offset + len(content)] != messages[1]["content"]:
            raise PromptError(
                f"the chat template of speculator {speculator.name!r} changes the passages text, so kept spans "
                "cannot be mapped back to nodes; use a speculator whose template keeps message contents verbatim"
            )
        # Everything of the user message that is not node text (headers, separators, question) is protected.
        gaps: list[Span] = []
        last = 0
        for s, e in local_windows:
            gaps.append((last, s))
            last = e
        gaps.append((last, len(content)))
        shift = [(s + offset, e + offset) for s, e in gaps + local_protected if e > s]
        return _Layout(
            messages=messages,
            rendered=rendered,
            positions=positions,
            texts=texts,
            windows=[(s + offset, e + offset) for s, e in local_windows],
            protected=shift,
        )

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

    # --- writing back -------------------------------------------------------------------------------
    def _write_back(
        self,
        nodes: list[NodeWithScore],
        layout: _Layout | None,
        pruned: PruneResult | None,
        cfg: SpecPrefillConfig,
    ) -> tuple[list[NodeWithScore], PostprocessStats]:
        """Select passage chunks from the speculator's importance and cut every node down to its kept spans."""
        if layout is None or pruned is None or pruned.offsets is None or pruned.source_text != layout.rendered:
            if pruned is not None:  # pragma: no cover - prune renders the same messages the same way
                logger.warning("the speculator rendered the prompt differently; returning the nodes unpruned")
            return self._unchanged(nodes, cfg, pruned.stats if pruned is not None else None)
        start = time.perf_counter()
        offsets = pruned.offsets
        n = len(offsets)
        segments = [_token_range(char_spans_to_token_mask(offsets, [w])) for w in layout.windows]
        inside = np.zeros(n, dtype=np.bool_)
        for s, e in segments:
            inside[s:e] = True
        protected = char_spans_to_token_mask(offsets, layout.protected) | ~inside
        added = [0] * len(segments)
        if pruned.importance is None:  # not scored: shorter than min_prompt_tokens, or the speculator failed
            keep = np.ones(n, dtype=np.bool_)
        else:
            keep = select_passage_chunks(
                pruned.importance,
                segments,
                protected,
                keep_rate=cfg.keep_rate,
                chunk_size=cfg.chunk_size,
                max_kept_tokens=cfg.max_kept_tokens,
            )
            if self.min_tokens_per_node > 0:
                added = _ensure_minimum(keep, pruned.importance, segments, cfg.chunk_size, self.min_tokens_per_node)
        spans = kept_char_spans(offsets, np.flatnonzero(keep))
        new_text: dict[int, str] = {}
        per_node: list[NodePruneStats] = []
        for j, index in enumerate(layout.positions):
            text = layout.texts[j]
            local = cut_spans(spans, layout.windows[j])
            empty = not any(text[s:e].strip() for s, e in local)
            if local != [(0, len(text))]:
                new_text[index] = "" if empty else join_spans(text, local, cfg.gap_marker)
            s, e = segments[j]
            tokens_kept = int(keep[s:e].sum())
            per_node.append(
                NodePruneStats(
                    node_id=nodes[index].node.node_id,
                    rank=index,
                    tokens_in=e - s,
                    tokens_kept=tokens_kept,
                    keep_ratio=tokens_kept / (e - s) if e > s else 1.0,
                    protected_tokens=int(protected[s:e].sum()),
                    minimum_tokens_added=added[j],
                    dropped=empty,
                )
            )
        kept_total = int(keep.sum())
        chunks = passage_chunks(segments, cfg.chunk_size)
        prompt = replace(
            pruned.stats,
            tokens_kept=kept_total,
            keep_ratio=kept_total / n if n else 1.0,
            keep_rate=cfg.keep_rate,
            chunks_total=len(chunks),
            chunks_kept=sum(bool(keep[s:e].any()) for s, e in chunks),
            pruned=kept_total < n,
            speculator_seconds=pruned.stats.speculator_seconds + time.perf_counter() - start,
        )
        return self._emit(nodes, new_text, per_node, prompt, cfg)

    def _unchanged(
        self, nodes: list[NodeWithScore], cfg: SpecPrefillConfig, prompt: PruneStats | None
    ) -> tuple[list[NodeWithScore], PostprocessStats]:
        per_node = [
            NodePruneStats(node_id=item.node.node_id, rank=i, tokens_in=0, tokens_kept=0, keep_ratio=1.0,
                           protected_tokens=0)
            for i, item in enumerate(nodes)
            if self._text_of(item).strip()
        ]
        return self._emit(nodes, {}, per_node, prompt, cfg)

    def _emit(
        self,
        nodes: list[NodeWithScore],
        new_text: dict[int, str],
        per_node: list[NodePruneStats],
        prompt: PruneStats | None,
        cfg: SpecPrefillConfig,
    ) -> tuple[list[NodeWithScore], PostprocessStats]:
        tokens_in = sum(s.tokens_in for s in per_node)
        tokens_kept = sum(s.tokens_kept for s in per_node)
        dropped = sum(s.dropped for s in per_node)
        stats = PostprocessStats(
            nodes_in=len(nodes),
            nodes_out=len(nodes) - (dropped if self.drop_empty_nodes else 0),
            nodes_dropped=dropped,
            context_tokens_in=tokens_in,
            context_tokens_kept=tokens_kept,
            context_keep_ratio=tokens_kept / tokens_in if tokens_in else 1.0,
            protected_context_tokens=sum(s.protected_tokens for s in per_node),
            minimum_tokens_added=sum(s.minimum_tokens_added for s in per_node),
            keep_rate=cfg.keep_rate,
            max_kept_tokens=cfg.max_kept_tokens,
            prompt=prompt,
            nodes=per_node,
        )
        shared = {
            "context_tokens_in": stats.context_tokens_in,
            "context_tokens_kept": stats.context_tokens_kept,
            "prompt_tokens_in": prompt.tokens_in if prompt else 0,
            "prompt_tokens_kept": prompt.tokens_kept if prompt else 0,
            "speculator_seconds": stats.speculator_seconds,
            "speculator": prompt.speculator if prompt and prompt.speculator else self.speculator_name,
            "pruned": bool(prompt and prompt.pruned),
            "fallback": prompt is None or prompt.fallback,
            "keep_rate": cfg.keep_rate,
            "max_kept_tokens": cfg.max_kept_tokens,
        }
        by_rank = {s.rank: s for s in per_node}
        out: list[NodeWithScore] = []
        for i, item in enumerate(nodes):
            node_stats = by_rank.get(i)
            if node_stats is None:  # no text: nothing to prune, passed through as it is
                out.append(item)
                continue
            if node_stats.dropped and self.drop_empty_nodes:
                continue
            node = item.node.model_copy()
            node.metadata = {**item.node.metadata, METADATA_KEY: {**node_stats.to_dict(), **shared}}
            node.excluded_llm_metadata_keys = _with_key(item.node.excluded_llm_metadata_keys)
            node.excluded_embed_metadata_keys = _with_key(item.node.excluded_embed_metadata_keys)
            if i in new_text:
                node.set_content(new_text[i])
            out.append(NodeWithScore(node=node, score=item.score))
        return out, stats


def _end_payload(nodes: list[NodeWithScore], stats: PostprocessStats) -> dict[str, Any]:
    return {EventPayload.NODES: nodes, EventPayload.ADDITIONAL_KWARGS: {METADATA_KEY: stats.to_dict()}}


def _scoring(cfg: SpecPrefillConfig) -> SpecPrefillConfig:
    """The config for the speculator's own pass: score only (everything kept); selection happens here."""
    return SpecPrefillConfig(**{**cfg.model_dump(), "keep_rate": 1.0, "max_kept_tokens": None})


def _with_key(keys: Sequence[str]) -> list[str]:
    return list(keys) if METADATA_KEY in keys else [*keys, METADATA_KEY]


def _token_range(mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """First and one-past-last index of the set entries of ``mask`` (``(0, 0)`` if none)."""
    idx = np.flatnonzero(mask)
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0)


def _ensure_minimum(
    keep: npt.NDArray[np.bool_],
    importance: npt.NDArray[np.float32],
    segments: Sequence[tuple[int, int]],
    chunk_size: int,
    minimum: int,
) -> list[int]:
    """Add each short passage's best chunks until it holds ``minimum`` kept tokens (in place).

    Returns:
        Tokens added per passage.

    """
    imp = np.where(np.isnan(importance), np.float32(-np.inf), importance)
    added: list[int] = []
    for s, e in segments:
        need = min(minimum, e - s) - int(keep[s:e].sum())
        count = 0
        if need > 0:
            chunks = passage_chunks([(s, e)], chunk_size)
            for lo, hi in sorted(chunks, key=lambda c: (-float(imp[c[0] : c[1]].mean()), c[0])):
                fresh = int((~keep[lo:hi]).sum())
                if fresh:
                    keep[lo:hi] = True
                    count += fresh
                    if count >= need:
                        break
        added.append(count)
    return added
