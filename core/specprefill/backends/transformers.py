"""Hugging Face transformers base backend: prefill kept tokens at their original positions, then decode.

The token form feeds only the kept token ids with ``position_ids = kept indices`` and an explicit attention
mask (without a mask, transformers reads non-contiguous positions as packed sequences and would cut the
attention at every gap). Decoding then continues at positions ``N, N+1, ...`` where ``N`` is the original
prompt length; the KV cache holds only the kept tokens, so positions are passed on every step instead of
following the cache length.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from specprefill._deps import require
from specprefill.backends.base import (
    BaseBackend,
    BaseOutput,
    BaseRequest,
    GenerationParams,
    PositionMode,
    StreamChunk,
)
from specprefill.errors import BackendError, EmptyPromptError, PromptError, PromptTooLongError
from specprefill.prompts import plain_chat, validate_messages

if TYPE_CHECKING:
    import torch

__all__ = ["IncrementalDetokenizer", "StopChecker", "TransformersBackend"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    Byte-level tokenizers may need several tokens for one character; while the decoded tail ends with
    U+FFFD the text is held back. Only a short window of ids is re-decoded per step (the ids since the last
    clean cut, plus the previous piece for context), so the cost per token stays constant.

    Args:
        tokenizer: A transformers tokenizer (anything with ``decode(ids, skip_special_tokens=...)``).
        skip_special_tokens: Leave special tokens out of the text.

    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""
        """All text released so far."""

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=self._skip))

    def add(self, token_id: int) -> str:
        """Append one token and return the newly complete text (possibly empty)."""
        self._ids.append(int(token_id))
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Release whatever is held back (at the end of generation), replacement characters included."""
        if self._read_offset == len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        delta = full[len(prefix) :] if full.startswith(prefix) else full
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta


