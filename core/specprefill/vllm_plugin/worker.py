"""Worker extension: lets the front end ask every vLLM worker whether positions are restored there.

Pass ``worker_extension_cls=`` :data:`specprefill.vllm_plugin.WORKER_EXTENSION` to the engine (the
:class:`~specprefill.backends.vllm.VLLMBackend` does), then ``llm.collective_rpc("specprefill_status")``
returns one status dict per worker (tensor-parallel ranks included).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SpecPrefillWorkerExtension", "runner_status"]


def runner_status(runner: Any) -> dict[str, Any]:
    """Status of one model runner: which runner it is, whether positions are restored, and why not."""
    if runner is None:
        return {"runner": None, "active": False, "reason": "the worker has no model runner yet"}
    if hasattr(runner, "model_state"):
        from specprefill.vllm_plugin import mrv2

        return mrv2.runner_status(runner)
    from specprefill.vllm_plugin import mrv1

    try:
        runner_cls = mrv1._runner_class()
    except Exception as exc:  # reported, not raised
        return {"runner": type(runner).__name__, "active": False, "reason": str(exc)}
    if isinstance(runner, runner_cls):
        return mrv1.runner_status(runner)
    return {
        "runner": type(runner).__name__,
        "active": False,
        "reason": f"unknown model runner {type(runner).__module__}.{type(runner).__name__}",
    }


class SpecPrefillWorkerExtension:
    """Mixed into the vLLM worker class by ``worker_extension_cls``."""

    def specprefill_status(self) -> dict[str, Any]:
        """The position-restoration status of this worker (see :func:`runner_status`)."""
        from specprefill.vllm_plugin import process_status

        status = runner_status(getattr(self, "model_runner", None))
        status["plugin"] = process_status()
        rank = getattr(self, "rank", None)
        status["rank"] = int(rank) if isinstance(rank, int) else None
        return status
