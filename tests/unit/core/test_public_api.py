"""The public surface: an explicit ``__all__``, every name resolves, every public callable is documented."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

import specprefill
from specprefill import errors

ROOT = Path(__file__).resolve().parents[3]

EXPECTED_ALL = {
    # configuration, results, pure functions
    "SpecPrefillConfig",
    "PruneResult",
    "PruneStats",
    "ScoredPrompt",
    "Speculator",
    "avg_pool1d",
    "chunk_scores",
    "importance_from_attention",
    "select_chunks",
    "__version__",
    # errors
    "SpecPrefillError",
    "ConfigurationError",
    "ModelLoadError",
    "PromptError",
    "EmptyPromptError",
    "PromptTooLongError",
    "BackendUnavailableError",
    "BackendError",
    "SpeculatorError",
    "UnknownArgumentError",
    # engine, backends, loading (torch / transformers / openai are imported only when used)
    "load_engine",
    "load_speculator",
    "split_call_kwargs",
    "SpecPrefillEngine",
    "EngineResult",
    "EngineStats",
    "TransformersBackend",
    "OpenAIBackend",
    "GenerationParams",
}

HEAVY = ("torch", "transformers", "openai", "vllm", "langchain_core", "llama_index.core")


def _core_modules() -> list[str]:
    """Every module of the package except ``__main__`` entry points (found by walking it, so none is missed)."""
    root = Path(specprefill.__file__).parent
    found = [
        "specprefill." + ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for path in root.rglob("*.py")
        if path.name != "__main__.py"
    ]
    return sorted(name.removesuffix(".") for name in found)


CORE_MODULES = _core_modules()


def test_all_is_the_expected_set() -> None:
    assert len(specprefill.__all__) == len(set(specprefill.__all__)), "duplicates in __all__"
    assert set(specprefill.__all__) == EXPECTED_ALL


def test_all_is_sorted() -> None:
    assert list(specprefill.__all__) == sorted(specprefill.__all__)


@pytest.mark.parametrize("name", sorted(EXPECTED_ALL))
def test_names_resolve(name: str) -> None:
    assert getattr(specprefill, name) is not None


def test_every_public_name_is_light_to_import() -> None:
    """Plain imports, yet touching every public name imports none of the heavy dependencies."""
    code = (
        "import json, sys, specprefill\n"
        "[getattr(specprefill, n) for n in specprefill.__all__]\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        specprefill.no_such_name  # noqa: B018


def test_version_matches_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert specprefill.__version__ == project["version"]
    assert importlib.metadata.version("specprefill") == project["version"]


def _public_callables(obj: Any) -> list[tuple[str, Any]]:
    """The object itself plus, for classes, the public methods and properties it defines."""
    out: list[tuple[str, Any]] = [(getattr(obj, "__qualname__", repr(obj)), obj)]
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            if not klass.__module__.startswith("specprefill"):
                continue
            for attr, member in vars(klass).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    out.append((f"{klass.__qualname__}.{attr}", member))
    return out


def _documented(name: str, obj: Any) -> None:
    doc = obj.fget.__doc__ if isinstance(obj, property) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(EXPECTED_ALL - {"__version__"}))
def test_top_level_names_documented(name: str) -> None:
    try:
        obj = getattr(specprefill, name)
    except specprefill.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    for label, member in _public_callables(obj):
        _documented(label, member)


@pytest.mark.parametrize("module_name", CORE_MODULES)
def test_core_module_exports_resolve_and_are_documented(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a module built on an optional dependency this environment lacks (vLLM)
        pytest.skip(f"{module_name} needs {exc.name or exc}")
    assert module.__doc__, module_name
    assert len(set(module.__all__)) == len(module.__all__), f"duplicates in {module_name}.__all__"
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            for label, member in _public_callables(obj):
                _documented(f"{module_name}.{label}", member)


def test_error_hierarchy() -> None:
    exported = {name: getattr(errors, name) for name in errors.__all__}
    assert set(exported) <= set(specprefill.__all__)
    for name, cls in exported.items():
        assert issubclass(cls, specprefill.SpecPrefillError), name
    assert issubclass(specprefill.ConfigurationError, ValueError)
    assert issubclass(specprefill.PromptError, ValueError)
    assert issubclass(specprefill.EmptyPromptError, specprefill.PromptError)
    assert issubclass(specprefill.PromptTooLongError, specprefill.PromptError)
    assert issubclass(specprefill.BackendUnavailableError, ImportError)
    assert issubclass(specprefill.ModelLoadError, RuntimeError)
    assert issubclass(specprefill.SpeculatorError, RuntimeError)
    assert issubclass(specprefill.BackendError, RuntimeError)
    assert issubclass(specprefill.UnknownArgumentError, specprefill.ConfigurationError)
    assert issubclass(specprefill.UnknownArgumentError, TypeError)


def test_speculator_is_abstract() -> None:
    with pytest.raises(TypeError):
        specprefill.Speculator()  # type: ignore[abstract]
