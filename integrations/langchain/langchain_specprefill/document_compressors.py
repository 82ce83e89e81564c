"""``SpecPrefillDocumentCompressor``: query-aware pruning of retrieved documents with a speculator.

All documents are scored together with the question in one chat prompt (:mod:`specprefill.prompt.passages`), so
the keep budget goes to the documents the question needs; the kept character spans are then split back per
document. One output document per input, in order, with its metadata and id kept and the statistics added.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, SpeculatorError
from specprefill.prompt.passages import PASSAGE_LOOKAHEAD, Passage, PrunedPassages, aprune_passages, prune_passages
from specprefill.speculator.base import Speculator
from specprefill.speculator.remote import RemoteSpeculator

__all__ = ["SpecPrefillDocumentCompressor"]

DEFAULT_MODEL = "smollm2-135m"


class SpecPrefillDocumentCompressor(BaseDocumentCompressor):
    """Prune retrieved documents down to what the question needs, scored jointly by a speculator LLM.

    The documents and the query form one chat prompt (``instruction`` as system message; the numbered
    documents followed by ``Question: <query>`` as user message; see :mod:`specprefill.prompt.passages`). The
    speculator reads it, looks ahead at its own answer, and keeps the most important chunks across all
    documents (``keep_rate`` of their tokens); every document starts its own chunk grid, and the question,
    the document headers and the chat template are protected and do not use the budget. Each document
    then keeps its own kept spans, joined with the config's ``gap_marker`` (``" … "``).

    Use it as ``base_compressor`` of LangChain's ``ContextualCompressionRetriever``, or call
    :meth:`compress_documents` directly. The speculator loads on first use; pass a loaded
    :class:`~specprefill.speculator.base.Speculator` (e.g. ``chat.get_engine().speculator``) to share one. With
    ``base_url`` (a ``specprefill serve`` server) the server's speculator scores and no model loads here.

    Every output document gets ``metadata["specprefill"]`` (see ``metadata_key``) with ``tokens_in``,
    ``tokens_kept``, ``keep_ratio`` and ``pruned`` for that document, plus the call's ``prompt_tokens_in``,
    ``prompt_tokens_kept``, ``speculator_seconds``, ``keep_rate``, ``fallback`` and ``speculator``.
    Token counts are speculator tokens.

    Example:
        >>> compressor = SpecPrefillDocumentCompressor(keep_rate=0.25, min_tokens_per_document=32)
        >>> docs = compressor.compress_documents(retriever.invoke(question), question)
        >>> [d.metadata["specprefill"]["keep_ratio"] for d in docs]

    """

    speculator: str | Speculator | RemoteSpeculator = DEFAULT_MODEL
    """The speculator: an embedded name (default ``"smollm2-135m"``), folder, hub id, a loaded one, or a remote one."""

    base_url: str | None = None
    """Root URL of a specprefill server that scores instead of a local model (give it or ``speculator``)."""

    api_key: SecretStr | None = None
    """Bearer token of that server (``--api-key``)."""

    timeout: float = Field(default=60.0, gt=0.0)
    """Seconds to wait for that server."""

    keep_rate: float = Field(default=0.3, gt=0.0, le=1.0)
    """Fraction of the documents' tokens to keep, across all documents together."""

    max_kept_tokens: int | None = Field(default=None, ge=1)
    """Absolute cap on kept document tokens (applied together with ``keep_rate``)."""

    min_tokens_per_document: int = Field(default=0, ge=0)
    """Keep at least this many tokens of every document (its best chunks, the last cut to a run), beyond the budget."""

    min_prompt_tokens: int | None = Field(default=None, ge=0)
    """Joint prompts shorter than this many tokens are left whole (None: the config's value, 256)."""

    config: SpecPrefillConfig | None = None
    """Further scoring settings (``lookahead``, ``chunk_size``, ``gap_marker``, ...); None: the defaults with
    ``lookahead=PASSAGE_LOOKAHEAD`` (16, as the LlamaIndex postprocessor)."""

    metadata_keys: tuple[str, ...] = ()
    """Metadata shown to the speculator above each document as ``key: value`` lines (e.g. ``("title",)``), as
    the LlamaIndex postprocessor shows node metadata; protected and never part of the output. Missing keys
    are skipped."""

    instruction: str = "Answer the question using the documents."
    """System message of the joint prompt (protected; it steers the speculator's look-ahead)."""

    metadata_key: str = "specprefill"
    """Metadata key of the statistics added to every output document."""

    device: str = "cpu"
    """torch device when the speculator is loaded by name."""

    dtype: str | None = None
    """torch dtype name when the speculator is loaded by name (None: bfloat16)."""

    _loaded: Speculator | None = PrivateAttr(default=None)
    _remote: RemoteSpeculator | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _check_config(self) -> Self:
        self._config()  # fail at construction on invalid settings
        if self.base_url is not None:
            if "speculator" in self.model_fields_set:
                raise ConfigurationError("pass either speculator= (a local model) or base_url= (a server), not both")
            key = self.api_key.get_secret_value() if self.api_key else None
            self._remote = RemoteSpeculator(self.base_url, timeout=self.timeout, api_key=key)
        elif isinstance(self.speculator, RemoteSpeculator):
            self._remote = self.speculator
        return self

    def _passage(self, document: Document) -> Passage:
        """A document as a passage, with the chosen metadata as its header."""
        lines = [f"{key}: {document.metadata[key]}" for key in self.metadata_keys if key in document.metadata]
        return Passage(text=document.page_content, header="\n".join(lines))

    def get_speculator(self) -> Speculator:
        """The speculator, loaded now if it was given by name.

        Returns:
            The loaded :class:`~specprefill.speculator.base.Speculator`.

        Raises:
            ModelLoadError: The named speculator cannot be loaded.
            ConfigurationError: The compressor scores on a server (``base_url``); it has no local model.

        """
        if self._remote is not None:
            raise ConfigurationError(f"this compressor scores on the server at {self._remote.base_url}; no local model")
        if isinstance(self.speculator, Speculator):
            return self.speculator
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from specprefill.speculator.loading import load_speculator

                    loaded = load_speculator(self.speculator, device=self.device, dtype=self.dtype)
                    if not isinstance(loaded, Speculator):  # pragma: no cover - load_speculator's contract
                        raise SpeculatorError(f"{self.speculator!r} did not load as a Speculator")
                    self._loaded = loaded
        return self._loaded

    # --- LangChain API --------------------------------------------------------------------------------
    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Prune the documents for ``query``.

        Args:
            documents: Retrieved documents (their ``page_content`` is pruned).
            query: The question the documents should answer.
            callbacks: Unused (no LLM run is reported for scoring).

        Returns:
            One document per input, in the same order, with the same ``id`` and metadata plus the statistics.

        Raises:
            PromptError: The joint prompt cannot be tokenised, or the speculator's template changes it.
            SpeculatorError: Scoring failed and the config's ``fallback_on_error`` is off.

        """
        docs = list(documents)
        if not docs:
            return []
        passages = [self._passage(d) for d in docs]
        if self._remote is not None:
            return self._split(docs, self._remote.prune_passages(passages, query, self._config(), **self._options()))
        pruned = prune_passages(self.get_speculator(), passages, query, self._config(), **self._options())
        return self._split(docs, pruned)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
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
        if self._remote is not None:
            passages = [self._passage(d) for d in docs]
            pruned = await self._remote.aprune_passages(passages, query, self._config(), **self._options())
            return self._split(docs, pruned)
        speculator = self._loaded if isinstance(self.speculator, str) else self.speculator
        if speculator is None:
            speculator = await asyncio.to_thread(self.get_speculator)
        passages = [self._passage(d) for d in docs]
        pruned = await aprune_passages(speculator, passages, query, self._config(), **self._options())
        return self._split(docs, pruned)

    # --- helpers --------------------------------------------------------------------------------------
    def _config(self) -> SpecPrefillConfig:
        base = self.config or SpecPrefillConfig(lookahead=PASSAGE_LOOKAHEAD)
        return base.with_overrides(
            keep_rate=self.keep_rate, max_kept_tokens=self.max_kept_tokens, min_prompt_tokens=self.min_prompt_tokens
        )

    def _options(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "min_tokens_per_passage": self.min_tokens_per_document}

    def _split(self, docs: list[Document], pruned: PrunedPassages) -> list[Document]:
        stats = pruned.result.stats
        shared = {
            "prompt_tokens_in": stats.tokens_in,
            "prompt_tokens_kept": stats.tokens_kept,
            "speculator_seconds": stats.speculator_seconds,
            "keep_rate": stats.keep_rate,
            "fallback": stats.fallback,
            "fallback_reason": stats.fallback_reason,
            "speculator": stats.speculator,
        }
        return [
            Document(
                page_content=outcome.text,
                metadata={
                    **doc.metadata,
                    self.metadata_key: {
                        "tokens_in": outcome.tokens_in,
                        "tokens_kept": outcome.tokens_kept,
                        "keep_ratio": outcome.keep_ratio,
                        "pruned": outcome.pruned,
                        **shared,
                    },
                },
                id=doc.id,
            )
            for doc, outcome in zip(docs, pruned.passages, strict=True)
        ]
