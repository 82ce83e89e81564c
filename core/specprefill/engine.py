"""The engine: prune a prompt with the speculator, then generate with the base model.

``SpecPrefillEngine`` only moves data: the speculator decides what to keep (:class:`PruneResult`), the
engine turns that into a :class:`~specprefill.backends.base.BaseRequest` (token form with original
positions when both share a tokenizer, text or messages otherwise), and the base backend generates. Timings
of both halves are reported in :class:`EngineStats`; the speculator's cost is part of time to first token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from specprefill.backends.base import (
    BaseBackend,
    BaseOutput,
    BaseRequest,
    GenerationParams,
    PositionMode,
    StreamChunk,
)
from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, EmptyPromptError, PromptError
from specprefill.prompts import Prompt, validate_messages
from specprefill.result import PruneResult, PruneStats
from specprefill.spans import Span
from specprefill.speculator import Speculator

__all__ = ["EngineChunk", "EngineResult", "EngineStats", "SpecPrefillEngine"]

logger = logging.getLogger("specprefill.engine")


@dataclass(frozen=True)
class EngineStats:
    """Numbers about one engine call (plain data; see :meth:`to_dict`)."""

    tokens_in: int
    """Prompt length in speculator tokens (base tokens when the speculator could not run)."""
    tokens_kept: int
    """Speculator tokens kept."""
    keep_ratio: float
    """``tokens_kept / tokens_in``."""
    base_prompt_tokens: int
    """Tokens the base model actually prefilled."""
    completion_tokens: int
    """Tokens the base generated."""
    speculator_seconds: float
    """Time spent scoring and selecting (tokenisation, speculator passes, selection)."""
    base_prefill_seconds: float
    """Base time to first token."""
    base_seconds: float
    """Base time for the whole generation."""
    ttft_seconds: float
    """Time to first token: ``speculator_seconds + base_prefill_seconds``."""
    total_seconds: float
    """Wall time of the whole call."""
    positions: PositionMode
    """How the base saw the prompt: ``original`` positions, ``compacted`` re-tokenised text, or ``full``."""
    pruned: bool
    """Whether any prompt token was dropped."""
    fallback: bool
    """True when the speculator failed and the full prompt went to the base."""
    fallback_reason: str | None
    """Why the fallback happened."""
    speculator: str
    """Speculator name."""
    base_model: str
    """Base model name."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` for JSON output or response metadata."""
        return asdict(self)


@dataclass(frozen=True)
class EngineResult:
    """A finished generation with what was pruned and how long each part took."""

    text: str
    """Generated text."""
    finish_reason: str
    """``"stop"`` (EOS or a stop string) or ``"length"`` (``max_new_tokens`` reached)."""
    prune: PruneResult
    """What the speculator kept."""
    output: BaseOutput
    """The base backend's output."""
    stats: EngineStats
    """Counts and timings."""


@dataclass(frozen=True)
class EngineChunk:
    """A piece of streamed text; the last chunk carries the finished :class:`EngineResult`."""

    text: str
    """New text (may be empty on the last chunk)."""
    result: EngineResult | None = None
    """Set on the last chunk only."""


@dataclass(frozen=True)
class _Plan:
    prune: PruneResult
    request: BaseRequest
    speculator_name: str
    fallback_prompt: Prompt | None = None
    """Set when the speculator raised outside ``prune``; the prune result is rebuilt after generation."""


