"""``SpecPrefillDocumentCompressor``: query-aware pruning of retrieved documents with a speculator.

All documents are scored together with the question in one chat prompt, so the keep budget goes to the
documents (and passages) the question needs; the kept character spans are then split back per document.
One output document per input, in order, with its metadata and id kept and the statistics added.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from specprefill.config import SpecPrefillConfig
from specprefill.errors import SpeculatorError
from specprefill.prompts import scrub_surrogates
from specprefill.result import PruneResult
from specprefill.spans import Span, char_spans_to_token_mask, cut_spans, join_spans, kept_char_spans
from specprefill.speculator import Speculator

__all__ = ["SpecPrefillDocumentCompressor"]

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class _Layout:
    """The joint prompt and where each document and the question sit in the speculator's text."""

    prompt: str | list[dict[str, Any]]
    windows: list[Span]
    """Character span of each document in the prompt as the speculator sees it (rendered chat or text)."""
    protected: list[Span]
    body: str
    body_start: int
    config: SpecPrefillConfig


class SpecPrefillDocumentCompressor(BaseDocumentCompressor):
    """Prune retrieved documents down to what the question needs, scored jointly by a speculator LLM.

    The documents and the query form one chat prompt (``instruction`` as system message; the numbered
    documents followed by ``Question: <query>`` as user message). The speculator reads it, looks ahead at its
    own answer, and keeps the most important 32-token chunks across all documents (``keep_rate`` of them);
    the question, the document headers and the chat template are protected and do not use the budget.
    Each document then keeps its own kept spans, joined with the config's ``gap_marker`` (``" … "``).

    Use it as ``base_compressor`` of LangChain's ``ContextualCompressionRetriever``, or call
    :meth:`compress_documents` directly. The speculator loads on first use; pass a loaded
    :class:`~specprefill.speculator.Speculator` (e.g. ``chat.get_engine().speculator``) to share one.

    Every output document gets ``metadata["specprefill"]`` (see ``metadata_key``) with ``tokens_in``,
    ``tokens_kept``, ``keep_ratio`` and ``pruned`` for that document, plus the call's ``prompt_tokens_in``,
    ``prompt_tokens_kept``, ``speculator_seconds``, ``keep_rate``, ``fallback`` and ``speculator``.
    Token counts are speculator tokens.

    Example:
        >>> compressor = SpecPrefillDocumentCompressor(keep_rate=0.25, min_tokens_per_document=32)
        >>> docs = compressor.compress_documents(retriever.invoke(question), question)
        >>> [d.metadata["specprefill"]["keep_ratio"] for d in docs]

    """

    speculator: str | Speculator = DEFAULT_MODEL
    """The speculator: an embedded name (default ``"smollm2-135m"``), folder, hub id, or a loaded one."""

    keep_rate: float = Field(default=0.3, gt=0.0, le=1.0)
    """Fraction of the documents' chunks to keep, across all documents together."""

    max_kept_tokens: int | None = Field(default=None, ge=1)
    """Absolute cap on kept document tokens (applied together with ``keep_rate``)."""

    min_tokens_per_document: int = Field(default=0, ge=0)
    """Keep at least this many tokens of every document (its best-scoring chunks), beyond the budget."""

    min_prompt_tokens: int | None = Field(default=None, ge=0)
    """Joint prompts shorter than this many tokens are left whole (None: the config's value, 256)."""

    config: SpecPrefillConfig | None = None
    """Further scoring settings (``lookahead``, ``chunk_size``, ``gap_marker``, ...)."""

    instruction: str = "Answer the question using the documents."
    """System message of the joint prompt (protected; it steers the speculator's look-ahead)."""

    metadata_key: str = "specprefill"
    """Metadata key of the statistics added to every output document."""

    device: str = "cpu"
    """torch device when the speculator is loaded by name."""

    dtype: str | None = None
    """torch dtype name when the speculator is loaded by name (None: bfloat16)."""

    _loaded: Speculator | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _check_config(self) -> Self:
        self._config()  # fail at construction on invalid settings
        return self

    def get_speculator(self) -> Speculator:
        """The speculator, loaded now if it was given by name.

        Returns:
            The loaded :class:`~specprefill.speculator.Speculator`.

        Raises:
            ModelLoadError: The named speculator cannot be loaded.

        """
        if isinstance(self.speculator, Speculator):
            return self.speculator
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from specprefill.models import load_speculator

                    loaded = load_speculator(self.speculator, device=self.device, dtype=self.dtype)
                    if not isinstance(loaded, Speculator):  # pragma: no cover - load_speculator's contract
                        raise SpeculatorError(f"{self.speculator!r} did not load as a Speculator")
                    self._loaded = loaded
        return self._loaded

    # --- LangChain API --------------------------------------------------------------------------------
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Prune the documents for ``query``.

        Args:
            documents: Retrieved documents (their ``page_content`` is pruned).
            query: The question the documents should answer.
            callbacks: Unused (no LLM run is reported for scoring).

        Returns:
            One document per input, in the same order, with the same ``id`` and metadata plus the statistics.

        Raises:
            PromptError: The joint prompt cannot be tokenised.
            SpeculatorError: Scoring failed and the config's ``fallback_on_error`` is off.

        """
        docs = list(documents)
        if not docs:
            return []
        speculator = self.get_speculator()
        layout = self._layout(speculator, docs, query)
        pruned = speculator.prune(layout.prompt, layout.config, protected_spans=layout.protected)
        return self._split(docs, layout, pruned)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: loading and scoring run in worker threads, the loop stays free.

        Args:
            documents: Retrieved documents.
            query: The question.
            callbacks: Unused.

        Returns:
            One document per input, as for :meth:`compress_documents`.

        """
        docs = list(documents)
        if not docs:
            return []
        speculator = self._loaded if isinstance(self.speculator, str) else self.speculator
        if speculator is None:
            speculator = await asyncio.to_thread(self.get_speculator)
        layout = self._layout(speculator, docs, query)
        pruned = await speculator.aprune(layout.prompt, layout.config, protected_spans=layout.protected)
        return self._split(docs, layout, pruned)

    # --- helpers --------------------------------------------------------------------------------------
    def _config(self) -> SpecPrefillConfig:
        base = self.config or SpecPrefillConfig()
        return base.with_overrides(
            keep_rate=self.keep_rate,
            max_kept_tokens=self.max_kept_tokens,
            min_prompt_tokens=self.min_prompt_tokens,
            # the question is protected by its exact span; the documents before it must stay prunable
            protect_question_tokens=0,
        )

    def _layout(self, speculator: Speculator, docs: list[Document], query: str) -> _Layout:
        parts: list[str] = []
        offsets: list[Span] = []
        headers: list[Span] = []
        cursor = 0
        for i, doc in enumerate(docs, start=1):
            header = f"{'' if i == 1 else chr(10) * 2}Document {i}:\n"
            text = scrub_surrogates(doc.page_content)
            headers.append((cursor, cursor + len(header)))
            parts += [header, text]
            offsets.append((cursor + len(header), cursor + len(header) + len(text)))
            cursor += len(header) + len(text)
        question = f"\n\nQuestion: {scrub_surrogates(query)}"
        parts.append(question)
        body = "".join(parts)
        protected_body = [*headers, (cursor, cursor + len(question))]
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": body}]
        rendered = scrub_surrogates(speculator.render_chat(messages))
        start = rendered.find(body)
        prompt: str | list[dict[str, Any]] = messages
        if start < 0:  # a template that rewrites contents: score the plain text instead
            prompt, start = body, 0
        return _Layout(
            prompt=prompt,
            windows=[(start + s, start + e) for s, e in offsets],
            protected=[(start + s, start + e) for s, e in protected_body],
            body=body,
            body_start=start,
            config=self._config(),
        )

    def _split(self, docs: list[Document], layout: _Layout, pruned: PruneResult) -> list[Document]:
        source = pruned.source_text or ""
        if source[layout.body_start : layout.body_start + len(layout.body)] != layout.body:
            raise SpeculatorError(
                "the speculator's rendering of the joint prompt moved the documents; cannot map kept spans back"
            )
        offsets = pruned.offsets or []
        kept = np.zeros(len(offsets), dtype=np.bool_)
        kept[pruned.kept_indices] = True
        doc_tokens = [np.flatnonzero(char_spans_to_token_mask(offsets, [w])) for w in layout.windows]
        if pruned.stats.pruned and self.min_tokens_per_document > 0 and pruned.importance is not None:
            for tokens in doc_tokens:
                _ensure_minimum(kept, tokens, pruned.importance, self.min_tokens_per_document, layout.config.chunk_size)
        spans = kept_char_spans(offsets, np.flatnonzero(kept)) if pruned.stats.pruned else [(0, len(source))]
        stats = pruned.stats
        shared = {
            "prompt_tokens_in": stats.tokens_in,
            "prompt_tokens_kept": int(kept.sum()) if pruned.stats.pruned else stats.tokens_kept,
            "speculator_seconds": stats.speculator_seconds,
            "keep_rate": stats.keep_rate,
            "fallback": stats.fallback,
            "fallback_reason": stats.fallback_reason,
            "speculator": stats.speculator,
        }
        out: list[Document] = []
        for doc, window, tokens in zip(docs, layout.windows, doc_tokens, strict=True):
            local = cut_spans(spans, window)
            length = window[1] - window[0]
            whole = not pruned.stats.pruned or local == [(0, length)] or length == 0
            content = doc.page_content if whole else join_spans(doc.page_content, local, layout.config.gap_marker)
            n_in = len(tokens)
            n_kept = n_in if whole else int(kept[tokens].sum())
            info = {
                "tokens_in": n_in,
                "tokens_kept": n_kept,
                "keep_ratio": n_kept / n_in if n_in else 1.0,
                "pruned": not whole,
                **shared,
            }
            out.append(
                Document(
                    page_content=content,
                    metadata={**doc.metadata, self.metadata_key: info},
                    id=doc.id,
                )
            )
        return out


def _ensure_minimum(
    kept: np.ndarray[Any, np.dtype[np.bool_]],
    tokens: np.ndarray[Any, np.dtype[np.intp]],
    importance: np.ndarray[Any, np.dtype[np.float32]],
    minimum: int,
    chunk_size: int,
) -> None:
    """Add a document's best chunks (mean importance) to ``kept`` until it holds ``minimum`` tokens."""
    need = min(minimum, len(tokens)) - int(kept[tokens].sum())
    if need <= 0:
        return
    groups: dict[int, list[int]] = {}
    for t in tokens.tolist():
        groups.setdefault(t // chunk_size, []).append(t)
    ranked = sorted(groups.values(), key=lambda g: (-float(importance[g].mean()), g[0]))
    for group in ranked:
        missing = [t for t in group if not kept[t]]
        if not missing:
            continue
        kept[missing] = True
        need -= len(missing)
        if need <= 0:
            return
