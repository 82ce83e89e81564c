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


README_QUESTIONS: list[tuple[str, str]] = [
    # (question, a string of the answer that occurs once in the right document), from examples/README.md
    ("In which year was the stone bridge in Lanternfield completed?", "1896"),
    ("Who founded Lanternfield, and when?", "1742"),
    ("How many residents did Lanternfield have at the 2021 census?", "4,310"),
    ("What is the capacity of the Brightwell K2 kettle?", "1.7"),
    ("What does error code E4 mean on the Brightwell K2?", "E4"),
    ("How long is the Brightwell K2 warranty?", "hree years"),
    ("How many days of paid annual leave does a full-time Quillmark employee get?", "27"),
    ("What is Quillmark's daily meal allowance when travelling?", "45"),
    ("Who is the safety officer for the Quillmark test floor?", "Priya"),
    ("What budget did the Ferrow Valley library board approve for the roof repairs?", "18,400"),
    ("From when does the library open on Sunday afternoons?", "1 April"),
    ("How long is the saffron pear cake baked, and at what temperature?", "48 minutes"),
    ("How many cardamom buns does the recipe make?", "welve"),
    ("How deep did the ROV Petrel dive on 17 September?", "4,411"),
    ("What is the name of the newly found landslide scar?", "Oriel"),
    ("How many square kilometres of seabed did the Marisol map?", "1,260"),
]
