"""The LlamaIndex integration's import layout and public API."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE_DIRS = ["llama_index", "llama_index/postprocessor", "llama_index/llms", "llama_index/embeddings"]

PUBLIC = {
    "llama_index.postprocessor.specprefill": [
        "DEFAULT_INSTRUCTION",
        "DEFAULT_LOOKAHEAD",
        "METADATA_KEY",
        "NodePruneStats",
        "PostprocessStats",
        "SpecPrefillNodePostprocessor",
        "SpecPrefillPruneEndEvent",
        "SpecPrefillPruneStartEvent",
    ],
    "llama_index.postprocessor.specprefill.stats": ["NodePruneStats", "PostprocessStats"],
    "llama_index.llms.specprefill": ["STATS_KEY", "SpecPrefillLLM"],
    "llama_index.embeddings.specprefill": ["PackagedEmbedding"],
}


@pytest.mark.parametrize("folder", NAMESPACE_DIRS)
def test_namespace_folders_have_no_init(folder: str) -> None:
    path = ROOT / "integrations" / folder
    assert path.is_dir()
    assert not (path / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace package"


@pytest.mark.parametrize("package", ["postprocessor", "llms", "embeddings"])
def test_packages_are_typed(package: str) -> None:
    assert (ROOT / "integrations" / "llama_index" / package / "specprefill" / "py.typed").is_file()


@pytest.mark.parametrize(("module", "names"), sorted(PUBLIC.items()))
def test_all_is_explicit_and_importable(module: str, names: list[str]) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(names)
    for name in names:
        assert getattr(mod, name) is not None


def test_integrations_live_beside_llama_index_core() -> None:
    import llama_index.core

    import llama_index.postprocessor.specprefill as pp

    assert Path(pp.__file__).resolve().is_relative_to(ROOT / "integrations")
    assert llama_index.core.__version__.startswith("0.14")


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
