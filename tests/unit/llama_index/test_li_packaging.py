"""The LlamaIndex integration's import layout and public API."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE_DIRS = ["llama_index", "llama_index/postprocessor", "llama_index/llms", "llama_index/embeddings"]

PACKAGES = sorted(
    ".".join(init.parent.relative_to(ROOT / "integrations").parts)
    for init in (ROOT / "integrations" / "llama_index").rglob("__init__.py")
)
"""Every LlamaIndex integration package in the source tree (found, not listed by hand)."""


@pytest.mark.parametrize("folder", NAMESPACE_DIRS)
def test_namespace_folders_have_no_init(folder: str) -> None:
    path = ROOT / "integrations" / folder
    assert path.is_dir()
    assert not (path / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace package"


@pytest.mark.parametrize("package", ["postprocessor", "llms", "embeddings"])
def test_packages_are_typed(package: str) -> None:
    assert (ROOT / "integrations" / "llama_index" / package / "specprefill" / "py.typed").is_file()


def test_packages_are_found() -> None:
    assert {"llama_index.postprocessor.specprefill", "llama_index.llms.specprefill"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_exactly_the_public_definitions(package: str) -> None:
    """``__all__`` resolves, is unique, and no public class or function of the package's modules is missing."""
    mod = importlib.import_module(package)
    assert len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    for info in pkgutil.iter_modules(mod.__path__):
        sub = importlib.import_module(f"{package}.{info.name}")
        defined = {
            name
            for name, obj in vars(sub).items()
            if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == sub.__name__
        }
        assert defined <= set(getattr(sub, "__all__", ())), f"{sub.__name__} does not export {defined}"


def test_installed_llama_index_core_satisfies_the_declared_extra() -> None:
    """The llama-index extra's version range in pyproject.toml admits the llama-index-core tests run with."""
    import llama_index.core

    import llama_index.postprocessor.specprefill as pp

    assert Path(pp.__file__).resolve().is_relative_to(ROOT / "integrations")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirements = [Requirement(r) for r in extras["llama-index"]]
    core = next(r for r in requirements if r.name == "llama-index-core")
    assert core.specifier.contains(llama_index.core.__version__, prereleases=True), (
        f"llama-index-core {llama_index.core.__version__} is outside the declared {core.specifier}"
    )


def test_importing_does_not_load_torch_or_a_model() -> None:
    code = (
        "import sys\n"
        "from llama_index.postprocessor.specprefill import SpecPrefillNodePostprocessor\n"
        "from llama_index.llms.specprefill import SpecPrefillLLM\n"
        "from llama_index.embeddings.specprefill import PackagedEmbedding\n"
        "SpecPrefillNodePostprocessor(); PackagedEmbedding()\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
