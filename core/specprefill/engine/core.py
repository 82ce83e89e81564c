"""The engine: prune a prompt with the speculator, then generate with the base model.

``SpecPrefillEngine`` only moves data: the speculator decides what to keep (:class:`PruneResult`), the
planning core (:mod:`specprefill.engine.planning`) turns that into a :class:`~specprefill.backends.base.BaseRequest`
(token form with original positions when both share a tokenizer, text or messages otherwise), and the base
backend generates. Sync and async calls, generate and stream, share one path; async calls score on the
engine's own bounded scoring pool, so base calls never queue behind other calls' pruning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from specprefill.backends.base import BaseBackend, GenerationParams, StreamChunk
from specprefill.config import SpecPrefillConfig
from specprefill.engine.callargs import split_call_kwargs, stop_tuple
from specprefill.engine.planning import Plan, fallback_plan, plan_request
from specprefill.engine.result import CallTiming, EngineChunk, EngineResult, EngineStats, build_result
from specprefill.errors import ConfigurationError, PromptError
from specprefill.prompt.prepared import Prompt
from specprefill.prompt.protect import check_spans
from specprefill.result import PruneResult
from specprefill.spans import Span
from specprefill.speculator.base import Speculator

__all__ = ["EngineChunk", "EngineResult", "EngineStats", "SpecPrefillEngine"]

logger = logging.getLogger("specprefill.engine")


@dataclass
class _Call:
    """One call's checked settings and timing."""

    params: GenerationParams
    config: SpecPrefillConfig
    spans: list[Span]
    timing: CallTiming


