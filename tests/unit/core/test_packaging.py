"""Packaging: the core distribution, a light ``import specprefill``, a correct wheel without the integrations.

The integrations are their own distributions (``integrations/``); ``tests/integration/packaging`` builds and
installs all of them.
"""

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
    "llama_index.embeddings.specprefill",
]
"""The core's and the integration distributions' import roots (all installed, editable, by ``make venv``)."""


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
    for kind in ("postprocessor", "llms", "embeddings"):
        base = ROOT / "integrations" / "llama-index" / kind / "llama_index"
        for folder in (base, base / kind):
            assert folder.is_dir()
            assert not (folder / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace"
        assert (base / kind / "specprefill" / "__init__.py").is_file()


def test_typed_markers_present() -> None:
    assert (ROOT / "core" / "specprefill" / "py.typed").is_file()
    assert (ROOT / "integrations" / "langchain" / "langchain_specprefill" / "py.typed").is_file()


def test_the_core_extras_name_the_integration_distributions() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {
        str(tomllib.loads(p.read_text())["project"]["name"]) for p in (ROOT / "integrations").rglob("pyproject.toml")
    }
    assert names == {
        "langchain-specprefill",
        "llama-index-postprocessor-specprefill",
        "llama-index-llms-specprefill",
        "llama-index-embeddings-specprefill",
    }
    named = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in extras["langchain"] + extras["llama-index"]}
    assert named == names
    # pip would look for them on PyPI: `make venv` installs them from integrations/ beside `-e ".[dev]"`
    assert not any(name in " ".join(extras["dev"]) for name in names)
    own = next(r for r in extras["dev"] if r.startswith("specprefill["))
    assert not {"langchain", "llama-index"} & set(own.removeprefix("specprefill[").removesuffix("]").split(","))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a clean copy of the sources (the work tree stays untouched)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    shutil.copytree(ROOT / "core", src / "core", ignore=ignore)
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
    ):
        assert required in names, required
    prefixes = ("tests/", "examples/", "core/", "integrations/", "benchmarks/", "langchain_specprefill", "llama_index")
    assert not any(n.startswith(prefixes) for n in names)
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
    """Unpack the wheel and import the core from it, with the editable install out of the way."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    site_packages = sysconfig.get_paths()["purelib"]
    # -S skips site (and with it the editable finder's .pth); site-packages is added back as a plain path
    code = (
        "import sys, json, importlib\n"
        f"sys.path[:0] = [{str(target)!r}, {site_packages!r}]\n"
        "roots = ['specprefill']\n"
        "files = {r: importlib.import_module(r).__file__ for r in roots}\n"
        "print(json.dumps(files))\n"
    )
    files = json.loads(_run(code, "-S"))
    for root, file in files.items():
        assert file is not None and file.startswith(str(target)), (root, file)
