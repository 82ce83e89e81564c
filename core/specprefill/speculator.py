"""The speculator: scores prompt tokens and prunes prompts. Model-specific work lives in subclasses."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, EmptyPromptError, PromptError, SpecPrefillError, SpeculatorError
from specprefill.prompts import (
    PreparedPrompt,
    Prompt,
    check_spans,
    locate_contents_by_template,
    protection_for_messages,
    scrub_surrogates,
    validate_messages,
)
from specprefill.result import Message, PruneResult, PruneStats
from specprefill.scoring import chunk_bounds, protected_mask, select_chunks
from specprefill.spans import Span, char_spans_to_token_mask, cut_spans, join_spans, kept_char_spans

__all__ = ["ImportanceResult", "Speculator"]

logger = logging.getLogger("specprefill")


@dataclass(frozen=True)
class ImportanceResult:
    """Token importance plus how it was obtained."""

    importance: npt.NDArray[np.float32]
    lookahead_token_ids: list[int] = field(default_factory=list)
    queries: int = 0
    windows: int = 1


class Speculator(ABC):
    """Scores prompt tokens with a small model and prunes prompts (steps 1-6 of Speculative Prefill).

    Subclasses implement tokenisation and :meth:`score`; pruning, protection and text mapping are shared.
    """

    name: str = "speculator"

    # --- model-specific parts -------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        """Tokenise text without adding special tokens; return ids and character offsets."""

    @abstractmethod
    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        """Tokenise a plain-text prompt the way the model expects (BOS etc. added); ids and offsets."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids back to text."""

    @abstractmethod
    def render_chat(self, messages: list[Message]) -> str:
        """Render chat messages with the model's chat template, ending with the assistant prompt."""

    @abstractmethod
    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        """Steps 2-5: importance of every prompt token."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the speculator knows."""

    # --- shared behaviour -----------------------------------------------------------------------
    def token_importance(
        self, input_ids: Sequence[int], config: SpecPrefillConfig | None = None
    ) -> npt.NDArray[np.float32]:
        """Importance of every token of ``input_ids`` (float32, same length).

        Args:
            input_ids: Prompt token ids in the speculator's vocabulary.
            config: Look-ahead, pooling and windowing settings (defaults if omitted).

        Returns:
            One float32 score per token.

        """
        ids = self._check_ids(input_ids)
        return self.score(ids, _as_config(config)).importance

    def count_tokens(self, text: str) -> int:
        """Number of speculator tokens in ``text`` (no special tokens)."""
        return len(self.encode(text)[0])

    def prepare(
        self, prompt: Prompt, protected_spans: Iterable[Span] = (), *, config: SpecPrefillConfig | None = None
    ) -> PreparedPrompt:
        """Tokenise a prompt and mark its protected tokens (step 1 plus protection)."""
        cfg = _as_config(config)
        extra = check_spans(protected_spans)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise EmptyPromptError("the prompt is empty or only white space; nothing to prune or answer")
            prompt = scrub_surrogates(prompt)
            ids, offsets = self.encode_with_specials(prompt)
            protected = char_spans_to_token_mask(offsets, extra)
            return PreparedPrompt(ids, protected, text=prompt, offsets=offsets)
        if isinstance(prompt, (bytes, bytearray)):
            raise PromptError("the prompt is bytes; decode it first, e.g. data.decode('utf-8', errors='replace')")
        if isinstance(prompt, dict):
            raise PromptError("got a single message dict; pass a list of messages: [{'role': ..., 'content': ...}]")
        if not isinstance(prompt, Iterable):
            raise PromptError(
                f"the prompt must be text, a list of token ids or a list of messages, got {type(prompt).__name__}"
            )
        try:
            items = list(prompt)
        except TypeError as exc:
            raise PromptError(f"the prompt cannot be read as a sequence: {exc}") from exc
        if not items:
            raise EmptyPromptError("the prompt is empty; pass text, token ids or messages")
        if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in items):
            if extra:
                raise PromptError("protected_spans are character spans and need a text or message prompt")
            ids = self._check_ids(cast(list[int], items))
            return PreparedPrompt(ids, np.zeros(len(ids), dtype=np.bool_))
        messages = validate_messages(items)
        rendered = scrub_surrogates(self.render_chat(messages))
        ids, offsets = self.encode(rendered)
        spans = locate_contents_by_template(rendered, messages, self.render_chat)
        protected = protection_for_messages(offsets, len(rendered), messages, spans, cfg)
        protected |= char_spans_to_token_mask(offsets, extra)
        return PreparedPrompt(ids, protected, text=rendered, offsets=offsets, messages=messages, content_spans=spans)

    def prune(
        self,
        prompt: Prompt,
        config: SpecPrefillConfig | None = None,
        *,
        protected_spans: Iterable[Span] = (),
        **overrides: Any,
    ) -> PruneResult:
        """Score a prompt and keep its most important chunks.

        Args:
            prompt: Text, token ids, or chat messages (``[{"role": ..., "content": ...}]``). Messages are
                rendered with the chat template; template tokens, the system prompt and the end of the final
                user message are protected as the config says. Lone surrogates in text (which no tokenizer
                can encode) are replaced by U+FFFD, keeping character offsets.
            config: Pruning settings (defaults if omitted; a plain mapping of fields is accepted too).
            protected_spans: Extra ``(start, end)`` character spans of the text (or rendered chat) to keep.
            **overrides: Per-call config changes, e.g. ``keep_rate=0.1``.

        Returns:
            A :class:`PruneResult`. If scoring fails and ``config.fallback_on_error`` is set, the whole prompt
            is kept and ``stats.fallback`` is True.

        Raises:
            EmptyPromptError: The prompt is empty.
            PromptError: The prompt cannot be tokenised or has token ids outside the vocabulary.
            SpeculatorError: Scoring failed and fallback is off.

        """
        cfg = _as_config(config).with_overrides(**overrides)
        start = time.perf_counter()
        prepared = self.prepare(prompt, protected_spans, config=cfg)
        n = len(prepared.input_ids)
        if n < max(cfg.min_prompt_tokens, 1):
            return self._build(prepared, np.arange(n, dtype=np.int64), None, cfg, start)
        try:
            scored = self.score(prepared.input_ids, cfg)
        except SpecPrefillError as exc:
            if not cfg.fallback_on_error or isinstance(exc, PromptError):
                raise
            return self._fallback(prepared, cfg, start, exc)
        except Exception as exc:  # any failure of the model falls back to the full prompt
            if not cfg.fallback_on_error:
                raise SpeculatorError(f"speculator {self.name!r} failed: {exc}") from exc
            return self._fallback(prepared, cfg, start, exc)
        kept = select_chunks(
            scored.importance,
            keep_rate=cfg.keep_rate,
            chunk_size=cfg.chunk_size,
            protected=prepared.protected,
            max_kept_tokens=cfg.max_kept_tokens,
            protected_count_toward_budget=cfg.protected_count_toward_budget,
        )
        return self._build(prepared, kept, scored, cfg, start)

    async def aprune(
        self,
        prompt: Prompt,
        config: SpecPrefillConfig | None = None,
        *,
        protected_spans: Iterable[Span] = (),
        **overrides: Any,
    ) -> PruneResult:
        """Async :meth:`prune`: scoring runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(
            self.prune, prompt, config, protected_spans=check_spans(protected_spans), **overrides
        )

    # --- helpers --------------------------------------------------------------------------------
    def _check_ids(self, input_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in input_ids]
        if not ids:
            raise EmptyPromptError("input_ids is empty; pass at least one token id")
        bad = [t for t in ids if t < 0 or t >= self.vocab_size]
        if bad:
            raise PromptError(
                f"token ids {bad[:5]} are outside the speculator vocabulary [0, {self.vocab_size}); "
                "were they made with another tokenizer? Pass text instead"
            )
        return ids

    def _fallback(
        self, prepared: PreparedPrompt, cfg: SpecPrefillConfig, start: float, exc: BaseException
    ) -> PruneResult:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("speculator %s failed (%s); using the full prompt", self.name, reason)
        n = len(prepared.input_ids)
        return self._build(prepared, np.arange(n, dtype=np.int64), None, cfg, start, fallback_reason=reason)

    def _build(
        self,
        prepared: PreparedPrompt,
        kept: npt.NDArray[np.int64],
        scored: ImportanceResult | None,
        cfg: SpecPrefillConfig,
        start: float,
        *,
        fallback_reason: str | None = None,
    ) -> PruneResult:
        ids = prepared.input_ids
        n = len(ids)
        kept_ids = [ids[i] for i in kept]
        spans: list[Span] = []
        messages: list[Message] | None = None
        if prepared.text is not None and prepared.offsets is not None:
            spans = kept_char_spans(prepared.offsets, kept)
            text = join_spans(prepared.text, spans, cfg.gap_marker) if len(kept) < n else prepared.text
            if prepared.messages is not None and prepared.content_spans is not None:
                messages = _cut_messages(
                    prepared.messages, prepared.content_spans, spans, prepared.text, cfg.gap_marker
                )
        else:
            text = self._decode_runs(ids, kept, cfg.gap_marker)
        bounds = chunk_bounds(n, cfg.chunk_size)
        kept_mask = protected_mask(n, kept)
        stats = PruneStats(
            tokens_in=n,
            tokens_kept=len(kept),
            keep_ratio=len(kept) / n if n else 1.0,
            keep_rate=cfg.keep_rate,
            chunks_total=len(bounds),
            chunks_kept=sum(bool(kept_mask[s:e].any()) for s, e in bounds),
            protected_tokens=int(prepared.protected.sum()),
            lookahead_queries=scored.queries if scored else 0,
            windows=scored.windows if scored else 0,
            speculator_seconds=time.perf_counter() - start,
            pruned=scored is not None and len(kept) < n,
            fallback=fallback_reason is not None,
            fallback_reason=fallback_reason,
            speculator=self.name,
        )
        return PruneResult(
            original_length=n,
            input_ids=list(ids),
            kept_indices=kept,
            kept_token_ids=kept_ids,
            position_ids=[int(i) for i in kept],
            text=text,
            stats=stats,
            importance=scored.importance if scored else None,
            source_text=prepared.text,
            offsets=prepared.offsets,
            kept_spans=spans,
            messages=messages,
            lookahead_token_ids=scored.lookahead_token_ids if scored else [],
        )

    def _decode_runs(self, ids: Sequence[int], kept: npt.NDArray[np.int64], marker: str) -> str:
        if len(kept) == len(ids):
            return self.decode(ids)
        pieces: list[str] = []
        cursor = 0
        for run_start, run_end in _runs(kept):
            if run_start > cursor:
                pieces.append(marker)
            pieces.append(self.decode(ids[run_start:run_end]))
            cursor = run_end
        if cursor < len(ids):
            pieces.append(marker)
        if pieces and pieces[0] == marker:
            pieces[0] = marker.lstrip()
        if pieces and pieces[-1] == marker:
            pieces[-1] = marker.rstrip()
        return "".join(pieces)


def _as_config(config: object) -> SpecPrefillConfig:
    """The config to use: defaults for None, validation for a plain mapping, a typed error for anything else."""
    if config is None:
        return SpecPrefillConfig()
    if isinstance(config, SpecPrefillConfig):
        return config
    if isinstance(config, Mapping):
        return SpecPrefillConfig.model_validate(dict(config))
    raise ConfigurationError(
        f"config must be a SpecPrefillConfig or a mapping of its fields, got {type(config).__name__}"
    )


def _runs(indices: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Half-open ranges of consecutive values in a sorted index array."""
    out: list[tuple[int, int]] = []
    for i in indices:
        i = int(i)
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _cut_messages(
    messages: list[Message], content_spans: list[Span], kept: list[Span], text: str, marker: str
) -> list[Message]:
    out: list[Message] = []
    for m, window in zip(messages, content_spans, strict=True):
        if window[0] == window[1]:
            # not found in the rendering (the template rewrote or dropped it): pass it on unpruned
            out.append(dict(m))
            continue
        content = text[window[0] : window[1]]
        local = cut_spans(kept, window)
        new = content if local == [(0, len(content))] else join_spans(content, local, marker)
        out.append({**m, "content": new})
    return out