class StopChecker:
    """Finds stop strings in streamed text and says how much text is safe to emit.

    Text that could be the beginning of a stop string is held back until it is clear it is not.

    Args:
        stops: The stop strings (empty strings are ignored).

    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._searched = 0

    def find(self, text: str) -> int | None:
        """Index where the earliest stop string starts in ``text``, or None (searches only new text)."""
        if not self.stops:
            return None
        start = max(0, self._searched - self._longest + 1)
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        self._searched = len(text)
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """Length of the prefix of ``text`` that cannot become part of a stop string."""
        for keep in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-keep:]
            if any(s.startswith(tail) for s in self.stops):
                return len(text) - keep
        return len(text)


@dataclass
class _Prepared:
    ids: list[int]
    positions: list[int]
    next_position: int
    mode: PositionMode


class TransformersBackend(BaseBackend):
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

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, name: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        from specprefill.hf import eos_token_ids

        self.eos_ids = eos_token_ids(model, tokenizer)
        self._lock = threading.Lock()
        self._same: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._vocab: dict[str, int] | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: Any = None,
        name: str | None = None,
    ) -> TransformersBackend:
        """Load a base model with :func:`specprefill.models.load_causal_lm` (sdpa attention).

        Args:
            name_or_path: Embedded name (``"smollm2-135m"``), model folder, ``.gguf`` file, or hub id.
            device: torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
            dtype: torch dtype or its name (bfloat16 by default).
            name: Label for outputs (default: ``name_or_path``).

        Returns:
            The backend.

        """
        from specprefill.models import load_causal_lm

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

    def same_tokenizer(self, speculator: object) -> bool:
        """Whether the speculator's tokenizer has exactly this base's vocabulary (cached per speculator).

        Args:
            speculator: A speculator with a ``tokenizer`` attribute (e.g. :class:`~specprefill.hf.HFSpeculator`).

        Returns:
            True when both ``get_vocab()`` mappings are equal, so kept token ids can be fed directly.

        """
        try:
            cached = self._same.get(speculator)
        except TypeError:  # not weak-referenceable
            cached = None
        if cached is not None:
            return cached
        other = getattr(speculator, "tokenizer", None)
        if other is None or not hasattr(other, "get_vocab"):
            answer = False
        elif other is self.tokenizer:
            answer = True
        else:
            if self._vocab is None:
                self._vocab = dict(self.tokenizer.get_vocab())
            answer = dict(other.get_vocab()) == self._vocab
        with contextlib.suppress(TypeError):
            self._same[speculator] = answer
        return answer

    # --- generation ---------------------------------------------------------------------------------
    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        """Prefill the request and decode to completion.

        Args:
            request: Token form (kept ids at original positions) or text/messages form.
            params: Decoding settings; greedy when ``temperature == 0``.

        Returns:
            The finished output with timings (``prefill_seconds`` is the time to the first token).

        Raises:
            PromptError: The request is empty or has token ids outside the vocabulary.
            PromptTooLongError: Original length plus ``max_new_tokens`` exceeds the model's positions.
            BackendError: The model failed.

        """
        output: BaseOutput | None = None
        for chunk in self.stream(request, params):
            if chunk.output is not None:
                output = chunk.output
        if output is None:  # pragma: no cover - stream always ends with an output
            raise BackendError("generation ended without an output")
        return output

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Prefill the request and yield text as it is decoded; the last chunk carries the output.

        Args:
            request: Token form or text/messages form.
            params: Decoding settings.

        Yields:
            Text deltas that never split a UTF-8 character and never show part of a stop string; the last
            chunk has ``output`` set.

        """
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
        output = BaseOutput(
            text=final_text,
            token_ids=generated,
            finish_reason=finish,
            prompt_tokens=kept,
            completion_tokens=len(generated),
            prefill_seconds=prefill_seconds,
            total_seconds=time.perf_counter() - start,
            positions=prepared.mode,
            model=self.model_name,
        )
        yield StreamChunk(tail, output=output)

    # --- helpers ------------------------------------------------------------------------------------
    def _prepare(self, request: BaseRequest) -> _Prepared:
        if request.token_ids is not None:
            ids = [int(t) for t in request.token_ids]
            if not ids:
                raise EmptyPromptError("the request has no token ids; nothing to prefill")
            bad = [t for t in ids if t < 0 or t >= self.vocab_size]
            if bad:
                raise PromptError(
                    f"token ids {bad[:5]} are outside the base vocabulary [0, {self.vocab_size}); the "
                    "speculator uses another tokenizer, so send text or messages instead"
                )
            positions = list(range(len(ids))) if request.position_ids is None else list(request.position_ids)
            if len(positions) != len(ids):
                raise PromptError(f"{len(ids)} token ids but {len(positions)} position ids; they must match")
            if any(b <= a for a, b in itertools.pairwise(positions)) or positions[0] < 0:
                raise PromptError("position_ids must be non-negative and strictly increasing")
            original = request.original_length if request.original_length is not None else positions[-1] + 1
            if original <= positions[-1]:
                raise PromptError(
                    f"original_length={original} must be greater than the last position id {positions[-1]}"
                )
            full = original == len(ids) and positions == list(range(len(ids)))
            mode: PositionMode = "full" if full else "original"
            return _Prepared(ids, positions, original, mode)
        ids = self._tokenize_text(request)
        if not ids:
            raise EmptyPromptError("the prompt tokenised to nothing; give the model some text")
        return _Prepared(ids, list(range(len(ids))), len(ids), "compacted")

    def _tokenize_text(self, request: BaseRequest) -> list[int]:
        if request.messages is not None:
            messages = validate_messages(request.messages)
            if getattr(self.tokenizer, "chat_template", None):
                try:
                    rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                except Exception as exc:
                    raise PromptError(f"the chat template of {self.model_name!r} rejected the messages: {exc}") from exc
                return list(self.tokenizer(str(rendered), add_special_tokens=False)["input_ids"])
            return list(self.tokenizer(plain_chat(messages), add_special_tokens=True)["input_ids"])
        if request.text is not None:
            if not request.text.strip():
                raise EmptyPromptError("the prompt text is empty; give the model something to read")
            return list(self.tokenizer(request.text, add_special_tokens=True)["input_ids"])
        raise PromptError("the request has neither token_ids, text nor messages")

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
            try:
                out = self.model(
                    input_ids=torch.tensor([ids], device=device),
                    position_ids=torch.tensor([positions], device=device),
                    attention_mask=torch.ones((1, attention_length), dtype=torch.long, device=device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            except (RuntimeError, ValueError, IndexError) as exc:
                raise BackendError(f"base model {self.model_name!r} failed during generation: {exc}") from exc
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
