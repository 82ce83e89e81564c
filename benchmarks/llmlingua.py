"""LongLLMLingua (``llmlingua`` package) as a method of the quality benchmark, aligned back to speculator tokens.

LongLLMLingua is text-in/text-out; its compressed text, re-tokenised with the speculator's tokenizer, is
(nearly) a subsequence of the original ids, and :func:`align_subsequence` recovers the kept positions.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.methods import Method, PreparedSample, Selection, context_budget
from specprefill.errors import BackendUnavailableError

__all__ = ["LongLLMLinguaMethod", "align_subsequence"]


def align_subsequence(original: Sequence[int], compressed: Sequence[int]) -> list[int]:
    """Positions of ``original`` that a compressed token sequence kept (longest matching blocks, in order).

    Text-out compressors return text; re-tokenised with the same tokenizer it is (nearly) a subsequence of
    the original ids. Blocks of matching ids found by :class:`difflib.SequenceMatcher` mark the kept positions.

    Args:
        original: Token ids of the original text.
        compressed: Token ids of the compressed text (same tokenizer).

    Returns:
        Sorted original positions that were kept.

    """
    matcher = difflib.SequenceMatcher(None, list(original), list(compressed), autojunk=False)
    kept: list[int] = []
    for block in matcher.get_matching_blocks():
        kept.extend(range(block.a, block.a + block.size))
    return kept


class _TokenizerShim:
    """Stands in for tiktoken inside llmlingua so budgets count speculator tokens (no BPE download)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, **_: Any) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))


class _LegacyCacheModel:
    """Lets llmlingua (written for tuple KV caches) drive a transformers 5 model (``DynamicCache``)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> Any:
        from transformers import DynamicCache

        cache = None
        if past_key_values is not None:
            cache = DynamicCache()
            for layer, (k, v) in enumerate(past_key_values):
                cache.update(k, v, layer)
        out = self._model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        legacy = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return _LegacyOutput(out.logits, legacy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclass
class _LegacyOutput:
    logits: Any
    past_key_values: list[tuple[Any, Any]]


class LongLLMLinguaMethod(Method):
    """LongLLMLingua (question-aware coarse-to-fine compression) from the ``llmlingua`` package.

    Runs offline with a local causal LM folder (we use the speculator's own SmolLM2 weights). Two shims make
    it run here, neither changes its algorithm: its tiktoken ``gpt-3.5-turbo`` counter (a BPE download) is
    replaced by the speculator tokenizer, so ``target_token`` means speculator tokens; and its tuple KV cache
    is converted to transformers 5's ``DynamicCache``. Settings follow the LongLLMLingua recipe in
    llmlingua's DOCUMENT.md (``rank_method="longllmlingua"``, ``condition_in_question="after_condition"``,
    ``condition_compare=True``, ``dynamic_context_compression_ratio=0.3``, ``context_budget="+100"``) except
    ``reorder_context="original"`` (our alignment needs the original order) and no sentence-level filter
    (it needs NLTK's punkt data, a download).

    Args:
        model_dir: Local transformers folder of the small LM.
        tokenizer: The speculator's tokenizer (for budgets and alignment; must match ``model_dir``'s).

    """

    name = "longllmlingua"

    def __init__(self, model_dir: str, tokenizer: Any) -> None:
        try:
            import llmlingua.prompt_compressor as pc
        except ImportError as exc:
            raise BackendUnavailableError(
                'LongLLMLingua needs the llmlingua package: pip install "specprefill[bench]"'
            ) from exc
        self.tokenizer = tokenizer
        shim = _TokenizerShim(tokenizer)
        original = pc.tiktoken.encoding_for_model
        pc.tiktoken.encoding_for_model = lambda _name: shim
        try:
            compressor = pc.PromptCompressor(
                model_name=model_dir, device_map="cpu", model_config={"trust_remote_code": False}
            )
        finally:
            pc.tiktoken.encoding_for_model = original
        compressor.model = _LegacyCacheModel(compressor.model)
        self.compressor = compressor

    def select(self, prepared: PreparedSample, keep_rates: Sequence[float]) -> list[Selection]:
        """Compress the context at each keep rate and map the result back to speculator tokens."""
        context_idx = prepared.context_tokens
        context_ids = [prepared.input_ids[i] for i in context_idx]
        documents = [d for d in prepared.sample.documents if d.strip()]
        out = []
        for rate in keep_rates:
            target = context_budget(rate, len(context_ids))
            start = time.perf_counter()
            note = ""
            try:
                result = self.compressor.compress_prompt(
                    documents,
                    question=prepared.sample.question,
                    target_token=target,
                    rank_method="longllmlingua",
                    condition_in_question="after_condition",
                    condition_compare=True,
                    reorder_context="original",
                    dynamic_context_compression_ratio=0.3,
                    context_budget="+100",
                    concate_question=False,
                    use_sentence_level_filter=False,
                )
                compressed = str(result["compressed_prompt"])
            except Exception as exc:
                compressed, note = "", f"llmlingua failed: {type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - start
            compressed_ids = list(self.tokenizer(compressed, add_special_tokens=False)["input_ids"])
            matched = align_subsequence(context_ids, compressed_ids)
            kept_mask = prepared.protected.copy()
            kept_mask[[context_idx[j] for j in matched]] = True
            kept = np.flatnonzero(kept_mask).astype(np.int64)
            out.append(Selection(self.name, rate, kept, seconds, note))
        return out
