"""Model resolution and precision: the per-device default dtype, the exact dense GGUF cache (no model loaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from specprefill.errors import ModelLoadError
from specprefill.speculator.precision import choose_dtype, cpu_flags, cpu_has_native_bf16

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason='needs torch: pip install "specprefill[hf]"')

X86_AVX2 = frozenset("fpu sse sse2 avx avx2 fma f16c".split())
X86_AVX512 = X86_AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


# ---------------------------------------------------------------- the decision, on injected facts


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX2", X86_AVX2, "float32"),  # AVX2-only: emulated bf16 is ~4x slower
        ("AVX512", X86_AVX512, "float32"),  # AVX-512 without the BF16 extension
        ("AVX512", X86_AVX512 | {"avx512_bf16"}, "float32"),  # Cooper Lake / Zen 4: bf16 prefill measured slower
        ("AVX512", X86_AVX512 | {"amx_bf16", "amx_tile"}, "bfloat16"),  # Sapphire Rapids
        ("AVX2", X86_AVX512 | {"amx_bf16"}, "float32"),  # ATEN_CPU_CAPABILITY forced down to AVX2
        ("DEFAULT", frozenset({"fp", "asimd", "bf16", "sve"}), "bfloat16"),  # aarch64 with BFDOT
        ("DEFAULT", frozenset({"fp", "asimd"}), "float32"),  # aarch64 without it
        ("DEFAULT", frozenset(), "float32"),  # nothing known
    ],
)
def test_cpu_choice_follows_native_bf16(capability: str, flags: frozenset[str], expected: str) -> None:
    assert choose_dtype("cpu", cpu_capability=capability, cpu_flag_set=flags) == expected
    assert cpu_has_native_bf16(capability, flags) is (expected == "bfloat16")


def test_cpu_flags_are_case_insensitive() -> None:
    assert cpu_has_native_bf16("avx512", {"AMX_BF16"})


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_cuda_choice_follows_device_support(bf16: bool, expected: str) -> None:
    assert choose_dtype("cuda", cuda_bf16=bf16) == expected


def test_other_devices_get_float32() -> None:
    assert choose_dtype("mps") == "float32"
    assert choose_dtype("xpu", cuda_bf16=True) == "float32"


def test_cpu_flags_parses_x86_and_arm_cpuinfo() -> None:
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_flags("") == frozenset()


# ---------------------------------------------------------------- default_dtype wiring (torch needed)


@needs_torch
def test_default_dtype_on_an_avx2_cpu_is_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import specprefill.speculator.precision as precision
    from specprefill.speculator.loading import default_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(precision, "cpu_flags", lambda: X86_AVX2)
    assert default_dtype("cpu") is torch.float32


@needs_torch
def test_default_dtype_on_a_native_bf16_cpu_is_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import specprefill.speculator.precision as precision
    from specprefill.speculator.loading import default_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(precision, "cpu_flags", lambda: X86_AVX512 | {"amx_bf16"})
    assert default_dtype("cpu") is torch.bfloat16


@needs_torch
def test_default_dtype_matches_this_machine() -> None:
    import torch

    from specprefill.speculator.loading import default_dtype

    native = cpu_has_native_bf16(torch.backends.cpu.get_cpu_capability(), cpu_flags())
    assert default_dtype("cpu") is (torch.bfloat16 if native else torch.float32)


@needs_torch
@pytest.mark.parametrize(("capability", "expected"), [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float32")])
def test_default_dtype_on_cuda_reads_the_compute_capability(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    import torch

    from specprefill.speculator.loading import default_dtype

    seen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: seen.append(index) or capability)
    assert default_dtype("cuda:1") is getattr(torch, expected)
    assert seen == [1]


@needs_torch
def test_default_dtype_without_cuda_is_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from specprefill.speculator.loading import default_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_dtype("cuda") is torch.float32


@needs_torch
def test_dtype_names_resolve_and_bad_ones_say_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import specprefill.speculator.loading as models

    monkeypatch.setattr(models, "default_dtype", lambda device: ("picked", device))
    assert models._torch_dtype(torch, None, "cuda:0") == ("picked", "cuda:0")
    assert models._torch_dtype(torch, "float32", "cpu") is torch.float32
    assert models._torch_dtype(torch, "torch.bfloat16", "cpu") is torch.bfloat16
    assert models._torch_dtype(torch, torch.float16, "cpu") is torch.float16
    for bad in ("int8", "nope", "__name__"):
        with pytest.raises(ModelLoadError, match="use 'float32'"):
            models._torch_dtype(torch, bad, "cpu")


# ---------------------------------------------------------------- the exact dense cache


@needs_torch
def test_exact_storage_keeps_float32_unless_float16_is_lossless() -> None:
    import torch

    from specprefill.speculator.loading import exact_storage

    halves = torch.tensor([0.5, -2.0, 1024.0, 0.0009765625])
    assert exact_storage(torch, halves).dtype is torch.float16
    assert torch.equal(exact_storage(torch, halves).float(), halves)
    for values in ([1.0, 1 / 3], [70000.0], [1e-8], [float("nan")]):  # rounding, overflow, underflow, NaN
        kept = exact_storage(torch, torch.tensor(values))
        assert kept.dtype is torch.float32
    bf16 = torch.tensor([1.0], dtype=torch.bfloat16)
    assert exact_storage(torch, bf16) is bf16


def test_dense_copy_dir_is_versioned_and_keyed_by_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from specprefill.speculator.loading import DENSE_FORMAT, dense_copy_dir

    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    first = dense_copy_dir(gguf, label="m")
    assert first.parent == tmp_path / "cache" / DENSE_FORMAT
    assert first.name.startswith("m-")
    gguf.write_bytes(b"x" * 11)
    assert dense_copy_dir(gguf, label="m") != first


def test_existing_dense_copy_is_reused_without_converting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import specprefill.speculator.loading as models

    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf")
    target = models.dense_copy_dir(gguf, label="m")
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")

    def no_import(name: str, **_: Any) -> Any:
        raise AssertionError(f"converted again (imported {name})")

    monkeypatch.setattr(models, "require", no_import)
    assert models.resolve_model_dir(gguf) == str(target)


def test_an_old_format_copy_is_not_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import specprefill.speculator.loading as models

    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf")
    old = tmp_path / models.dense_copy_dir(gguf, label="m").name  # the pre-v2 layout: directly under the cache
    old.mkdir()
    (old / "config.json").write_text("{}")
    (old / "model.safetensors").write_bytes(b"")
    converted: list[str] = []

    def record(name: str, **_: Any) -> Any:
        converted.append(name)
        raise ModelLoadError("stop here")

    monkeypatch.setattr(models, "require", record)
    with pytest.raises(ModelLoadError, match="stop here"):
        models.resolve_model_dir(gguf)
    assert converted == ["torch"]


def test_cached_dense_dir_finds_only_a_finished_current_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import specprefill.speculator.loading as models

    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda name: gguf)
    assert models.cached_dense_dir("smollm2") is None
    target = models.dense_copy_dir(gguf, label="smollm2-135m")
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert models.cached_dense_dir("smollm2") is None  # no weights yet
    (target / "model.safetensors").write_bytes(b"")
    assert models.cached_dense_dir("smollm2") == target
    assert models.cached_dense_dir("gemma3-270m") is None  # pieces never assembled here
    with pytest.raises(KeyError):
        models.cached_dense_dir("not-a-model")
