"""Hugging Face transformers base backend: prefill kept tokens at their original positions, then decode.

The token form feeds only the kept token ids with ``position_ids = kept indices`` and an explicit attention
mask (without a mask, transformers reads non-contiguous positions as packed sequences and would cut the
attention at every gap). Decoding then continues at positions ``N, N+1, ...`` where ``N`` is the original
prompt length; the KV cache holds only the kept tokens, so positions are passed on every step instead of
following the cache length.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from specprefill._deps import require
from specprefill.backends import base
from specprefill.backends.base import BaseRequest, GenerationParams, StreamChunk, translate_errors, vocab_matches
from specprefill.backends.decoding import IncrementalDetokenizer, StopChecker
from specprefill.backends.requests import tokenize_request_text, validate_token_request
from specprefill.errors import BackendError, PromptTooLongError

if TYPE_CHECKING:
    import torch

__all__ = ["IncrementalDetokenizer", "StopChecker", "TransformersBackend"]
"""The decoding helpers are re-exported from :mod:`specprefill.backends.decoding`."""


@dataclass
class _Prepared:
    ids: list[int]
    positions: list[int]
    next_position: int
    mode: base.PositionMode


class TransformersBackend(base.BaseBackend):
    """A transformers causal LM as the base model, with exact original positions for pruned prompts.

    Build it from an already loaded model and tokenizer (the model may be shared with a speculator), or
    with :meth:`from_pretrained`. Requests in token form are prefilled at their original positions; text
    and message requests are tokenised with the base's own tokenizer (and chat template) and get
    contiguous positions. Calls are thread-safe: every forward pass holds the backend's lock.

    Args:
        model: A transformers causal LM in eval mode.
        tokenizer: Its tokenizer.
        name: Label for outputs and statistics (default: the model's ``name_or_path``).

    """

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, name: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        from specprefill.speculator.hf import eos_token_ids

        self.eos_ids = eos_token_ids(model, tokenizer)
        self._lock = threading.Lock()
        self._vocab_cache: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: Any = None,
        name: str | None = None,
    ) -> TransformersBackend:
        """Load a base model with :func:`specprefill.speculator.loading.load_causal_lm` (sdpa attention).

        Args:
            name_or_path: Embedded name (``"smollm2-135m"``), model folder, ``.gguf`` file, or hub id.
            device: torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
            dtype: torch dtype or its name (bfloat16 by default).
            name: Label for outputs (default: ``name_or_path``).

        Returns:
            The backend.

        """
        from specprefill.speculator.loading import load_causal_lm

        model, tokenizer = load_causal_lm(name_or_path, device=device, dtype=dtype, attn_implementation="sdpa")
        return cls(model, tokenizer, name=name or str(name_or_path))

    # --- properties ---------------------------------------------------------------------------------
    @property
    def max_position_embeddings(self) -> int | None:
        """Longest sequence (prompt positions plus new tokens) the model supports, if the config says."""
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        value = getattr(text_cfg, "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every valid token id is below this."""
        return int(self.model.get_input_embeddings().num_embeddings)

    def _compare_tokenizer(self, speculator: object) -> bool:
        """Same vocabulary as the speculator's ``tokenizer`` (exact ``get_vocab()`` equality)."""
        return vocab_matches(getattr(speculator, "tokenizer", None), self.tokenizer, self._vocab_cache)

    # --- generation ---------------------------------------------------------------------------------
    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Prefill the request and yield text as it is decoded; the last chunk carries the output.

        Args:
            request: Token form or text/messages form.
            params: Decoding settings.

        Yields:
            Text deltas that never split a UTF-8 character and never show part of a stop string; the last
            chunk has ``output`` set.

        Raises:
            PromptError: The request is empty or has token ids outside the vocabulary.
            PromptTooLongError: Original length plus ``max_new_tokens`` exceeds the model's positions.
            BackendError: The model failed.

        """
        return translate_errors(self._decode(request, params), self._translate)

    def _translate(self, exc: Exception) -> BackendError:
        return BackendError(f"base model {self.model_name!r} failed during generation: {exc}")

    def _decode(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        torch = require("torch")
        start = time.perf_counter()
        prepared = self._prepare(request)
        self._check_length(prepared, params)
        device = self.model.device
        generator = self._generator(torch, params, device)
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopChecker(params.stop)
        emitted = 0
        generated: list[int] = []
        finish = "length"
        prefill_seconds = 0.0
        kept = len(prepared.ids)
        with torch.inference_mode():
            logits, cache = self._forward(
                torch,
                prepared.ids,
                prepared.positions,
                attention_length=kept,
                cache=None,
                device=device,
            )
            final_text: str | None = None
            for step in range(params.max_new_tokens):
                token = self._pick(torch, logits, params, generator)
                if step == 0:
                    prefill_seconds = time.perf_counter() - start
                generated.append(token)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                detok.add(token)
                cut = stops.find(detok.text)
                if cut is not None:
                    final_text = detok.text[:cut]
                    finish = "stop"
                    break
                safe = stops.safe_length(detok.text)
                if safe > emitted:
                    yield StreamChunk(detok.text[emitted:safe])
                    emitted = safe
                if step + 1 == params.max_new_tokens:
                    break
                logits, cache = self._forward(
                    torch,
                    [token],
                    [prepared.next_position + step],
                    attention_length=kept + step + 1,
                    cache=cache,
                    device=device,
                )
        if final_text is None:
            detok.flush()
            cut = stops.find(detok.text)
            if cut is not None:
                finish = "stop"
            final_text = detok.text if cut is None else detok.text[:cut]
        tail = final_text[emitted:]
        output = base.BaseOutput(
            text=final_text,
            token_ids=generated,
            finish_reason=finish,
            prompt_tokens=kept,
            completion_tokens=len(generated),
            prefill_seconds=prefill_seconds,
            total_seconds=time.perf_counter() - start,
            positions=prepared.mode,
            model=self.model_name,
            started_at=start,
        )
        yield StreamChunk(tail, output=output)

    # --- helpers ------------------------------------------------------------------------------------
    def _prepare(self, request: BaseRequest) -> _Prepared:
        if request.token_ids is not None:
            checked = validate_token_request(request, self.vocab_size)
            return _Prepared(checked.ids, checked.positions, checked.original_length, checked.mode)
        ids = tokenize_request_text(self.tokenizer, request, self.model_name)
        return _Prepared(ids, list(range(len(ids))), len(ids), "compacted")

    def _check_length(self, prepared: _Prepared, params: GenerationParams) -> None:
        limit = self.max_position_embeddings
        if limit is None:
            return
        needed = prepared.next_position + params.max_new_tokens
        if needed > limit:
            raise PromptTooLongError(
                f"the prompt spans {prepared.next_position} positions and max_new_tokens={params.max_new_tokens}; "
                f"together {needed} exceed the base model's {limit} positions ({self.model_name}). Shorten the "
                "prompt or lower max_new_tokens (pruning does not help here: kept tokens keep their positions)"
            )

    def _generator(self, torch: Any, params: GenerationParams, device: Any) -> Any:
        if params.temperature == 0:
            return None
        generator = torch.Generator(device=device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(params.seed))
        return generator

    def _forward(
        self,
        torch: Any,
        ids: list[int],
        positions: list[int],
        *,
        attention_length: int,
        cache: Any,
        device: Any,
    ) -> tuple[torch.Tensor, Any]:
        with self._lock:
            out = self.model(
                input_ids=torch.tensor([ids], device=device),
                position_ids=torch.tensor([positions], device=device),
                attention_mask=torch.ones((1, attention_length), dtype=torch.long, device=device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[0, -1].float(), out.past_key_values

    @staticmethod
    def _pick(torch: Any, logits: torch.Tensor, params: GenerationParams, generator: Any) -> int:
        if params.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
            drop = (cumulative - sorted_probs) >= params.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=generator))
