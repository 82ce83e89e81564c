"""Model Runner V2 hook (the default GPU runner of vLLM 0.33): a ``ModelState`` that supplies positions.

MRV2 asks a ``ModelState`` for extra model inputs every step and merges them over the defaults
(``model_runner.execute_model``: ``{"positions": input_batch.positions, ...,
**model_state.prepare_inputs(...)}``), while the KV slot mapping and attention metadata keep using the
runner's own contiguous positions. That is exactly "compact KV, original RoPE positions".

:func:`install` wraps ``vllm.v1.worker.gpu.model_states.resolve_model_state_cls``: when the model would
get the plain ``DefaultModelState`` (1-D RoPE decoders), it gets :func:`state_class` of it instead, a
subclass that

* reads each new request's map from ``new_req_data.sampling_params.extra_args`` in ``add_request`` and
  stages it for the request's slot (``req_index``); ``remove_request`` clears the slot;
* writes staged maps to device tensors in ``apply_staged_writes`` (:class:`~.torchmap.RunTable`);
* in ``prepare_inputs`` copies the runner's positions into a persistent buffer and, when any pruned
  request is live, rewrites them in pure torch (no host sync); the buffer is also what
  ``prepare_dummy_inputs`` hands to CUDA-graph capture, so FULL and piecewise graphs replay from it.

Models that bring their own ``ModelState`` (``get_model_state_cls``), M-RoPE, hybrid, encoder-decoder and
sliding-window models are left alone and reported as unsupported.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast

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
from specprefill.vllm_plugin.torchmap import RunTable

__all__ = [
    "HOOK_POINT",
    "SpecPrefillStateMixin",
    "install",
    "installed",
    "runner_status",
    "state_class",
    "uninstall",
]

logger = logging.getLogger("specprefill.vllm_plugin")

HOOK_POINT = "vllm.v1.worker.gpu.model_states.resolve_model_state_cls"
_MARK = HOOK_MARK
_CLASSES: dict[type, type] = {}


class SpecPrefillStateMixin:
    """Position restoration on top of a vLLM ``ModelState`` (mixed in before it by :func:`state_class`).

    Only the methods below are touched; every one calls the base class first, so prompt embeddings,
    multimodal inputs and the base's own attention metadata keep working.
    """

    specprefill_supported: bool
    specprefill_reason: str | None

    def __init__(self, vllm_config: Any, model: Any, encoder_cache: Any, device: Any) -> None:
        import torch

        base = cast(Any, super())
        base.__init__(vllm_config, model, encoder_cache, device)
        self.specprefill_reason = unsupported_reason(vllm_config)
        speculative = getattr(vllm_config, "speculative_config", None)
        if self.specprefill_reason is None and speculative is not None:
            logger.warning(
                "specprefill: speculative decoding is on; its drafter sees KV-index positions, so acceptance of "
                "pruned requests may drop (outputs stay exact)"
            )
        self.specprefill_supported = self.specprefill_reason is None
        if not self.specprefill_supported:
            logger.warning("specprefill: position restoration is off for this engine: %s", self.specprefill_reason)
        scheduler_config = vllm_config.scheduler_config
        model_config = vllm_config.model_config
        max_tokens = int(scheduler_config.max_num_batched_tokens)
        self._sp_max_model_len = int(model_config.max_model_len)
        self._sp_table = RunTable(
            num_slots=int(scheduler_config.max_num_seqs),
            max_tokens=max_tokens,
            device=device,
            max_position=self._sp_max_model_len - 1,
        )
        self._sp_positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._sp_slot_of: dict[str, int] = {}
        self.specprefill_steps_rewritten = 0

    # --- request lifecycle ------------------------------------------------------------------------
    def add_request(self, req_index: int, new_req_data: Any) -> None:
        """Stage the new request's position map (or identity) for its slot."""
        cast(Any, super()).add_request(req_index, new_req_data)
        req_id = str(new_req_data.req_id)
        pmap = map_for_request(
            req_id,
            getattr(new_req_data, "sampling_params", None),
            max_model_len=self._sp_max_model_len,
            unsupported=self.specprefill_reason,
            prompt_len=prompt_length(new_req_data),
        )
        self._sp_slot_of[req_id] = req_index
        self._sp_table.stage(req_index, pmap)

    def remove_request(self, req_id: str) -> None:
        """Clear the slot of a finished or preempted request."""
        cast(Any, super()).remove_request(req_id)
        slot = self._sp_slot_of.pop(str(req_id), None)
        if slot is not None:
            self._sp_table.stage(slot, None)

    def apply_staged_writes(self) -> None:
        """Write staged maps to the device tables."""
        cast(Any, super()).apply_staged_writes()
        self._sp_table.commit()

    # --- inputs -----------------------------------------------------------------------------------
    def prepare_inputs(self, input_batch: Any, req_states: Any) -> dict[str, Any]:
        """The base's inputs plus ``positions`` from the persistent buffer (restored where needed)."""
        inputs = dict(cast(Any, super()).prepare_inputs(input_batch, req_states))
        if "positions" in inputs:  # the base supplies its own (M-RoPE): not ours to touch
            return inputs
        self._sp_table.commit()  # removals are not always followed by apply_staged_writes
        padded = int(input_batch.num_tokens_after_padding)
        n = int(input_batch.num_tokens)
        out = self._sp_positions[:padded]
        source = input_batch.positions[:padded]
        out.copy_(source)
        if self._sp_table.active and n > 0:
            num_reqs = int(input_batch.num_reqs)
            out[:n] = self._sp_table.restore_batch(
                source[:n], input_batch.idx_mapping, input_batch.query_start_loc, num_reqs
            )
            self.specprefill_steps_rewritten += 1
        inputs["positions"] = out
        return inputs

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        """Dummy inputs for warm-up and CUDA-graph capture, with positions from the persistent buffer."""
        inputs = dict(cast(Any, super()).prepare_dummy_inputs(num_reqs, num_tokens))
        inputs.setdefault("positions", self._sp_positions[:num_tokens])
        return inputs


