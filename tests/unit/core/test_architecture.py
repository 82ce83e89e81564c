"""The package's shape: subpackages by idea, few flat modules, none too long, and no import cycle.

The import graph counts every import statement of the project's own modules: top-level, inside functions
(lazy) and under ``TYPE_CHECKING``. A cycle there means two modules each need the other to be understood.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
OWN = ("specprefill", "langchain_specprefill", "llama_index")
SOURCE_ROOTS = (ROOT / "core", *sorted(p.parent for p in (ROOT / "integrations").rglob("pyproject.toml")))
"""Where import roots live: the core, and each integration distribution's folder (its own pyproject.toml)."""
PACKAGES = tuple(root / name for root in SOURCE_ROOTS for name in OWN if (root / name).is_dir())
MAX_FLAT_MODULES = 12
MAX_LINES = 400


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the core package and the integrations, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            found[_module_name(package.parent, path)] = path
    return found


def _imported(node: ast.AST, package: str, known: dict[str, Path]) -> list[str]:
    """Dotted names one import statement refers to (a submodule when ``from pkg import mod`` names one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join([*parent, *([base] if base else [])])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere (lazy and ``TYPE_CHECKING`` imports included)."""
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _imported(node, package, known):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target.startswith(OWN) and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    (tmp_path / "specprefill").mkdir()
    a = tmp_path / "specprefill" / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from specprefill.b import x\n")
    b = tmp_path / "specprefill" / "b.py"
    b.write_text("def f():\n    from specprefill import a\n")
    known = {"specprefill.a": a, "specprefill.b": b}
    assert import_graph(known) == {"specprefill.a": {"specprefill.b"}, "specprefill.b": {"specprefill.a"}}


def test_no_import_cycle() -> None:
    assert cycles(import_graph(modules())) == []


def test_every_source_root_is_scanned() -> None:
    names = set(modules())
    for package in (
        "specprefill",
        "langchain_specprefill",
        "llama_index.postprocessor.specprefill",
        "llama_index.llms.specprefill",
        "llama_index.embeddings.specprefill",
    ):
        assert package in names, package


def test_few_flat_modules() -> None:
    flat = sorted(p.name for p in (ROOT / "core" / "specprefill").glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, flat


def test_no_module_is_too_long() -> None:
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_vllm_plugin_does_not_import_the_server() -> None:
    graph = import_graph(modules())
    plugin = {name for name in graph if name.startswith("specprefill.vllm_plugin")}
    assert not any(target.startswith("specprefill.server") for name in plugin for target in graph[name])