class SpecPrefillEngine:
    """Speculative Prefill end to end: a speculator prunes the prompt, a base backend generates.

    Args:
        speculator: A :class:`~specprefill.speculator.base.Speculator`, or a name/path for
            :func:`specprefill.load_speculator` (loaded on first use, e.g. ``"smollm2-135m"``). If it
            cannot load and ``config.fallback_on_error`` is set, calls go through unpruned (with a warning
            and ``stats.fallback=True``) and loading is tried again on the next call.
        base: The base model backend, e.g. :class:`~specprefill.backends.transformers.TransformersBackend`
            or :class:`~specprefill.backends.openai.backend.OpenAIBackend`.
        config: Pruning settings (defaults if omitted); every call may override single fields.
        scoring_workers: Threads of the pool async calls score on (scoring is compute-bound: more
            workers than the speculator's device can run at once only add waiting).

    Example:
        >>> engine = specprefill.load_engine("smollm2-135m")
        >>> result = engine.generate(long_prompt, max_new_tokens=64, keep_rate=0.2)
        >>> result.text, result.stats.ttft_seconds

    """

    def __init__(
        self,
        speculator: Speculator | str,
        base: BaseBackend,
        config: SpecPrefillConfig | None = None,
        *,
        scoring_workers: int = 1,
    ) -> None:
        if not isinstance(base, BaseBackend):
            raise ConfigurationError(f"base must be a BaseBackend, got {type(base).__name__}")
        if not isinstance(speculator, (Speculator, str)):
            raise ConfigurationError(
                f"speculator must be a Speculator or a model name, got {type(speculator).__name__}"
            )
        if isinstance(scoring_workers, bool) or not isinstance(scoring_workers, int) or scoring_workers < 1:
            raise ConfigurationError(f"scoring_workers must be a positive integer, got {scoring_workers!r}")
        self._speculator: Speculator | None = speculator if isinstance(speculator, Speculator) else None
        self._speculator_source = speculator if isinstance(speculator, str) else speculator.name
        self.base = base
        self.config = config or SpecPrefillConfig()
        self.scoring_workers = scoring_workers
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

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
                    from specprefill.speculator.loading import load_speculator

                    logger.info("loading speculator %s", self._speculator_source)
                    self._speculator = load_speculator(self._speculator_source)
        return self._speculator

    @property
    def speculator_name(self) -> str:
        """Name of the speculator, without loading it."""
        return self._speculator.name if self._speculator is not None else self._speculator_source

    def scoring_pool(self) -> ThreadPoolExecutor:
        """The bounded thread pool async calls score on (created on first use)."""
        if self._pool is None:
            with self._load_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.scoring_workers, thread_name_prefix="specprefill-score")
        return self._pool

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
            max_new_tokens: Most tokens to generate (``max_tokens=`` is accepted as an alias).
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_p: Nucleus sampling mass.
            stop: Stop string(s); generation ends before the first one and it is left out of the text.
            seed: Sampling seed (0 to 2**64 - 1).
            protected_spans: Extra ``(start, end)`` character spans of the prompt never to drop.
            **config_overrides: Per-call :class:`SpecPrefillConfig` fields, e.g. ``keep_rate=0.2``.

        Returns:
            The :class:`EngineResult` (text, prune result, base output, stats).

        Raises:
            ConfigurationError: A setting is invalid (:class:`UnknownArgumentError` for unknown arguments).
            EmptyPromptError: The prompt is empty.
            PromptError: The prompt cannot be used.
            SpeculatorError: The speculator failed and ``fallback_on_error`` is off.
            BackendError: The base model failed.

        """
        call = self._begin(max_new_tokens, temperature, top_p, stop, seed, protected_spans, config_overrides)
        plan = self._plan(prompt, call)
        call.timing.base_called = time.perf_counter()
        return build_result(plan, self.base.generate(plan.request, call.params), call.timing)

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
        """Async :meth:`generate`: scoring on the engine's scoring pool, then ``await base.agenerate(...)``.

        Args and return value as for :meth:`generate`.
        """
        call = self._begin(max_new_tokens, temperature, top_p, stop, seed, protected_spans, config_overrides)
        plan = await self._aplan(prompt, call)
        call.timing.base_called = time.perf_counter()
        return build_result(plan, await self.base.agenerate(plan.request, call.params), call.timing)

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
        call = self._begin(max_new_tokens, temperature, top_p, stop, seed, protected_spans, config_overrides)
        plan = self._plan(prompt, call)
        call.timing.base_called = time.perf_counter()
        for chunk in self.base.stream(plan.request, call.params):
            yield _engine_chunk(plan, chunk, call.timing)

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
        call = self._begin(max_new_tokens, temperature, top_p, stop, seed, protected_spans, config_overrides)
        plan = await self._aplan(prompt, call)
        call.timing.base_called = time.perf_counter()
        async for chunk in self.base.astream(plan.request, call.params):
            yield _engine_chunk(plan, chunk, call.timing)

    # --- the shared path ----------------------------------------------------------------------------
    def _begin(
        self,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: str | Sequence[str] | None,
        seed: int | None,
        protected_spans: Iterable[Span],
        extra: dict[str, Any],
    ) -> _Call:
        """Check every setting of a call once, before any work (sync and async alike)."""
        entered = time.perf_counter()
        generation, overrides = split_call_kwargs(extra, caller="SpecPrefillEngine")
        settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": stop,
            "seed": seed,
            **generation,
        }
        settings["stop"] = stop_tuple(settings["stop"])
        params = GenerationParams(**settings)
        config = self.config.with_overrides(**overrides)
        return _Call(params, config, check_spans(protected_spans), CallTiming(entered))

    def _plan(self, prompt: Prompt, call: _Call) -> Plan:
        """Score and select (or fall back), then build the base request."""
        call.timing.scoring_started = time.perf_counter()
        try:
            speculator = self.speculator
            pruned = speculator.prune(prompt, call.config, protected_spans=call.spans)
        except PromptError:
            raise
        except Exception as exc:
            return self._unavailable(prompt, call.config, exc)
        self._log_fallback(pruned)
        same = self.base.same_tokenizer(speculator)
        return plan_request(prompt, pruned, same_tokenizer=same, speculator_name=speculator.name)

    async def _aplan(self, prompt: Prompt, call: _Call) -> Plan:
        """:meth:`_plan` on the scoring pool, keeping the event loop and the default pool free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.scoring_pool(), self._plan, prompt, call)

    def _unavailable(self, prompt: Prompt, cfg: SpecPrefillConfig, exc: Exception) -> Plan:
        """The speculator raised outside ``prune`` (e.g. it could not load): send the full prompt."""
        if not cfg.fallback_on_error:
            raise exc
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "speculator %s is unavailable (%s); sending the full prompt to base %s",
            self.speculator_name,
            type(exc).__name__,
            self.base.model_name,
        )
        logger.debug("speculator failure: %s", reason)
        return fallback_plan(prompt, self.speculator_name, reason)

    def _log_fallback(self, pruned: PruneResult) -> None:
        stats = pruned.stats
        if stats.fallback:
            short = (stats.fallback_reason or "").split(":", 1)[0]
            logger.warning(
                "speculator %s failed (%s); sending the full %d-token prompt to base %s",
                stats.speculator or self.speculator_name,
                short,
                pruned.original_length,
                self.base.model_name,
            )
            logger.debug("speculator failure: %s", stats.fallback_reason)

    def close(self) -> None:
        """Shut the scoring pool down (the engine creates a new one if used again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _engine_chunk(plan: Plan, chunk: StreamChunk, timing: CallTiming) -> EngineChunk:
    if chunk.output is None:
        return EngineChunk(chunk.text)
    return EngineChunk(chunk.text, build_result(plan, chunk.output, timing))
