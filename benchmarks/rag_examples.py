"""Answer-sentence retention of the LangChain and LlamaIndex examples on the README questions.

For every question of ``examples/README.md`` the two example pipelines retrieve passages from
``examples/documents`` with the packaged MiniLM embeddings (LlamaIndex: ``SentenceSplitter`` nodes of 256
tokens, as ``examples/llamaindex_rag.py`` indexes them; LangChain: the whole-paragraph passages of about
1,000 characters of ``examples/langchain_rag.py``, their source and title shown to the speculator), top 4.
The SpecPrefill pruner of each integration (``SpecPrefillNodePostprocessor`` /
``SpecPrefillDocumentCompressor``) then prunes them at ``--keep-rate`` (default 0.2). A question counts as
kept when the passage holding its answer was retrieved and, after pruning, still holds the whole sentence
with the answer (compared word by word, so line breaks do not matter). Questions whose answer was not
retrieved are reported apart: pruning cannot keep them.

Run from the repository root (needs the ``langchain`` and ``llama-index`` extras and the packaged models)::

    python -m benchmarks.rag_examples                               # each integration's default config
    python -m benchmarks.rag_examples --preset paper                # the paper's algorithm
    python -m benchmarks.rag_examples --set '{"chunk_context": 8}'  # config overrides on the preset
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ROOT / "examples" / "documents"

QUESTIONS: list[tuple[str, str]] = [
    # (question of examples/README.md, a string of its answer sentence that occurs once in all the documents)
    ("In which year was the stone bridge in Lanternfield completed?", "1896"),
    ("Who founded Lanternfield, and when?", "1742"),
    ("How many residents did Lanternfield have at the 2021 census?", "4,310"),
    ("What is the capacity of the Brightwell K2 kettle?", "holds up to 1.7"),
    ("What does error code E4 mean on the Brightwell K2?", "E4"),
    ("How long is the Brightwell K2 warranty?", "three-year warranty"),
    ("How many days of paid annual leave does a full-time Quillmark employee get?", "27 days of paid"),
    ("What is Quillmark's daily meal allowance when travelling?", "45"),
    ("Who is the safety officer for the Quillmark test floor?", "Priya"),
    ("What budget did the Ferrow Valley library board approve for the roof repairs?", "18,400"),
    ("From when does the library open on Sunday afternoons?", "opening hours from 1 April"),
    ("How long is the saffron pear cake baked, and at what temperature?", "48 minutes"),
    ("How many cardamom buns does the recipe make?", "Makes twelve"),
    ("How deep did the ROV Petrel dive on 17 September?", "4,411"),
    ("What is the name of the newly found landslide scar?", "call it the Oriel Scar"),
    ("How many square kilometres of seabed did the Marisol map?", "1,260"),
]

Pruner = Callable[[str], list[tuple[str, str]]]
"""``question -> [(retrieved passage text, its pruned text)]``."""


@dataclass
class Outcome:
    """One question through one integration."""

    integration: str
    question: str
    retrieved: bool
    kept: bool
    kept_ratio: float


def sentence_with(text: str, needle: str) -> str:
    """The sentence of ``text`` holding ``needle`` (sentences end at ``.``/``!``/``?`` or a blank line)."""
    for piece in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        if needle in piece:
            return piece.strip()
    raise ValueError(f"{needle!r} is not in the text")


def judge(pairs: Sequence[tuple[str, str]], needle: str) -> tuple[bool, bool, float]:
    """``(retrieved, kept, kept characters / input characters)`` for one question's pruned passages."""
    total = sum(len(before) for before, _ in pairs) or 1
    ratio = sum(len(after) for _, after in pairs) / total
    for before, after in pairs:
        if needle in before:
            sentence = " ".join(sentence_with(before, needle).split())
            return True, sentence in " ".join(after.split()), ratio
    return False, False, ratio


def llama_index_pruner(speculator: Any, config: Any, keep_rate: float) -> Pruner:
    """Retrieve 4 nodes of 256 tokens and prune them with ``SpecPrefillNodePostprocessor``."""
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index.embeddings.specprefill import PackagedEmbedding
    from llama_index.postprocessor.specprefill import SpecPrefillNodePostprocessor

    Settings.llm = MockLLM()  # never fall back to a remote default

    def metadata(path: str) -> dict[str, Any]:
        file = Path(path)
        return {"file_name": file.name, "title": file.read_text(encoding="utf-8").splitlines()[0].strip()}

    documents = SimpleDirectoryReader(str(DOCUMENTS), file_metadata=metadata).load_data()
    index = VectorStoreIndex.from_documents(
        documents, embed_model=PackagedEmbedding(), transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0)]
    )
    retriever = index.as_retriever(similarity_top_k=4)
    extra = {} if config is None else {"config": config}
    post = SpecPrefillNodePostprocessor(speculator, keep_rate=keep_rate, drop_empty_nodes=False, **extra)

    def prune(question: str) -> list[tuple[str, str]]:
        nodes = retriever.retrieve(question)
        before = [n.node.get_content() for n in nodes]
        out = post.postprocess_nodes(nodes, query_str=question)
        return list(zip(before, [n.node.get_content() for n in out], strict=True))

    return prune


