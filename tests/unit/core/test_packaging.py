"""Packaging: one distribution, three import roots, a light ``import specprefill``, a correct wheel."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

HEAVY = ["torch", "transformers", "vllm", "langchain_core", "llama_index.core", "openai", "tiktoken", "gguf"]

IMPORT_ROOTS = [
    "specprefill",
    "langchain_specprefill",
    "llama_index.postprocessor.specprefill",
    "llama_index.llms.specprefill",
]


def _run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_specprefill_is_light() -> None:
    code = (
        "import json, sys\n"
        "import specprefill\n"
        "from specprefill import SpecPrefillConfig, select_chunks, PruneResult, Speculator\n"
        "SpecPrefillConfig(keep_rate=0.2)\n"
        "select_chunks([0.1, 0.2, 0.3], keep_rate=0.5, chunk_size=1)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert json.loads(_run(code)) == []


@pytest.mark.parametrize("root", IMPORT_ROOTS)
def test_import_roots_exist(root: str) -> None:
    module = importlib.import_module(root)
    assert module.__file__ is not None, f"{root} resolved as a bare namespace, not a package"
    assert isinstance(module.__all__, list)
    assert module.__doc__


def test_llama_index_namespace_dirs_have_no_init() -> None:
    base = ROOT / "integrations" / "llama_index"
    for folder in (base, base / "postprocessor", base / "llms"):
        assert folder.is_dir()
        assert not (folder / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace"
    for folder in (base / "postprocessor" / "specprefill", base / "llms" / "specprefill"):
        assert (folder / "__init__.py").is_file()


def test_typed_markers_present() -> None:
    assert (ROOT / "core" / "specprefill" / "py.typed").is_file()
    assert (ROOT / "integrations" / "langchain_specprefill" / "py.typed").is_file()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a clean copy of the sources (the work tree stays untouched)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("core", "integrations"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("specprefill\n")
    out = tmp / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("specprefill-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "specprefill/__init__.py",
        "specprefill/py.typed",
        "specprefill/scoring/select.py",
        "specprefill/speculator/head_profiles/smollm2-135m.json",
        "specprefill/cli/__init__.py",
        "specprefill/bench/overhead.py",
        "langchain_specprefill/__init__.py",
        "langchain_specprefill/py.typed",
        "llama_index/postprocessor/specprefill/__init__.py",
        "llama_index/llms/specprefill/__init__.py",
    ):
        assert required in names, required
    for forbidden in (
        "llama_index/__init__.py",
        "llama_index/postprocessor/__init__.py",
        "llama_index/llms/__init__.py",
    ):
        assert forbidden not in names, forbidden
    assert not any(n.startswith(("tests/", "examples/", "core/", "integrations/", "benchmarks/")) for n in names)
    assert not any(n.startswith("specprefill/bench/") and n.endswith(("quality.py", "tasks.py")) for n in names)
    assert not any("__pycache__" in n for n in names)


def test_wheel_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(info).decode()
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = {
        r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for r in requires
        if "extra ==" not in r
    }
    assert unconditional <= {"numpy", "pydantic", "tqdm"}, unconditional
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"hf", "vllm", "langchain", "llama-index", "all", "dev"} <= extras
    assert "specprefill = specprefill.cli:main" in entry_points


def test_wheel_roots_import_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """Unpack the wheel and import every root from it, with the editable install out of the way."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    site_packages = sysconfig.get_paths()["purelib"]
    # -S skips site (and with it the editable finder's .pth); site-packages is added back as a plain path
    code = (
        "import sys, json, importlib\n"
        f"sys.path[:0] = [{str(target)!r}, {site_packages!r}]\n"
        f"roots = {IMPORT_ROOTS!r}\n"
        "files = {r: importlib.import_module(r).__file__ for r in roots}\n"
        "print(json.dumps(files))\n"
    )
    files = json.loads(_run(code, "-S"))
    for root, file in files.items():
        assert file is not None and file.startswith(str(target)), (root, file)
