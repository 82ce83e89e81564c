"""LlamaIndex LLM for Speculative Prefill: long prompts are pruned by a small speculator before the base prefill.

Example (server mode: ``specprefill serve`` prunes, nothing is loaded here):
    >>> from llama_index.llms.specprefill import SpecPrefillLLM
    >>> llm = SpecPrefillLLM(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct", keep_rate=0.3)
    >>> llm.complete(long_prompt).additional_kwargs["specprefill"]["keep_ratio"]

"""

from llama_index.llms.specprefill.base import STATS_KEY, SpecPrefillLLM

__all__ = ["STATS_KEY", "SpecPrefillLLM"]
