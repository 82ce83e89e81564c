"""The speculator: scores prompt tokens and prunes prompts. Model-specific work lives in subclasses."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import EmptyPromptError, PromptError, SpecPrefillError, SpeculatorError
from specprefill.prompt.assemble import ResultBuilder
from specprefill.prompt.messages import locate_contents_by_template, validate_messages
from specprefill.prompt.prepared import PreparedPrompt, Prompt, ScoredPrompt, prompt_kind, scrub_surrogates
from specprefill.prompt.protect import check_spans, protection_for_messages
from specprefill.prompt.segments import check_segments, scoring_config, segment_starts_of
from specprefill.result import Message, PruneResult
from specprefill.spans import Span, char_spans_to_token_mask
from specprefill.speculator.checkpoints import ScoringCancelledError

__all__ = ["ImportanceResult", "Speculator"]

logger = logging.getLogger("specprefill")


@dataclass(frozen=True)
class ImportanceResult:
    """Token importance plus how it was obtained."""

    importance: npt.NDArray[np.float32]
    lookahead_token_ids: list[int] = field(default_factory=list)
    queries: int = 0
    windows: int = 1


class Speculator(ResultBuilder, ABC):
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
        return self.score(ids, SpecPrefillConfig.of(config)).importance

    def count_tokens(self, text: str) -> int:
        """Number of speculator tokens in ``text`` (no special tokens)."""
        return len(self.encode(text)[0])

    def prepare(
        self, prompt: Prompt, protected_spans: Iterable[Span] = (), *, config: SpecPrefillConfig | None = None
    ) -> PreparedPrompt:
        """Tokenise a prompt and mark its protected tokens (step 1 plus protection)."""
        cfg = SpecPrefillConfig.of(config)
        extra = check_spans(protected_spans)
        kind, value = prompt_kind(prompt)
        if isinstance(value, str):
            if not value.strip():
                raise EmptyPromptError("the prompt is empty or only white space; nothing to prune or answer")
            text = scrub_surrogates(value)
            ids, offsets = self.encode_with_specials(text)
            protected = char_spans_to_token_mask(offsets, extra)
            return PreparedPrompt(ids, protected, text=text, offsets=offsets)
        if kind == "token_ids":
            if extra:
                raise PromptError("protected_spans are character spans and need a text or message prompt")
            ids = self._check_ids(value)
            return PreparedPrompt(ids, np.zeros(len(ids), dtype=np.bool_))
        messages = validate_messages(value)
        rendered = scrub_surrogates(self.render_chat(messages))
        ids, offsets = self.encode(rendered)
        spans = locate_contents_by_template(rendered, messages, self.render_chat)
        protected = protection_for_messages(offsets, rendered, messages, spans, cfg)
        protected |= char_spans_to_token_mask(offsets, extra)
        return PreparedPrompt(ids, protected, text=rendered, offsets=offsets, messages=messages, content_spans=spans)

    def score_prompt(
        self,
        prompt: Prompt | PreparedPrompt,
        config: SpecPrefillConfig | None = None,
        *,
        protected_spans: Iterable[Span] = (),
        segments: Iterable[int | Span] = (),
        **overrides: Any,
    ) -> ScoredPrompt:
        """Tokenise, protect and score a prompt, without selecting anything (steps 1-5).

        Args:
            prompt: Text, token ids, or chat messages, as for :meth:`prune`; or a prompt :meth:`prepare` already
                tokenised (then ``protected_spans`` add to its protection).
            config: Scoring settings (defaults if omitted; a plain mapping of fields is accepted too).
            protected_spans: Extra ``(start, end)`` character spans of the text (or rendered chat) to keep.
            segments: Caller passages: character offsets where a passage starts, or ``(start, end)`` spans, in
                the text (or rendered chat). The chunk grid always restarts there (see
                :func:`~specprefill.scoring.select_chunks`), together with ``config.segment_by``.
            **overrides: Per-call config changes.

        Returns:
            A :class:`~specprefill.prompt.prepared.ScoredPrompt`. ``importance`` is None when the prompt is shorter than
            ``min_prompt_tokens`` or scoring failed with ``fallback_on_error`` (then ``fallback_reason`` says why).

        Raises:
            EmptyPromptError: The prompt is empty.
            PromptError: The prompt cannot be tokenised, or has token ids outside the vocabulary.
            SpeculatorError: Scoring failed and fallback is off.

        """
        cfg = SpecPrefillConfig.of(config).with_overrides(**overrides)
        start = time.perf_counter()
        if isinstance(prompt, PreparedPrompt):
            extra = char_spans_to_token_mask(prompt.offsets or [], check_spans(protected_spans))
            prepared = replace(prompt, protected=prompt.protected | extra) if extra.any() else prompt
        else:
            prepared = self.prepare(prompt, protected_spans, config=cfg)
        starts = segment_starts_of(prepared, cfg, check_segments(segments))
        result: ImportanceResult | None = None
        reason: str | None = None
        if cfg.long_enough(prepared.n_tokens):
            try:
                result = self.score(prepared.input_ids, scoring_config(prepared, cfg))
            except SpecPrefillError as exc:
                if not cfg.fallback_on_error or isinstance(exc, (PromptError, ScoringCancelledError)):
                    raise
                reason = self._fallback_reason(exc)
            except Exception as exc:  # any failure of the model falls back to the full prompt
                if not cfg.fallback_on_error:
                    raise SpeculatorError(f"speculator {self.name!r} failed: {exc}") from exc
                reason = self._fallback_reason(exc)
        return self._scored(prepared, starts, result, reason, time.perf_counter() - start)

    def score_many(self, batch: Sequence[tuple[Sequence[int], SpecPrefillConfig]]) -> list[ImportanceResult]:
        """:meth:`score` for several prompts at once (a micro-batch), in order.

        The base class scores them one by one; a subclass may run them in one forward pass (see
        :class:`~specprefill.speculator.hf.HFSpeculator`). Raises what :meth:`score` raises.
        """
        return [self.score(ids, config) for ids, config in batch]

    def score_prompts(self, items: Sequence[tuple[PreparedPrompt, SpecPrefillConfig]]) -> list[ScoredPrompt]:
        """:meth:`score_prompt` for several prepared prompts, whose model work may run as one batch.

        Each result equals ``score_prompt(prepared, config)``, except that ``speculator_seconds`` is the
        whole batch's time (what each request waited). If the batch fails, every prompt is scored alone, so
        one bad prompt falls back (or raises) alone as :meth:`score_prompt` says.

        Args:
            items: ``(prepared prompt, config)`` pairs, e.g. from :meth:`prepare`.

        Returns:
            One :class:`~specprefill.prompt.prepared.ScoredPrompt` per item, in order.

        """
        start = time.perf_counter()
        wanted = [i for i, (prepared, cfg) in enumerate(items) if cfg.long_enough(prepared.n_tokens)]
        try:
            batch = self.score_many([(items[i][0].input_ids, scoring_config(*items[i])) for i in wanted])
        except ScoringCancelledError:
            raise  # nobody waits for any of them
        except Exception as exc:  # one prompt's fault must not decide the others'
            logger.info("speculator %s: batched scoring failed (%s); scoring one by one", self.name, exc)
            return [self.score_prompt(prepared, cfg) for prepared, cfg in items]
        results: dict[int, ImportanceResult] = dict(zip(wanted, batch, strict=True))
        seconds = time.perf_counter() - start
        return [
            self._scored(prepared, segment_starts_of(prepared, cfg, ()), results.get(i), None, seconds)
            for i, (prepared, cfg) in enumerate(items)
        ]

    def _scored(
        self,
        prepared: PreparedPrompt,
        starts: list[int] | None,
        result: ImportanceResult | None,
        reason: str | None,
        seconds: float,
    ) -> ScoredPrompt:
        return ScoredPrompt(
            **{f.name: getattr(prepared, f.name) for f in fields(PreparedPrompt)},
            segments=starts,
            importance=result.importance if result else None,
            speculator_seconds=seconds,
            queries=result.queries if result else 0,
            windows=result.windows if result else 0,
            lookahead_token_ids=list(result.lookahead_token_ids) if result else [],
            fallback_reason=reason,
            speculator=self.name,
        )

    def prune(
        self,
        prompt: Prompt,
        config: SpecPrefillConfig | None = None,
        *,
        protected_spans: Iterable[Span] = (),
        segments: Iterable[int | Span] = (),
        **overrides: Any,
    ) -> PruneResult:
        """Score a prompt and keep its most important chunks (:meth:`score_prompt` then :meth:`select`).

        Args:
            prompt: Text, token ids, or chat messages (``[{"role": ..., "content": ...}]``). Messages are
                rendered with the chat template; template tokens, the system prompt and the end of the final
                user message are protected as the config says. Lone surrogates in text (which no tokenizer
                can encode) are replaced by U+FFFD, keeping character offsets.
            config: Pruning settings (defaults if omitted; a plain mapping of fields is accepted too).
            protected_spans: Extra ``(start, end)`` character spans of the text (or rendered chat) to keep.
            segments: Caller passages (character offsets or ``(start, end)`` spans) where the chunk grid
                restarts; see :meth:`score_prompt`.
            **overrides: Per-call config changes, e.g. ``keep_rate=0.1``.

        Returns:
            A :class:`PruneResult`. If scoring fails and ``config.fallback_on_error`` is set, the whole prompt
            is kept and ``stats.fallback`` is True.

        Raises:
            EmptyPromptError: The prompt is empty.
            PromptError: The prompt cannot be tokenised or has token ids outside the vocabulary.
            SpeculatorError: Scoring failed and fallback is off.

        """
        cfg = SpecPrefillConfig.of(config).with_overrides(**overrides)
        scored = self.score_prompt(prompt, cfg, protected_spans=protected_spans, segments=segments)
        return self.select(scored, cfg)

    async def aprune(self, prompt: Prompt, config: SpecPrefillConfig | None = None, **options: Any) -> PruneResult:
        """Async :meth:`prune` (same arguments): scoring runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(self.prune, prompt, config, **_thread_kwargs(options))

    async def ascore_prompt(
        self, prompt: Prompt, config: SpecPrefillConfig | None = None, **options: Any
    ) -> ScoredPrompt:
        """Async :meth:`score_prompt` (same arguments): scoring runs in a worker thread."""
        return await asyncio.to_thread(self.score_prompt, prompt, config, **_thread_kwargs(options))

    # --- helpers --------------------------------------------------------------------------------
    def _token_text(self) -> Callable[[Sequence[int]], str]:
        return self.decode

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

    def _fallback_reason(self, exc: BaseException) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("speculator %s failed (%s); using the full prompt", self.name, reason)
        return reason


def _thread_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a call in a worker thread: the span iterables read (and checked) here, first."""
    spans, segments = options.pop("protected_spans", ()), options.pop("segments", ())
    return {"protected_spans": check_spans(spans), "segments": check_segments(segments), **options}