def state_class(base: type) -> type:
    """The position-restoring subclass of a ``ModelState`` class (created once per base)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"SpecPrefill{base.__name__}", (SpecPrefillStateMixin, base), {"__module__": __name__})
        _CLASSES[base] = cls
    return cls


def _module() -> Any:
    try:
        import vllm.v1.worker.gpu.model_states as module
    except ImportError as exc:
        raise VLLMPluginError(
            f"specprefill: cannot import the Model Runner V2 model states ({exc}); hook point {HOOK_POINT} is missing"
        ) from exc
    return module


def _default_state() -> type:
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    return cast(type, DefaultModelState)


def installed() -> bool:
    """Whether the V2 hook is in place in this process."""
    return hook_installed(_module, "resolve_model_state_cls")


def install() -> None:
    """Wrap ``resolve_model_state_cls`` so plain decoders get the position-restoring state (idempotent).

    Raises:
        VLLMPluginError: The hook point does not exist in this vLLM version.

    """
    module = _module()
    original = getattr(module, "resolve_model_state_cls", None)
    try:
        default = _default_state()
    except ImportError as exc:
        raise VLLMPluginError(f"specprefill: DefaultModelState is missing ({exc}); the MRV2 API changed") from exc
    required = ("add_request", "remove_request", "apply_staged_writes", "prepare_inputs", "prepare_dummy_inputs")
    missing = [name for name in required if not callable(getattr(default, name, None))]
    if original is None or not callable(original) or missing or not hasattr(module, "init_model_state"):
        raise VLLMPluginError(
            f"specprefill: hook point {HOOK_POINT} (or ModelState methods {missing}) is missing in this vLLM; "
            "Model Runner V2 changed. Use a supported vLLM (see specprefill.vllm_plugin.SUPPORTED_VLLM) or set "
            "SPECPREFILL_VLLM_PLUGIN=0"
        )
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def resolve_model_state_cls(vllm_config: Any, model: Any) -> Any:
        cls = original(vllm_config, model)
        if cls is default:
            return state_class(cls)
        if not isinstance(cls, type) or not issubclass(cls, SpecPrefillStateMixin):
            logger.warning(
                "specprefill: %s uses its own ModelState %s; position restoration is off for this engine",
                getattr(getattr(vllm_config, "model_config", None), "model", "the model"),
                getattr(cls, "__name__", cls),
            )
        return cls

    set_hook(module, "resolve_model_state_cls", resolve_model_state_cls)


def uninstall() -> None:
    """Restore the original ``resolve_model_state_cls`` (engines started afterwards are stock again)."""
    remove_hook(_module, "resolve_model_state_cls")


def runner_status(runner: Any) -> dict[str, Any]:
    """Whether this V2 runner restores positions, and why not."""
    state = getattr(runner, "model_state", None)
    if isinstance(state, SpecPrefillStateMixin):
        return {
            "runner": "mrv2",
            "active": state.specprefill_supported,
            "reason": state.specprefill_reason,
            "hook": HOOK_POINT,
            "model_state": type(state).__name__,
            "pruned_requests": len(state._sp_table),
            "steps_rewritten": state.specprefill_steps_rewritten,
        }
    name = type(state).__name__ if state is not None else None
    reason = (
        f"{HOOK_POINT} is not wrapped (was the plugin enabled before the engine started?)"
        if not installed()
        else f"the model uses ModelState {name}, which specprefill does not wrap"
    )
    return {"runner": "mrv2", "active": False, "reason": reason, "hook": HOOK_POINT, "model_state": name}
