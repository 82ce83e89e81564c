"""``specprefill info``: version, installed extras, embedded models and the cache folder."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from typing import Any

from specprefill.cli import options
from specprefill.cli.errors import EXIT_OK
from specprefill.cli.output import write_json
from specprefill.errors import ModelLoadError

__all__ = ["EXTRAS", "add_parser", "collect", "default_dtypes", "embedded_model_status", "run", "version"]

EXTRAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hf", ("torch", "transformers", "accelerate", "gguf", "safetensors")),
    ("openai", ("openai", "tiktoken")),
    ("vllm", ("vllm",)),
    ("langchain", ("langchain_specprefill", "langchain_core")),
    (
        "llama-index",
        (
            "llama_index.postprocessor.specprefill",
            "llama_index.llms.specprefill",
            "llama_index.embeddings.specprefill",
            "llama_index.core",
        ),
    ),
)
"""Each optional extra and the modules that make it work (the integrations are their own distributions)."""

_DISTRIBUTION = {
    "langchain_core": "langchain-core",
    "langchain_specprefill": "langchain-specprefill",
    "llama_index.core": "llama-index-core",
    "llama_index.postprocessor.specprefill": "llama-index-postprocessor-specprefill",
    "llama_index.llms.specprefill": "llama-index-llms-specprefill",
    "llama_index.embeddings.specprefill": "llama-index-embeddings-specprefill",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``info`` under the top-level subparsers."""
    parser = options.add_command(subparsers, "info", run)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def version() -> str:
    """The installed specprefill version."""
    from specprefill import __version__

    return __version__


def _installed_version(module: str) -> str | None:
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    dist = _DISTRIBUTION.get(module, module.split(".")[0])
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def embedded_model_status(name: str) -> dict[str, Any]:
    """Whether an embedded model is installed and where its weights are, found as loading finds them.

    Uses :func:`specprefill.speculator.embedded.embedded_gguf_path`, so models shipped in several packages are joined
    (once, into the cache) and checked exactly as a load would.
    """
    from specprefill.speculator.embedded import EMBEDDED_MODELS, embedded_gguf_path
    from specprefill.speculator.heads import profile_files
    from specprefill.speculator.loading import cached_dense_dir

    entry = EMBEDDED_MODELS[name]
    try:
        path: str | None = str(embedded_gguf_path(name))
        problem = None
    except ModelLoadError as exc:
        path, problem = None, str(exc)
    dense = cached_dense_dir(name)
    profiles = profile_files(name)
    return {
        "description": entry.description,
        "installed": path is not None,
        "path": path,
        "problem": problem,
        "dense_copy": str(dense) if dense is not None else None,
        "head_profile": str(profiles[0]) if profiles else None,
        "install": entry.pip_install,
    }


def default_dtypes() -> dict[str, str] | None:
    """The dtype ``dtype=None`` loads models in, per available device (None without torch or the chooser).

    Uses :func:`specprefill.speculator.loading.default_dtype`, the loader's own choice (bfloat16 only where the hardware
    runs it natively), and torch's CPU capability for context.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    from specprefill.speculator.loading import default_dtype

    out = {
        "cpu": str(default_dtype("cpu")).removeprefix("torch."),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(default_dtype("cuda")).removeprefix("torch.")
    return out


def collect() -> dict[str, Any]:
    """Everything ``info`` shows, as JSON-ready data."""
    from specprefill.speculator.embedded import EMBEDDED_MODELS, cache_dir

    extras = {extra: {m: _installed_version(m) for m in modules} for extra, modules in EXTRAS}
    return {
        "version": version(),
        "python": sys.version.split()[0],
        "extras": extras,
        "embedded_models": {name: embedded_model_status(name) for name in EMBEDDED_MODELS},
        "default_dtype": default_dtypes(),
        "cache_dir": str(cache_dir()),
    }


def run(args: argparse.Namespace) -> int:
    """Print what is installed (text, or one JSON object with ``--json``)."""
    payload = collect()
    if args.json:
        write_json(payload)
        return EXIT_OK
    lines = [f"specprefill {payload['version']} (python {payload['python']})", "", "extras:"]
    for extra, mods in payload["extras"].items():
        found = [v for v in mods.values() if v]
        state = "installed" if len(found) == len(mods) else ("partly installed" if found else "missing")
        detail = ", ".join(f"{m} {v}" if v else f"{m} -" for m, v in mods.items())
        lines.append(f"  {extra:<12} {state:<17} {detail}")
        if state != "installed":
            lines.append(f'  {"":<12} install: pip install "specprefill[{extra}]"')
    lines += ["", "embedded models:"]
    for name, m in payload["embedded_models"].items():
        lines.append(f"  {name:<12} {'installed' if m['installed'] else 'not installed'}: {m['description']}")
        if m["installed"]:
            lines.append(f"  {'':<12} weights: {m['path']}")
            lines.append(f"  {'':<12} dense copy: {m['dense_copy'] or '(made on first use, ~20 s)'}")
            calibrate = f"none: every head scores (calibrate: specprefill heads --speculator {name})"
            lines.append(f"  {'':<12} retrieval-head profile: {m['head_profile'] or calibrate}")
        else:
            lines.append(f"  {'':<12} {m['problem']}")
    dtypes = payload["default_dtype"]
    if dtypes:
        devices = ", ".join(f"{k} {v}" for k, v in dtypes.items() if k != "cpu_capability")
        lines += ["", f"default dtype (dtype=None): {devices}  (CPU kernels: {dtypes['cpu_capability']})"]
    lines += ["", f"cache dir: {payload['cache_dir']}  (set SPECPREFILL_CACHE_DIR to move it)"]
    print("\n".join(lines))
    return EXIT_OK
