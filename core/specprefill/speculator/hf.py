"""Hugging Face transformers speculator: sdpa prefill with captured post-RoPE queries and keys.

Scoring never builds attention matrices over the prompt: a registered attention function records, for
every layer, the queries of the newest positions (during prefill the last ``max(1, observation_window)``
prompt tokens, then each fed-back look-ahead token) and the newest key tensor. After look-ahead, each
layer's queries are scored against its prompt keys (observation-window queries causally masked), softmaxed
in float32, pooled, reduced over heads and folded into a running ``[queries, N]`` max over layers
(:mod:`specprefill.speculator.capture`), so memory stays O(heads x queries x N) with queries = observation window +
look-ahead. With ``config.retrieval_heads`` and a head profile (:mod:`specprefill.speculator.heads`), only the
profile's best heads are scored, and only their layers are recorded. :meth:`HFSpeculator.score_many` scores
several prompts in shared, left-padded forward passes (:mod:`specprefill.speculator.batching`; on CUDA by default).

Sliding-window layers (e.g. 5 of 6 Gemma-3 layers) whose window is shorter than the scored sequence are
**excluded** from the max: their queries cannot see most of the prompt, and their window would force the
last ``window`` tokens to the top of every ranking. Layers whose window covers the whole sequence count
like global layers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill._deps import require
from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError, SpeculatorError
from specprefill.prompt.messages import plain_chat
from specprefill.result import Message
from specprefill.spans import Span
from specprefill.speculator.base import ImportanceResult, Speculator
from specprefill.speculator.batching import capture_batch, length_buckets
from specprefill.speculator.capture import Recorder, head_scores, prefill, prompt_importance
from specprefill.speculator.checkpoints import checkpoint
from specprefill.speculator.decode_attention import plain_cpu_decode, single_query_attention
from specprefill.speculator.heads import HeadProfile, find_profile

__all__ = ["CAPTURE_ATTENTION", "HFSpeculator", "eos_token_ids", "register_capture_attention"]

CAPTURE_ATTENTION = "specprefill_sdpa"
"""Name under which the capturing attention function is registered with transformers."""

_RECORDER: ContextVar[Recorder | None] = ContextVar("specprefill_recorder", default=None)
_REGISTER_LOCK = threading.Lock()
_SINK_TOKENS = 4
"""Leading prompt tokens repeated at the start of every later scoring window (attention-sink anchor)."""
_OVERLAP_TOKENS = 64
"""Tokens before a later window's segment that it also reads (and whose scores it discards)."""
_registered = False


