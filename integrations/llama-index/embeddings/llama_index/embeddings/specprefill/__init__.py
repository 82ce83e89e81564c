"""LlamaIndex embeddings backed by specprefill's packaged, offline all-MiniLM-L6-v2 model.

Example:
    >>> from llama_index.embeddings.specprefill import PackagedEmbedding
    >>> index = VectorStoreIndex.from_documents(documents, embed_model=PackagedEmbedding())

"""

from llama_index.embeddings.specprefill.base import PackagedEmbedding

__all__ = ["PackagedEmbedding"]
