"""Checks shared by both model-runner hooks (duck-typed: no vLLM import at module level)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from specprefill.errors import BackendError
from specprefill.vllm_plugin.guard import check_request_map
from specprefill.vllm_plugin.positions import PositionMap, PositionSpecError

__all__ = [
    "HOOK_MARK",
    "VLLMPluginError",
    "hook_installed",
    "map_for_request",
    "prompt_length",
    "remove_hook",
    "set_hook",
    "unsupported_reason",
]

logger = logging.getLogger("specprefill.vllm_plugin")

HOOK_MARK = "__specprefill_hook__"
"""Attribute set on the functions the hooks install, so installing twice and uninstalling are safe."""

_MAX_LOGGED = 20
_logged = 0


class VLLMPluginError(BackendError):
    """The vLLM position plugin cannot work here (hook point missing, unsupported model, plugin not loaded)."""


def hook_installed(owner: Callable[[], Any], name: str) -> bool:
    """Whether attribute ``name`` of ``owner()`` is our hook (False when the hook point cannot be imported)."""
    try:
        target = owner()
    except VLLMPluginError:
        return False
    return bool(getattr(getattr(target, name, None), HOOK_MARK, False))


def set_hook(target: Any, name: str, hook: Callable[..., Any]) -> None:
    """Mark ``hook`` as ours and put it in place of attribute ``name`` of ``target``."""
    setattr(hook, HOOK_MARK, True)
    setattr(target, name, hook)


def remove_hook(owner: Callable[[], Any], name: str) -> None:
    """Put back the function our hook wraps at attribute ``name`` of ``owner()`` (nothing when not hooked)."""
    target = owner()
    current = getattr(target, name, None)
    if getattr(current, HOOK_MARK, False):
        setattr(target, name, current.__wrapped__)  # type: ignore[union-attr]


def unsupported_reason(vllm_config: Any) -> str | None:
    """Why this engine's model cannot take restored positions, or None when it can.

    Positions are rewritten for plain 1-D RoPE decoders with full attention only. Sliding-window and
    chunked-local layers measure their window in KV slots, M-RoPE models take 3-D positions, and hybrid,
    attention-free and encoder-decoder models keep other state, so all of these are refused.
    """
    model_config = getattr(vllm_config, "model_config", None)
    if model_config is None:
        return "the engine has no model config"

    def flag(name: str) -> bool:
        try:
            return bool(getattr(model_config, name, False))
        except Exception:  # a property that cannot answer counts as "no"
            return False

    model = getattr(model_config, "model", "?")
    if flag("uses_mrope"):
        return f"{model} uses M-RoPE (multi-dimensional positions)"
    if flag("is_encoder_decoder"):
        return f"{model} is an encoder-decoder model"
    if flag("is_hybrid") or flag("is_attention_free"):
        return f"{model} is a hybrid or attention-free model"
    try:
        window = model_config.get_sliding_window()
    except Exception:
        window = None
    if window:
        return (
            f"{model} has sliding-window attention (window {window}); its window would be measured over kept "
            "tokens, not original positions"
        )
    return None


def _log_error(message: str, *args: Any) -> None:
    global _logged
    if _logged < _MAX_LOGGED:
        _logged += 1
        logger.error(message, *args)


def prompt_length(new_request: Any) -> int | None:
    """Prompt token count of a scheduler ``NewRequestData`` (None when it carries embeddings instead)."""
    ids = getattr(new_request, "prompt_token_ids", None)
    return None if ids is None else len(ids)


def map_for_request(
    req_id: str,
    sampling_params: Any,
    *,
    max_model_len: int | None,
    unsupported: str | None,
    prompt_len: int | None = None,
) -> PositionMap | None:
    """The position map a new request asks for, or None (ordinary request, or one that cannot be honoured).

    The map is bounds-checked against ``prompt_len`` (which, for a request resumed after preemption, may
    include generated tokens, so the kept count must be at most it) and ``max_model_len`` before its runs are read
    (:func:`~specprefill.vllm_plugin.guard.check_request_map`). Never raises: the engine must not die because
    one request sent malformed ``extra_args``. Problems are logged as errors and the request runs at vLLM's
    own (compacted) positions; the API-server guard (:mod:`.server`) refuses such requests with a 400 reply
    before they get here.
    """
    extra = getattr(sampling_params, "extra_args", None) if sampling_params is not None else None
    if not extra:
        return None
    try:
        pmap = check_request_map(extra, prompt_len=prompt_len, max_model_len=max_model_len, prompt_may_grow=True)
    except PositionSpecError as exc:
        _log_error("specprefill: request %s has malformed position extra_args (%s); not restored", req_id, exc)
        return None
    if pmap is None or pmap.is_identity:
        return None
    if unsupported is not None:
        _log_error("specprefill: request %s carries original positions but %s; not restored", req_id, unsupported)
        return None
    max_tokens = getattr(sampling_params, "max_tokens", None)
    if max_model_len is not None and max_tokens is not None and pmap.original_length + int(max_tokens) > max_model_len:
        logger.warning(
            "specprefill: request %s spans %d original positions plus max_tokens=%d > max_model_len=%d; positions "
            "past max_model_len-1 are clamped (set max_tokens explicitly)",
            req_id,
            pmap.original_length,
            int(max_tokens),
            max_model_len,
        )
    return pmap
