"""Shared, cached builders for the LlamaIndex tests that use the real packaged models."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = ROOT / "examples" / "documents"
EXAMPLE = ROOT / "examples" / "llamaindex_rag.py"


def document_metadata(path: str) -> dict[str, Any]:
    """Metadata for a bundled document: its file name and its first line as the title."""
    file = Path(path)
    return {"file_name": file.name, "title": file.read_text(encoding="utf-8").splitlines()[0].strip()}


@functools.cache
def build_index(chunk_size: int = 256) -> Any:
    """A VectorStoreIndex over examples/documents with the packaged MiniLM embeddings (built once per run)."""
    from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index.embeddings.specprefill import PackagedEmbedding

    documents = SimpleDirectoryReader(str(DOCUMENTS), file_metadata=document_metadata).load_data()
    return VectorStoreIndex.from_documents(
        documents,
        embed_model=PackagedEmbedding(),
        transformations=[SentenceSplitter(chunk_size=chunk_size, chunk_overlap=0)],
    )


def sentence_with(text: str, needle: str) -> str:
    """The sentence of ``text`` that contains ``needle`` (sentences end at . ! ? or a blank line)."""
    pieces = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    for piece in pieces:
        if needle in piece:
            return piece.strip()
    raise AssertionError(f"{needle!r} is not in the text")


def words(text: str) -> list[str]:
    """White-space separated words (line breaks inside a kept span do not matter)."""
    return text.split()
