"""Which floating-point dtype runs fastest, exactly enough, on a device.

bfloat16 halves memory traffic and is what speculators are trained and evaluated in, but only hardware
with fast bf16 matmuls runs it fast: on a CPU without AVX512-BF16 / AMX (e.g. AVX2 only) bf16 matmuls
are emulated and about four times SLOWER than float32, and with AVX512-BF16 alone still slower. So the
default is decided per device from measured capabilities, never fixed. The decision itself is a pure
function of those facts (:func:`choose_dtype`) so both branches are testable on any machine.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

__all__ = ["DtypeName", "choose_dtype", "cpu_flags", "cpu_has_native_bf16", "device_facts"]

DtypeName = Literal["bfloat16", "float32"]

_X86_BF16_FLAGS = frozenset({"amx_bf16"})
"""/proc/cpuinfo ``flags`` that mean bf16 matmuls run faster than float32 (AMX tiles: Sapphire Rapids+).

AVX512-BF16 alone (Cooper Lake, Zen 4) has bf16 dot-product instructions, but torch 2.13's CPU prefill of
SmolLM2-135M measured 1.15-1.5x SLOWER in bf16 than in float32 on such a 2-core machine (``specprefill bench
overhead``'s dtype table), so it does not count."""

_ARM_BF16_FEATURE = "bf16"
"""/proc/cpuinfo ``Features`` entry of aarch64 CPUs with BFDOT/BFMMLA (Graviton 3+, Neoverse V1+)."""


def cpu_has_native_bf16(capability: str, flags: Collection[str]) -> bool:
    """Whether a CPU runs bfloat16 matmuls natively and faster than float32, from torch's capability and flags.

    Args:
        capability: ``torch.backends.cpu.get_cpu_capability()``, e.g. ``"AVX2"``, ``"AVX512"``,
            ``"SVE256"``, ``"DEFAULT"``. On x86 the AVX-512 kernels must be active (an ``ATEN_CPU_CAPABILITY``
            override to AVX2 makes bf16 element-wise work emulated again).
        flags: CPU feature flags (``/proc/cpuinfo`` ``flags`` on x86, ``Features`` on aarch64).

    Returns:
        True for x86 with AMX-BF16 and AVX-512 kernels, or aarch64 with the bf16 extension.

    """
    names = {flag.lower() for flag in flags}
    if names & _X86_BF16_FLAGS:
        return capability.upper().startswith("AVX512")
    return _ARM_BF16_FEATURE in names


def choose_dtype(
    device_type: str, *, cuda_bf16: bool = False, cpu_capability: str = "", cpu_flag_set: Collection[str] = ()
) -> DtypeName:
    """The fastest exact-enough dtype for a device, from its capabilities.

    Args:
        device_type: ``"cpu"``, ``"cuda"`` or another torch device type.
        cuda_bf16: The CUDA/ROCm device computes bf16 natively (compute capability 8.0+).
        cpu_capability: torch's CPU capability string (see :func:`cpu_has_native_bf16`).
        cpu_flag_set: The CPU's feature flags.

    Returns:
        ``"bfloat16"`` on CUDA with bf16 support and on CPUs with native bf16, ``"float32"`` otherwise
        (float16 is never chosen: its range overflows in some models' activations).

    """
    if device_type == "cuda":
        return "bfloat16" if cuda_bf16 else "float32"
    if device_type == "cpu":
        return "bfloat16" if cpu_has_native_bf16(cpu_capability, cpu_flag_set) else "float32"
    return "float32"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """Feature flags of the first CPU listed in ``/proc/cpuinfo`` (empty where it does not exist).

    Args:
        cpuinfo: The file's text; read from ``/proc/cpuinfo`` when omitted.

    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def device_facts(torch: Any, device: str) -> dict[str, Any]:
    """Measure what :func:`choose_dtype` needs about ``device`` (its keyword arguments plus ``device_type``)."""
    dev = torch.device(device)
    facts: dict[str, Any] = {"device_type": dev.type}
    if dev.type == "cuda":
        facts["cuda_bf16"] = _cuda_bf16(torch, dev)
    elif dev.type == "cpu":
        facts["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        facts["cpu_flag_set"] = cpu_flags()
    return facts


def _cuda_bf16(torch: Any, dev: Any) -> bool:
    if not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, _minor = torch.cuda.get_device_capability(index)
    return bool(major >= 8)