class SpecPrefillEngine:
    """Speculative Prefill end to end: a speculator prunes the prompt, a base backend generates.

    Args:
        speculator: A :class:`~specprefill.speculator.Speculator`, or a name/path for
            :func:`specprefill.load_speculator` (loaded on first use, e.g. ``"smollm2-135m"``). If it
            cannot load and ``config.fallback_on_error`` is set, calls go through unpruned (with a warning
            and ``stats.fallback=True``) and loading is tried again on the next call.
        base: The base model backend, e.g. :class:`~specprefill.backends.transformers.TransformersBackend`
            or :class:`~specprefill.backends.openai.OpenAIBackend`.
        config: Pruning settings (defaults if omitted); every call may override single fields.

    Example:
        >>> engine = SpecPrefillEngine("smollm2-135m", TransformersBackend.from_pretrained("smollm2-135m"))
        >>> result = engine.generate(long_prompt, max_new_tokens=64, keep_rate=0.2)
        >>> result.text, result.stats.ttft_seconds

    """

    def __init__(
        self,
        speculator: Speculator | str,
        base: BaseBackend,
        config: SpecPrefillConfig | None = None,
    ) -> None:
        if not isinstance(base, BaseBackend):
            raise ConfigurationError(f"base must be a BaseBackend, got {type(base).__name__}")
        if not isinstance(speculator, (Speculator, str)):
            raise ConfigurationError(
                f"speculator must be a Speculator or a model name, got {type(speculator).__name__}"
            )
        self._speculator: Speculator | None = speculator if isinstance(speculator, Speculator) else None
        self._speculator_source = speculator if isinstance(speculator, str) else speculator.name
        self.base = base
        self.config = config or SpecPrefillConfig()
        self._load_lock = threading.Lock()

    # --- speculator ---------------------------------------------------------------------------------
    @property
    def speculator(self) -> Speculator:
        """The speculator (loaded now if it was given by name).

        Raises:
            ModelLoadError: The named speculator cannot be loaded.

        """
        if self._speculator is None:
            with self._load_lock:
                if self._speculator is None:
                    from specprefill.models import load_speculator

                    logger.info("loading speculator %s", self._speculator_source)
                    loaded = load_speculator(self._speculator_source)
                    if not isinstance(loaded, Speculator):  # pragma: no cover - load_speculator's contract
                        raise ConfigurationError(f"{self._speculator_source!r} did not load as a Speculator")
                    self._speculator = loaded
        return self._speculator

    @property
    def speculator_name(self) -> str:
        """Name of the speculator, without loading it."""
        return self._speculator.name if self._speculator is not None else self._speculator_source

    # --- public API ---------------------------------------------------------------------------------
    def prune(self, prompt: Prompt, *, protected_spans: Iterable[Span] = (), **overrides: Any) -> PruneResult:
        """Prune a prompt with the speculator only (no base call).

        Args:
            prompt: Text, token ids, or chat messages.
            protected_spans: Extra ``(start, end)`` character spans to keep.
            **overrides: Per-call config fields, e.g. ``keep_rate=0.1``.

        Returns:
            The :class:`PruneResult`.

        """
        cfg = self.config.with_overrides(**overrides)
        return self.speculator.prune(prompt, cfg, protected_spans=list(protected_spans))

    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        protected_spans: Iterable[Span] = (),
        **config_overrides: Any,
    ) -> EngineResult:
        """Prune the prompt and generate with the base model.

        Args:
            prompt: Text, token ids (speculator vocabulary), or chat messages.
            max_new_tokens: Most tokens to generate.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_p: Nucleus sampling mass.
            stop: Stop string(s); generation ends before the first one and it is left out of the text.
            seed: Sampling seed.
            protected_spans: Extra ``(start, end)`` character spans of the prompt never to drop.
            **config_overrides: Per-call :class:`SpecPrefillConfig` fields, e.g. ``keep_rate=0.2``.

        Returns:
            The :class:`EngineResult` (text, prune result, base output, stats).

        Raises:
            EmptyPromptError: The prompt is empty.
            PromptError: The prompt cannot be used.
            SpeculatorError: The speculator failed and ``fallback_on_error`` is off.
            BackendError: The base model failed.

        """
        start = time.perf_counter()
        params = _params(max_new_tokens, temperature, top_p, stop, seed)
        plan = self._plan(prompt, protected_spans, config_overrides)
        output = self.base.generate(plan.request, params)
        return self._finish(plan, output, start)

    async def agenerate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        protected_spans: Iterable[Span] = (),
        **config_overrides: Any,
    ) -> EngineResult:
        """Async :meth:`generate`: ``await speculator.aprune(...)`` then ``await base.agenerate(...)``.

        Args and return value as for :meth:`generate`.
        """
        start = time.perf_counter()
        params = _params(max_new_tokens, temperature, top_p, stop, seed)
        plan = await self._aplan(prompt, protected_spans, config_overrides)
        output = await self.base.agenerate(plan.request, params)
        return self._finish(plan, output, start)

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        protected_spans: Iterable[Span] = (),
        **config_overrides: Any,
    ) -> Iterator[EngineChunk]:
        """Prune, then stream the base's text; the last chunk carries the :class:`EngineResult`.

        Args are as for :meth:`generate`.

        Yields:
            :class:`EngineChunk` pieces; joined, their texts equal ``result.text``.

        """
        start = time.perf_counter()
        params = _params(max_new_tokens, temperature, top_p, stop, seed)
        plan = self._plan(prompt, protected_spans, config_overrides)
        for chunk in self.base.stream(plan.request, params):
            yield self._chunk(plan, chunk, start)

    async def astream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        protected_spans: Iterable[Span] = (),
        **config_overrides: Any,
    ) -> AsyncIterator[EngineChunk]:
        """Async :meth:`stream`.

        Args are as for :meth:`generate`.

        Yields:
            :class:`EngineChunk` pieces; the last carries the :class:`EngineResult`.

        """
        start = time.perf_counter()
        params = _params(max_new_tokens, temperature, top_p, stop, seed)
        plan = await self._aplan(prompt, protected_spans, config_overrides)
        async for chunk in self.base.astream(plan.request, params):
            yield self._chunk(plan, chunk, start)

    # --- planning -----------------------------------------------------------------------------------
    def _plan(self, prompt: Prompt, protected_spans: Iterable[Span], overrides: dict[str, Any]) -> _Plan:
        cfg = self.config.with_overrides(**overrides)
        spans = list(protected_spans)
        try:
            speculator = self.speculator
            pruned = speculator.prune(prompt, cfg, protected_spans=spans)
        except PromptError:
            raise
        except Exception as exc:
            return self._outside_fallback(prompt, cfg, exc)
        same = self.base.same_tokenizer(speculator)
        return self._build_plan(prompt, pruned, same, speculator.name)

    async def _aplan(self, prompt: Prompt, protected_spans: Iterable[Span], overrides: dict[str, Any]) -> _Plan:
        cfg = self.config.with_overrides(**overrides)
        spans = list(protected_spans)
        try:
            speculator = self._speculator
            if speculator is None:
                speculator = await asyncio.to_thread(lambda: self.speculator)
            pruned = await speculator.aprune(prompt, cfg, protected_spans=spans)
        except PromptError:
            raise
        except Exception as exc:
            return self._outside_fallback(prompt, cfg, exc)
        same = await asyncio.to_thread(self.base.same_tokenizer, speculator)
        return self._build_plan(prompt, pruned, same, speculator.name)

    def _outside_fallback(self, prompt: Prompt, cfg: SpecPrefillConfig, exc: Exception) -> _Plan:
        """The speculator raised outside ``prune`` (e.g. it could not load): send the full prompt."""
        if not cfg.fallback_on_error:
            raise exc
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "speculator %s is unavailable (%s); sending the full prompt to base %s",
            self.speculator_name,
            reason,
            self.base.name,
        )
        request = _full_request(prompt, None, same=False)
        placeholder = _bare_prune(prompt, 0, self.speculator_name, reason)
        return _Plan(placeholder, request, self.speculator_name, fallback_prompt=prompt)

    def _build_plan(self, prompt: Prompt, pruned: PruneResult, same: bool, name: str) -> _Plan:
        stats = pruned.stats
        if stats.fallback:
            logger.warning(
                "speculator %s failed (%s); sending the full %d-token prompt to base %s",
                name,
                stats.fallback_reason,
                pruned.original_length,
                self.base.name,
            )
        if not stats.pruned or len(pruned.kept_token_ids) == pruned.original_length:
            request = _full_request(prompt, pruned, same=same)
        elif same:
            request = BaseRequest(
                token_ids=list(pruned.kept_token_ids),
                position_ids=list(pruned.position_ids),
                original_length=pruned.original_length,
                text=None if pruned.messages is not None else pruned.text,
                messages=pruned.messages,
            )
        elif pruned.messages is not None:
            request = BaseRequest(messages=pruned.messages)
        else:
            request = BaseRequest(text=pruned.text)
        return _Plan(pruned, request, name)

    # --- results ------------------------------------------------------------------------------------
    def _chunk(self, plan: _Plan, chunk: StreamChunk, start: float) -> EngineChunk:
        if chunk.output is None:
            return EngineChunk(chunk.text)
        return EngineChunk(chunk.text, self._finish(plan, chunk.output, start))

    def _finish(self, plan: _Plan, output: BaseOutput, start: float) -> EngineResult:
        pruned = plan.prune
        if plan.fallback_prompt is not None:
            pruned = _bare_prune(
                plan.fallback_prompt, output.prompt_tokens, plan.speculator_name, pruned.stats.fallback_reason
            )
        ps = pruned.stats
        full = not ps.pruned
        positions: PositionMode = "full" if full else output.positions
        if full and output.positions != "full":
            output = replace(output, positions="full")
        stats = EngineStats(
            tokens_in=ps.tokens_in,
            tokens_kept=ps.tokens_kept,
            keep_ratio=ps.keep_ratio,
            base_prompt_tokens=output.prompt_tokens,
            completion_tokens=output.completion_tokens,
            speculator_seconds=ps.speculator_seconds,
            base_prefill_seconds=output.prefill_seconds,
            base_seconds=output.total_seconds,
            ttft_seconds=ps.speculator_seconds + output.prefill_seconds,
            total_seconds=time.perf_counter() - start,
            positions=positions,
            pruned=ps.pruned,
            fallback=ps.fallback,
            fallback_reason=ps.fallback_reason,
            speculator=ps.speculator or plan.speculator_name,
            base_model=output.model,
        )
        return EngineResult(output.text, output.finish_reason, pruned, output, stats)


