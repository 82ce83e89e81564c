"""Front-end hook: position maps are checked, and cache salts enforced, where vLLM accepts a request.

:func:`install` wraps ``InputProcessor.process_inputs``, which every request passes through in the
process that accepts it (the OpenAI API server, ``AsyncLLM``, ``vllm.LLM``) before it is cloned, sent to the
engine core and scheduled. For each request the wrapper:

1. bounds-checks the client's position map with :func:`~.guard.check_request_map` BEFORE vLLM copies the
   sampling parameters (the copy is proportional to the map's size). A rejected map raises
   :class:`~.guard.PositionMapRejectedError`, raised as a subclass that is also vLLM's
   ``VLLMValidationError`` (a plain ``ValueError`` would become an HTTP 500 ``EngineGenerateError`` in
   ``AsyncLLM.generate``), so vLLM's OpenAI server answers with HTTP 400 and the broken rule, and the
   request never runs at compacted positions that the client would read as ``positions="original"``;
2. sets the request's ``cache_salt`` to :func:`~.guard.enforced_salt`: derived from the map for a request
   with positions, moved out of that namespace for one without. The client's salt is never trusted alone.

Importing this module does not import vLLM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from specprefill.vllm_plugin.common import VLLMPluginError
from specprefill.vllm_plugin.guard import (
    PositionMapRejectedError,
    check_request_map,
    enforced_salt,
    has_position_keys,
)

__all__ = ["HOOK_POINTS", "guard_request", "install", "installed", "uninstall"]

HOOK_POINTS = (
    ("vllm.v1.engine.input_processor", "InputProcessor"),
    ("vllm.v1.engine.processor", "Processor"),
)
"""Where vLLM turns a prompt into an ``EngineCoreRequest`` (the module was renamed across releases)."""

_METHOD = "process_inputs"
_MARK = "__specprefill_hook__"


def _processor_class() -> Any:
    import importlib

    for module_name, class_name in HOOK_POINTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None and callable(getattr(cls, _METHOD, None)):
            return cls
    names = " or ".join(f"{m}.{c}.{_METHOD}" for m, c in HOOK_POINTS)
    raise VLLMPluginError(
        f"specprefill: hook point {names} is missing in this vLLM; position maps cannot be checked where "
        "requests arrive. Use a supported vLLM (see specprefill.vllm_plugin.SUPPORTED_VLLM)"
    )


def _prompt_length(prompt: Any) -> int | None:
    """Token count of a prompt that is already token ids (O(1)); None for text, embeddings and others."""
    if isinstance(prompt, dict):
        ids = prompt.get("prompt_token_ids")
        if isinstance(ids, list):
            return len(ids)
    return None


@functools.cache
def _client_error_class() -> type[PositionMapRejectedError]:
    """``PositionMapRejectedError`` that vLLM's servers also map to HTTP 400 (plain class without vLLM)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:
        return PositionMapRejectedError

    class RejectedByVLLMError(VLLMValidationError, PositionMapRejectedError):  # type: ignore[misc]
        """A rejected position map, as vLLM's own request-validation error."""

    return RejectedByVLLMError


def _rejected(exc: PositionMapRejectedError) -> PositionMapRejectedError:
    cls = _client_error_class()
    if cls is PositionMapRejectedError:
        return exc
    return cls(str(exc), parameter="vllm_xargs")  # type: ignore[call-arg]


def _request_of(result: Any) -> Any:
    """The ``EngineCoreRequest`` in ``process_inputs``' result (older releases return ``(prompt, request)``)."""
    return result[-1] if isinstance(result, tuple) else result


def guard_request(processor: Any, prompt: Any, params: Any, call: Callable[[], Any]) -> Any:
    """Run ``call()`` (the original ``process_inputs``) with the position map checked and the salt enforced.

    Args:
        processor: The vLLM input processor (its ``model_config.max_model_len`` bounds the map).
        prompt: The prompt as passed to ``process_inputs``.
        params: The request's ``SamplingParams`` (or ``PoolingParams``).
        call: Zero-argument callable running the original method.

    Returns:
        What ``call()`` returned, with the request's ``cache_salt`` replaced.

    Raises:
        PositionMapRejectedError: The map breaks a bound; with vLLM installed it is also a
            ``VLLMValidationError`` (HTTP 400).

    """
    try:
        return _guarded(processor, prompt, params, call)
    except PositionMapRejectedError as exc:
        raise _rejected(exc) from None


def _guarded(processor: Any, prompt: Any, params: Any, call: Callable[[], Any]) -> Any:
    extra = getattr(params, "extra_args", None)
    max_model_len = getattr(getattr(processor, "model_config", None), "max_model_len", None)
    pmap = None
    if has_position_keys(extra):
        pmap = check_request_map(extra, prompt_len=_prompt_length(prompt), max_model_len=max_model_len)
    result = call()
    request = _request_of(result)
    if pmap is not None:
        ids = getattr(request, "prompt_token_ids", None)
        if ids is None:
            raise PositionMapRejectedError("specprefill position maps need a token-id prompt, not embeddings")
        pmap = check_request_map(extra, prompt_len=len(ids), max_model_len=max_model_len)
    request.cache_salt = enforced_salt(pmap, getattr(request, "cache_salt", None))
    return result


def installed() -> bool:
    """Whether the front-end hook is in place in this process."""
    try:
        cls = _processor_class()
    except VLLMPluginError:
        return False
    return bool(getattr(getattr(cls, _METHOD), _MARK, False))


def install() -> None:
    """Wrap ``process_inputs`` of vLLM's input processor (idempotent).

    Raises:
        VLLMPluginError: The hook point does not exist in this vLLM version.

    """
    cls = _processor_class()
    original = getattr(cls, _METHOD)
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def process_inputs(self: Any, request_id: Any, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        return guard_request(self, prompt, params, lambda: original(self, request_id, prompt, params, *args, **kwargs))

    setattr(process_inputs, _MARK, True)
    setattr(cls, _METHOD, process_inputs)


def uninstall() -> None:
    """Restore the original ``process_inputs``."""
    cls = _processor_class()
    current = getattr(cls, _METHOD)
    if getattr(current, _MARK, False):
        setattr(cls, _METHOD, current.__wrapped__)
