"""LangChain integration of Speculative Prefill.

- :class:`ChatSpecPrefill`: a chat model whose prompts a small speculator prunes before the base prefill.
- :class:`SpecPrefillDocumentCompressor`: query-aware pruning of retrieved documents (for
  ``ContextualCompressionRetriever``), one output document per input with statistics in its metadata.
- :class:`PackagedEmbeddings`: offline all-MiniLM-L6-v2 embeddings for examples and tests.

Models load on first use; importing this package does not import torch.
"""

from __future__ import annotations

from .chat_models import ChatSpecPrefill
from .document_compressors import SpecPrefillDocumentCompressor
from .embeddings import PackagedEmbeddings

__all__ = ["ChatSpecPrefill", "PackagedEmbeddings", "SpecPrefillDocumentCompressor"]
