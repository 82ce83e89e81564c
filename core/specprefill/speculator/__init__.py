"""The speculator: the model that scores prompt tokens.

- :mod:`.base`: :class:`Speculator`, the interface, with pruning, protection and text mapping shared;
- :mod:`.hf`: the Hugging Face transformers speculator (sdpa prefill with captured queries and keys), with
  :mod:`.capture` (captured queries and keys to importance), :mod:`.batching` (several prompts in one
  forward pass) and :mod:`.decode_attention` (the CPU look-ahead attention);
- :mod:`.heads`: the retrieval-head profile store; :mod:`.calibrate` measures a profile;
- :mod:`.embedded`: the packaged models and the cache; :mod:`.loading` loads models by name;
  :mod:`.precision` picks the dtype;
- :mod:`.remote`: a server's speculator over HTTP, no model in this process.
"""

from __future__ import annotations

from specprefill.speculator.base import ImportanceResult, Speculator

__all__ = ["ImportanceResult", "Speculator"]
