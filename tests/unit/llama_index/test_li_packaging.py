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
KINDS = ["postprocessor", "llms", "embeddings"]
DISTRIBUTIONS = {kind: ROOT / "integrations" / "llama-index" / kind for kind in KINDS}
"""Each LlamaIndex integration distribution's folder (llama-index-<kind>-specprefill), by kind."""

PACKAGES = sorted(
    ".".join(init.parent.relative_to(folder).parts)
    for folder in DISTRIBUTIONS.values()
    for init in (folder / "llama_index").rglob("__init__.py")
)
"""Every LlamaIndex integration package in the source tree (found, not listed by hand)."""


@pytest.mark.parametrize("kind", KINDS)
def test_namespace_folders_have_no_init(kind: str) -> None:
    for path in (DISTRIBUTIONS[kind] / "llama_index", DISTRIBUTIONS[kind] / "llama_index" / kind):
        assert path.is_dir()
        assert not (path / "__init__.py").exists(), f"{path} must stay a PEP 420 namespace package"


def test_every_llama_index_distribution_is_known() -> None:
    found = {p.parent for p in (ROOT / "integrations" / "llama-index").glob("*/pyproject.toml")}
    assert found == set(DISTRIBUTIONS.values())


@pytest.mark.parametrize("kind", KINDS)
def test_packages_are_typed(kind: str) -> None:
    assert (DISTRIBUTIONS[kind] / "llama_index" / kind / "specprefill" / "py.typed").is_file()


def test_packages_are_found() -> None:
    assert {f"llama_index.{kind}.specprefill" for kind in KINDS} <= set(PACKAGES)


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


@pytest.mark.parametrize("kind", KINDS)
def test_installed_llama_index_core_satisfies_the_declared_range(kind: str) -> None:
    """Each distribution's llama-index-core range in its pyproject.toml admits the version tests run with."""
    import llama_index.core

    package = importlib.import_module(f"llama_index.{kind}.specprefill")
    assert Path(package.__file__ or "").resolve().is_relative_to(DISTRIBUTIONS[kind])
    project = tomllib.loads((DISTRIBUTIONS[kind] / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"llama-index-{kind}-specprefill"
    requirements = [Requirement(r) for r in project["dependencies"]]
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
