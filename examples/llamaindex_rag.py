"""Retrieval-augmented QA with LlamaIndex and Speculative Prefill, fully offline.

A ``VectorStoreIndex`` over ``examples/documents`` (packaged all-MiniLM-L6-v2 embeddings) feeds a query engine
whose retrieved nodes are pruned for the question by ``SpecPrefillNodePostprocessor`` and whose LLM is
``SpecPrefillLLM``: the embedded SmolLM2-135M-Instruct is both the speculator and the base model (it shows the
pipeline, not good answers; see examples/README.md for the expected answers). For each question it prints
the answer, the pruned sources and the pruning statistics of both stages.

From the repository root (after ``make venv``):

    .venv/bin/python examples/llamaindex_rag.py
    .venv/bin/python examples/llamaindex_rag.py "Who is the safety officer for the Quillmark test floor?" --async
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.node_parser import SentenceSplitter

from llama_index.embeddings.specprefill import PackagedEmbedding
from llama_index.llms.specprefill import STATS_KEY, SpecPrefillLLM
from llama_index.postprocessor.specprefill import METADATA_KEY, SpecPrefillNodePostprocessor, SpecPrefillPruneEndEvent
from specprefill import SpecPrefillConfig, load_engine

DOCUMENTS = Path(__file__).parent / "documents"
QUESTIONS = [
    "In which year was the stone bridge in Lanternfield completed?",
    "What budget did the Ferrow Valley library board approve for the roof repairs?",
]


class StatsRecorder(BaseEventHandler):
    """Keeps the statistics the postprocessor and the LLM report through LlamaIndex instrumentation."""

    postprocessor: dict[str, Any] = Field(default_factory=dict)
    llm: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "StatsRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, SpecPrefillPruneEndEvent):
            self.postprocessor = event.stats
        elif isinstance(event, LLMChatEndEvent) and event.response is not None:
            self.llm = event.response.additional_kwargs.get(STATS_KEY, {})


def metadata(path: str) -> dict[str, Any]:
    """File name plus the document's first line as its title (shown to the LLM and protected in the text)."""
    file = Path(path)
    return {"file_name": file.name, "title": file.read_text(encoding="utf-8").splitlines()[0].strip()}


def build_query_engine(keep_rate: float, llm_keep_rate: float, top_k: int, max_new_tokens: int) -> Any:
    embed_model = PackagedEmbedding()
    # Set explicitly so that no LlamaIndex default ever reaches for OpenAI.
    Settings.embed_model = embed_model
    documents = SimpleDirectoryReader(str(DOCUMENTS), file_metadata=metadata).load_data()
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        documents, embed_model=embed_model, transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0)]
    )
    print(
        f"indexed {len(documents)} documents as {len(index.docstore.docs)} nodes in {time.perf_counter() - start:.1f} s"
    )

    # One model, loaded once, is the speculator (for the postprocessor and the LLM) and the base.
    # The postprocessor already cut the passages; the LLM prunes the assembled prompt once more, at original
    # positions, protecting the template, the system prompt and the last 64 tokens (the query).
    config = SpecPrefillConfig(keep_rate=llm_keep_rate, protect_question_tokens=64)
    engine = load_engine("smollm2-135m", config=config)
    speculator = engine.speculator
    llm = SpecPrefillLLM(engine, max_new_tokens=max_new_tokens)
    Settings.llm = llm
    postprocessor = SpecPrefillNodePostprocessor(
        speculator, keep_rate=keep_rate, protected_metadata_keys=["title"], min_tokens_per_node=0
    )
    return index.as_query_engine(llm=llm, similarity_top_k=top_k, node_postprocessors=[postprocessor])


def show(question: str, response: Any, recorder: StatsRecorder, seconds: float) -> None:
    print(f"\nQ: {question}")
    print(f"A: {str(response).strip()}")
    print("Sources (pruned):")
    for item in response.source_nodes:
        s = item.node.metadata.get(METADATA_KEY, {})
        text = " ".join(item.node.get_content().split())
        print(
            f"  [{item.score:.3f}] {item.node.metadata.get('file_name', '?')}: "
            f"{s.get('tokens_kept', '?')}/{s.get('tokens_in', '?')} tokens kept | {text[:200]}…"
        )
    p = recorder.postprocessor
    if p:
        prompt = p.get("prompt") or {}
        print(
            f"Postprocessor: {p['nodes_in']} nodes -> {p['nodes_out']}, context tokens "
            f"{p['context_tokens_in']} -> {p['context_tokens_kept']} ({p['context_keep_ratio']:.2f}), "
            f"speculator {prompt.get('speculator_seconds', 0.0):.2f} s"
        )
    q = recorder.llm
    if q:
        print(
            f"LLM: prompt tokens {q['tokens_in']} -> {q['tokens_kept']} ({q['keep_ratio']:.2f}), base prefilled "
            f"{q['base_prompt_tokens']} at {q['positions']} positions; speculator {q['speculator_seconds']:.2f} s, "
            f"base prefill {q['base_prefill_seconds']:.2f} s, TTFT {q['ttft_seconds']:.2f} s"
        )
    print(f"query time {seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=QUESTIONS, help="questions (default: two from the README)")
    parser.add_argument("--keep-rate", type=float, default=0.3, help="postprocessor keep rate (default 0.3)")
    parser.add_argument(
        "--llm-keep-rate",
        type=float,
        default=0.7,
        help="keep rate of the LLM's own pruning of the assembled prompt (1 disables it)",
    )
    parser.add_argument("--top-k", type=int, default=4, help="nodes retrieved per question")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--async", dest="use_async", action="store_true", help="use query_engine.aquery")
    args = parser.parse_args(argv)

    recorder = StatsRecorder()
    get_dispatcher().add_event_handler(recorder)
    query_engine = build_query_engine(args.keep_rate, args.llm_keep_rate, args.top_k, args.max_new_tokens)
    for question in args.questions:
        start = time.perf_counter()
        response = asyncio.run(query_engine.aquery(question)) if args.use_async else query_engine.query(question)
        show(question, response, recorder, time.perf_counter() - start)


if __name__ == "__main__":
    main()