def langchain_pruner(speculator: Any, config: Any, keep_rate: float) -> Pruner:
    """Retrieve 4 paragraph passages and prune them with ``SpecPrefillDocumentCompressor`` (as the example does)."""
    import importlib.util

    from langchain_core.vectorstores import InMemoryVectorStore

    from langchain_specprefill import PackagedEmbeddings, SpecPrefillDocumentCompressor

    spec = importlib.util.spec_from_file_location("langchain_rag_example", ROOT / "examples" / "langchain_rag.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    store = InMemoryVectorStore.from_documents(example.load_passages(), PackagedEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": 4})
    compressor = SpecPrefillDocumentCompressor(
        speculator=speculator,
        keep_rate=keep_rate,
        min_tokens_per_document=16,
        config=config,
        metadata_keys=example.METADATA_KEYS,
    )

    def prune(question: str) -> list[tuple[str, str]]:
        docs = retriever.invoke(question)
        out = {d.id: d.page_content for d in compressor.compress_documents(docs, question)}
        return [(d.page_content, out.get(d.id, "")) for d in docs]

    return prune


def build_config(preset: str, overrides: dict[str, Any], lookahead: int | None) -> Any:
    """The config for an integration: ``preset`` (``paper``/``default``) plus overrides (None: its own default)."""
    from specprefill import SpecPrefillConfig

    if preset == "integration" and not overrides:
        return None
    fields = dict(overrides)
    if lookahead is not None:
        fields.setdefault("lookahead", lookahead)
    if preset == "paper":
        return SpecPrefillConfig.paper(**fields)
    return SpecPrefillConfig(**fields)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both integrations; return the per-question outcomes and the counts."""
    from specprefill import load_speculator
    from specprefill.prompt.passages import PASSAGE_LOOKAHEAD

    overrides = json.loads(args.set) if args.set else {}
    speculator = load_speculator(args.speculator)
    pruners = {
        # Both pruners' own defaults look ahead PASSAGE_LOOKAHEAD tokens; keep that on every preset.
        "llama_index": llama_index_pruner(
            speculator, build_config(args.preset, overrides, PASSAGE_LOOKAHEAD), args.keep_rate
        ),
        "langchain": langchain_pruner(
            speculator, build_config(args.preset, overrides, PASSAGE_LOOKAHEAD), args.keep_rate
        ),
    }
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    for name in args.integrations:
        for question, needle in QUESTIONS:
            retrieved, kept, ratio = judge(pruners[name](question), needle)
            outcomes.append(Outcome(name, question, retrieved, kept, ratio))
            mark = "kept" if kept else ("DROPPED" if retrieved else "not retrieved")
            print(f"{name:12s} {mark:13s} {ratio:5.0%}  {question}", file=sys.stderr, flush=True)
    counts = {
        name: {
            "kept": sum(o.kept for o in outcomes if o.integration == name),
            "retrieved": sum(o.retrieved for o in outcomes if o.integration == name),
            "questions": len(QUESTIONS),
        }
        for name in args.integrations
    }
    return {
        "preset": args.preset,
        "overrides": overrides,
        "keep_rate": args.keep_rate,
        "seconds": time.perf_counter() - start,
        "counts": counts,
        "outcomes": [asdict(o) for o in outcomes],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep-rate", type=float, default=0.2)
    parser.add_argument(
        "--preset",
        choices=["integration", "default", "paper"],
        default="integration",
        help="integration: each pruner's own default config; default: SpecPrefillConfig(); paper: "
        "SpecPrefillConfig.paper() (both with the postprocessor's look-ahead)",
    )
    parser.add_argument("--set", default="", help="JSON object of config overrides, e.g. '{\"chunk_context\": 8}'")
    parser.add_argument("--integrations", nargs="+", default=["llama_index", "langchain"])
    parser.add_argument("--speculator", default="smollm2-135m")
    parser.add_argument("--out", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    setting = f"preset {args.preset} {result['overrides'] or ''}"
    for name, c in result["counts"].items():
        print(f"{name}: answer sentence kept for {c['kept']} of {c['questions']} questions "
              f"({c['retrieved']} retrieved) at keep {args.keep_rate}, {setting}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