def register_capture_attention() -> None:
    """Register the capturing attention function with transformers (idempotent)."""
    global _registered
    with _REGISTER_LOCK:
        if _registered:
            return
        transformers = require("transformers")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        def capture(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
            checkpoint("layer")  # a cancelled job stops within one layer
            recorder = _RECORDER.get()
            if recorder is not None:
                recorder.record(module, query, key, kwargs)
            if plain_cpu_decode(query, kwargs):
                return single_query_attention(module, query, key, value, attention_mask, kwargs.get("scaling"))
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

        transformers.AttentionInterface.register(CAPTURE_ATTENTION, capture)
        AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
        _registered = True


@contextlib.contextmanager
def _recording(recorder: Recorder) -> Iterator[Recorder]:
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The model's own end-of-sequence ids (generation config, model config and tokenizer together)."""
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        found.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return frozenset(found)


class HFSpeculator(Speculator):
    """A transformers causal LM used as speculator (Llama/SmolLM2, Qwen2, Gemma-3, ... any RoPE decoder).

    Build it with :func:`specprefill.load_speculator`, or wrap an already loaded model and fast tokenizer.
    The model is switched to the capturing sdpa attention in place.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, name: str | None = None, batch_forward: bool | None = None
    ) -> None:
        register_capture_attention()
        if not getattr(tokenizer, "is_fast", False):
            raise SpeculatorError(
                "the speculator needs a fast (Rust) tokenizer for character offsets; "
                "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        model.set_attn_implementation(CAPTURE_ATTENTION)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self._lock = threading.Lock()
        self.head_profile: HeadProfile | None = self._find_profile()
        """Retrieval-head profile used when ``config.retrieval_heads > 0`` (see :mod:`specprefill.speculator.heads`)."""
        self.batch_forward: bool = model.device.type == "cuda" if batch_forward is None else batch_forward
        """:meth:`score_many` runs prompts in one padded forward pass (default: on CUDA only; on CPU the
        padded batch measured slower than one prompt at a time). Models with sliding-window layers never do."""
        self.batch_tokens: int = 32768
        """Most positions (padding included) in one batched forward pass; longer batches are split."""
        self._sliding = any(getattr(m, "sliding_window", None) for m in model.modules())
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))

    def _find_profile(self) -> HeadProfile | None:
        try:
            layers, heads = self.attention_shape
        except (AttributeError, TypeError, ValueError):  # a config without the usual names: every head
            return None
        profile = find_profile(self.name, layers, heads)
        if profile is None:
            logging.getLogger("specprefill").info(
                "no retrieval-head profile for speculator %r: every head scores "
                "(`specprefill heads --speculator NAME` calibrates one)",
                self.name,
            )
        return profile

    @property
    def attention_shape(self) -> tuple[int, int]:
        """``(layers, query heads per layer)`` of the model."""
        config = getattr(self.model.config, "text_config", None) or self.model.config
        return int(config.num_hidden_layers), int(config.num_attention_heads)

    def head_selection(self, config: SpecPrefillConfig) -> dict[int, tuple[int, ...]] | None:
        """``{layer: heads}`` scored under ``config`` (None: every head; no profile or ``retrieval_heads=0``)."""
        if config.retrieval_heads == 0 or self.head_profile is None:
            return None
        return self.head_profile.top(config.retrieval_heads) or None

    # --- tokenisation -----------------------------------------------------------------------------
    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        """Tokenise text without special tokens; ids and character offsets."""
        return self._encode(text, add_special_tokens=False)

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        """Tokenise a plain prompt as the model expects (BOS added where the tokenizer adds it)."""
        return self._encode(text, add_special_tokens=True)

    def _encode(self, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[Span]]:
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids back to text (special tokens kept)."""
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def render_chat(self, messages: list[Message]) -> str:
        """Render messages with the tokenizer's chat template (a plain ``role: content`` layout if it has none)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return plain_chat(messages)
        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as exc:
            raise PromptError(f"the chat template of {self.name!r} rejected these messages: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every valid token id is below this."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def context_window(self) -> int:
        """Longest sequence the speculator scores in one pass."""
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        limit = int(getattr(text_cfg, "max_position_embeddings", 0) or 0) or 8192
        layer_types = getattr(text_cfg, "layer_types", None)
        window = getattr(text_cfg, "sliding_window", None)
        if layer_types and window and "full_attention" not in layer_types:
            limit = min(limit, int(window))
        return limit

    # --- scoring ----------------------------------------------------------------------------------
    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        """Importance of every prompt token, in windows when the prompt exceeds the context window."""
        ids = self._check_ids(input_ids)
        limit = config.max_speculator_tokens or self.context_window
        budget = limit - (config.lookahead - 1)
        if budget < 2:
            raise SpeculatorError(f"max_speculator_tokens={limit} leaves no room for lookahead={config.lookahead}")
        if len(ids) <= budget:
            return self._score_once(ids, config)
        return self._score_windows(ids, config, budget)

    def _score_windows(self, ids: list[int], config: SpecPrefillConfig, budget: int) -> ImportanceResult:
        """Score a prompt longer than the context in windows that all end with the prompt's tail.

        Every window after the first starts with the prompt's first ``_SINK_TOKENS`` tokens and the
        ``_OVERLAP_TOKENS`` tokens just before its segment: a window that began mid-prompt would make its
        first tokens attention sinks and inflate their scores. Those lead-in tokens take part in the
        softmax, but their scores in that window are discarded.
        """
        from tqdm.auto import tqdm

        n = len(ids)
        tail = min(config.window_query_tokens, budget // 4)
        prefix = n - tail
        sink = min(_SINK_TOKENS, prefix)
        overlap = min(_OVERLAP_TOKENS, (budget - tail - sink) // 4)
        n_windows = max(1, math.ceil((prefix - sink) / (budget - tail - sink - overlap)))
        seg = math.ceil(prefix / n_windows)
        importance = np.zeros(n, dtype=np.float32)
        tail_scores = []
        queries = 0
        lookahead: list[int] = []
        bar = tqdm(total=n_windows, desc="speculator windows", unit="window", disable=None, leave=False)
        for start in range(0, prefix, seg):
            checkpoint("window")  # more urgent work may run here; a cancelled job stops
            end = min(start + seg, prefix)
            head = ids[:sink] + ids[max(sink, start - overlap) : start] if start > 0 else []
            part = self._score_once(head + ids[start:end] + ids[prefix:], config)
            body = part.importance[len(head) :]
            importance[start:end] = body[: end - start]
            tail_scores.append(body[end - start :])
            queries = max(queries, part.queries)
            lookahead = lookahead or part.lookahead_token_ids
            bar.update(1)
        bar.close()
        importance[prefix:] = np.mean(tail_scores, axis=0)
        return ImportanceResult(importance, lookahead, queries, n_windows)

    def score_many(self, batch: Sequence[tuple[Sequence[int], SpecPrefillConfig]]) -> list[ImportanceResult]:
        """:meth:`score` for several prompts; with :attr:`batch_forward`, compatible ones share one forward pass.

        Prompts that fit the context window and share ``lookahead`` and the scored heads are left-padded into
        one batch (:mod:`specprefill.speculator.batching`); each gets the importance an unbatched run gives, up to float
        rounding. Longer prompts (scored in windows) and lone ones are scored alone.
        """
        if not self.batch_forward or self._sliding or len(batch) < 2:
            return super().score_many(batch)
        results: list[ImportanceResult | None] = [None] * len(batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (ids, config) in enumerate(batch):
            fits = len(ids) <= (config.max_speculator_tokens or self.context_window) - (config.lookahead - 1)
            heads = self.head_selection(config)
            key = (config.lookahead, tuple(sorted(heads.items())) if heads else None)
            groups.setdefault(key if fits else ("alone", i), []).append(i)
        for group in groups.values():
            for members in length_buckets(group, [len(batch[i][0]) for i in group], max_tokens=self.batch_tokens):
                if len(members) == 1:
                    results[members[0]] = self.score(*batch[members[0]])
                    continue
                rows = [self._check_ids(batch[i][0]) for i in members]
                for i, result in zip(members, self._score_together(rows, [batch[i][1] for i in members]), strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    def _score_together(self, rows: list[list[int]], configs: list[SpecPrefillConfig]) -> list[ImportanceResult]:
        heads = self.head_selection(configs[0])
        windows = [min(c.observation_window, len(ids)) for ids, c in zip(rows, configs, strict=True)]
        with self._lock:
            captured = capture_batch(
                self.model,
                rows,
                lookahead=configs[0].lookahead,
                query_tail=max(max(w, 1) for w in windows),
                layers=heads,
                eos_ids=self.eos_ids,
                pad_id=self._pad_id,
                recording=_recording,
            )
            out = []
            for i, (ids, config, window) in enumerate(zip(rows, configs, windows, strict=True)):
                recorder = captured.row(i, len(ids), window)
                importance = prompt_importance(recorder, len(ids), config, window_queries=window, heads=heads)
                decoded = captured.decoded[i]
                out.append(ImportanceResult(importance, decoded, queries=max(window, 1) + len(decoded), windows=1))
        return out

    def _score_once(self, ids: list[int], config: SpecPrefillConfig) -> ImportanceResult:
        window = min(config.observation_window, len(ids))
        heads = self.head_selection(config)
        with self._lock:
            recorder, decoded = self._capture(ids, config, window, heads)
            importance = prompt_importance(recorder, len(ids), config, window_queries=window, heads=heads)
        return ImportanceResult(importance, decoded, queries=max(window, 1) + len(decoded), windows=1)

    def head_scores(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> npt.NDArray[np.float32]:
        """``[layers, heads, N]``: every head's pooled attention on each prompt token, max over the queries.

        What :func:`specprefill.speculator.calibrate.calibrate_heads` ranks; the prompt must fit the context window.
        """
        ids = self._check_ids(input_ids)
        window = min(config.observation_window, len(ids))
        with self._lock:
            recorder, _ = self._capture(ids, config, window, None)
            return head_scores(recorder, len(ids), config, self.attention_shape[0], window_queries=window)

    def _capture(
        self, ids: list[int], config: SpecPrefillConfig, window: int, heads: Mapping[int, Sequence[int]] | None
    ) -> tuple[Recorder, list[int]]:
        """Prefill with capture, then the greedy look-ahead steps; the recorder and the decoded ids."""
        import torch

        n = len(ids)
        recorder = Recorder(
            total_length=n + config.lookahead - 1,
            query_tail=max(window, 1),
            layers=heads,
            stop_early=config.lookahead == 1,
        )
        device = self.model.device
        decoded: list[int] = []
        with torch.inference_mode(), _recording(recorder):
            out = prefill(self.model, input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
            if out is None:  # no look-ahead: the layers after the deepest scored one never ran
                return recorder, decoded
            cache = out.past_key_values
            recorder.query_tail = 1
            for _ in range(config.lookahead - 1):
                checkpoint("step")
                nxt = int(out.logits[0, -1].argmax())
                if nxt in self.eos_ids:
                    break
                decoded.append(nxt)
                out = self.model(
                    input_ids=torch.tensor([[nxt]], device=device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        return recorder, decoded

    def plain_prefill(self, input_ids: Sequence[int]) -> None:
        """One ordinary prefill forward pass without capture or look-ahead (for overhead benchmarks)."""
        import torch

        with self._lock, torch.inference_mode():
            self.model(
                input_ids=torch.tensor([list(input_ids)], device=self.model.device), use_cache=True, logits_to_keep=1
            )