# --- helpers ----------------------------------------------------------------------------------------
def _params(
    max_new_tokens: int, temperature: float, top_p: float, stop: str | Sequence[str] | None, seed: int | None
) -> GenerationParams:
    stops: tuple[str, ...] = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stops, seed=seed)


def _is_token_ids(prompt: Prompt) -> bool:
    if isinstance(prompt, (str, bytes, bytearray)):
        return False
    items = list(prompt)
    return bool(items) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in items)


def _full_request(prompt: Prompt, pruned: PruneResult | None, *, same: bool) -> BaseRequest:
    """The whole, unpruned prompt.

    With the speculator's token ids (positions ``0..N-1``) when the base shares its tokenizer; otherwise
    the original text or messages. A token-id prompt for a base with another tokenizer goes as decoded
    text; without any speculator (it could not load) the ids go as they are.
    """
    if pruned is not None and same:
        ids = list(pruned.input_ids)
        return BaseRequest(
            token_ids=ids,
            position_ids=list(range(len(ids))),
            original_length=len(ids),
            text=prompt if isinstance(prompt, str) else None,
            messages=pruned.messages,
        )
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty or only white space")
        return BaseRequest(text=prompt)
    if _is_token_ids(prompt):
        if pruned is not None:
            return BaseRequest(text=pruned.text)
        ids = [int(t) for t in prompt]  # type: ignore[arg-type]
        return BaseRequest(token_ids=ids, position_ids=list(range(len(ids))), original_length=len(ids))
    return BaseRequest(messages=validate_messages(list(prompt)))


def _bare_prune(prompt: Prompt, tokens: int, speculator: str, reason: str | None) -> PruneResult:
    """A prune result for a prompt the speculator never saw (everything kept)."""
    ids = [int(t) for t in prompt] if _is_token_ids(prompt) else []  # type: ignore[arg-type]
    n = len(ids) or tokens
    stats = PruneStats(
        tokens_in=n,
        tokens_kept=n,
        keep_ratio=1.0,
        keep_rate=1.0,
        pruned=False,
        fallback=True,
        fallback_reason=reason,
        speculator=speculator,
    )
    text = prompt if isinstance(prompt, str) else ""
    messages = None if isinstance(prompt, str) or ids else validate_messages(list(prompt))
    return PruneResult(
        original_length=n,
        input_ids=ids,
        kept_indices=np.arange(n, dtype=np.int64),
        kept_token_ids=ids,
        text=text,
        stats=stats,
        source_text=text or None,
        messages=messages,
    )
