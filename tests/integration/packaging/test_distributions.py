"""Every distribution builds, holds only its own code, and works installed from its wheels in a fresh venv.

The core (``specprefill``) and the four integration distributions (``integrations/``) are built from clean
copies of their sources. Their wheels must hold exactly their own package (the core: no integration code,
no ``benchmarks``). Then all of them go into one fresh venv (their framework dependencies come from PyPI
or the pip cache), where each integration is imported from site-packages and runs its own smoke test from
its folder, and everything a smoke test imported must come from that distribution's declared dependencies
(their closure, plus pytest's): so each integration's dependencies alone are enough.

Needs PyPI (or a pip cache holding the dependencies); without it the test fails and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Distribution:
    """An integration distribution: its name, its folder in the repository, its import package."""

    name: str
    folder: str
    package: str

    @property
    def package_path(self) -> str:
        return self.package.replace(".", "/")


PARTNERS = (
    Distribution("langchain-specprefill", "integrations/langchain", "langchain_specprefill"),
    Distribution(
        "llama-index-postprocessor-specprefill",
        "integrations/llama-index/postprocessor",
        "llama_index.postprocessor.specprefill",
    ),
    Distribution("llama-index-llms-specprefill", "integrations/llama-index/llms", "llama_index.llms.specprefill"),
    Distribution(
        "llama-index-embeddings-specprefill",
        "integrations/llama-index/embeddings",
        "llama_index.embeddings.specprefill",
    ),
)
IDS = [d.name for d in PARTNERS]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".pytest_cache")

NO_NETWORK = (
    "this test installs the wheels' dependencies (langchain-core, llama-index-core, ...) into a fresh venv "
    "from PyPI (or the pip cache): it needs PyPI access"
)

# The smoke test runs' sitecustomize (found through PYTHONPATH): it hides every installed module that belongs
# to a distribution outside the closure of SPECPREFILL_ALLOWED's requirements, as if that distribution were not
# installed (optional imports fall back, needed ones fail), and writes which installed modules were imported.
SITECUSTOMIZE = """
import atexit, json, os, sys, sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _closure(roots):
    allowed, todo, done = set(), [(canonicalize_name(r), frozenset()) for r in roots], set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        allowed.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return allowed


_ALLOWED = _closure(json.loads(os.environ["SPECPREFILL_ALLOWED"]))
_HIDDEN = {}
for _dist in metadata.distributions():
    _name = canonicalize_name(_dist.metadata["Name"])
    if _name not in _ALLOWED:
        for _file in _dist.files or []:
            _HIDDEN[str(Path(_dist.locate_file(_file)).resolve())] = _name
_REFUSED = {}


class _Hide:
    busy = False

    def find_spec(self, fullname, path=None, target=None):
        if self.busy:
            return None
        self.busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self.busy = False
        if spec is not None and spec.origin and str(Path(spec.origin).resolve()) in _HIDDEN:
            _REFUSED[fullname] = _HIDDEN[str(Path(spec.origin).resolve())]
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by the smoke test)", name=fullname)
        return spec


sys.meta_path.insert(0, _Hide())


@atexit.register
def _write():
    site = {str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("purelib", "platlib")}
    files = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(str(Path(file).resolve()).startswith(s + os.sep) for s in site):
            files[name] = str(Path(file).resolve())
    Path(os.environ["SPECPREFILL_IMPORTS_OUT"]).write_text(json.dumps({"files": files, "refused": _REFUSED}))
"""


def _run(args: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args[:4])} ... took more than {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}")
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@dataclass(frozen=True)
class Built:
    """The built wheels by distribution name, and the copied source folder of each distribution."""

    wheels: dict[str, Path]
    sources: dict[str, Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Every wheel, built from clean copies of the sources (the work tree stays untouched)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("distributions")
    core = tmp / "src" / "specprefill"
    shutil.copytree(ROOT / "core", core / "core", ignore=IGNORE)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, core / name)
    sources = {"specprefill": core}
    for dist in PARTNERS:
        sources[dist.name] = tmp / "src" / dist.name
        shutil.copytree(ROOT / dist.folder, sources[dist.name], ignore=IGNORE)
    out = tmp / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    _run([*command, "-w", str(out), *map(str, sources.values())], timeout=300)
    wheels = {}
    for name in sources:
        found = list(out.glob(f"{name.replace('-', '_')}-0.1.0-*.whl"))
        assert len(found) == 1, (name, sorted(p.name for p in out.iterdir()))
        wheels[name] = found[0]
    return Built(wheels, sources)


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the core wheel, every integration wheel, their dependencies and pytest; its bin/."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    # no pip inside (this interpreter's pip installs into it) and no .pyc compilation: both only cost time
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)], timeout=120)
    bin_dir = folder / ("Scripts" if os.name == "nt" else "bin")
    wheels = [str(built.wheels["specprefill"]), *(str(built.wheels[d.name]) for d in PARTNERS)]
    command = [*_pip(bin_dir), "install", "-q", "--no-compile", "--find-links", str(built.wheels["specprefill"].parent)]
    try:
        proc = subprocess.run([*command, *wheels, "pytest>=8"], capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip install into the fresh venv took more than 400 s; {NO_NETWORK}")
    if proc.returncode != 0:
        pytest.fail(f"pip install into the fresh venv failed; {NO_NETWORK}.\n{proc.stderr[-3000:]}")
    return bin_dir


def _pip(bin_dir: Path) -> list[str]:
    """This interpreter's pip, acting on the venv whose bin/ is ``bin_dir``."""
    return [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "--disable-pip-version-check"]


def _wheel_files(wheel: Path) -> set[str]:
    return {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_every_integration_distribution_is_listed() -> None:
    found = {
        (tomllib.loads(p.read_text())["project"]["name"], p.parent.relative_to(ROOT).as_posix())
        for p in (ROOT / "integrations").rglob("pyproject.toml")
    }
    assert found == {(d.name, d.folder) for d in PARTNERS}


def test_the_core_wheel_holds_no_integration_code(built: Built) -> None:
    names = _wheel_files(built.wheels["specprefill"])
    assert "specprefill/__init__.py" in names and "specprefill/py.typed" in names
    assert not any(n.startswith(("langchain_specprefill", "llama_index", "benchmarks", "integrations")) for n in names)
    assert {n.split("/")[0] for n in names} == {"specprefill"}


@pytest.mark.parametrize("dist", PARTNERS, ids=IDS)
def test_an_integration_wheel_holds_exactly_its_package(built: Built, dist: Distribution) -> None:
    source = ROOT / dist.folder / dist.package_path
    expected = {
        f"{dist.package_path}/{p.relative_to(source).as_posix()}"
        for p in source.rglob("*")
        if p.is_file() and (p.suffix == ".py" or p.name == "py.typed") and "__pycache__" not in p.parts
    }
    assert f"{dist.package_path}/py.typed" in expected and f"{dist.package_path}/__init__.py" in expected
    assert _wheel_files(built.wheels[dist.name]) == expected


@pytest.mark.parametrize("dist", PARTNERS, ids=IDS)
def test_an_integration_wheel_requires_a_compatible_core(built: Built, dist: Distribution) -> None:
    metadata = _wheel_metadata(built.wheels[dist.name])
    fields = [line.split(":", 1) for line in metadata.splitlines() if ":" in line]
    requires = [Requirement(v.strip()) for k, v in fields if k == "Requires-Dist"]
    core = next(r for r in requires if r.name == "specprefill")
    assert core.specifier.contains("0.1.0") and not core.specifier.contains("0.2.0"), core
    assert ("Requires-Python", " >=3.10") in [(k, v) for k, v in fields]
    assert ("Version", " 0.1.0") in [(k, v) for k, v in fields]


def test_the_integrations_import_from_the_fresh_venv(venv: Path) -> None:
    """Installed side by side: each from the venv's site-packages, the llama_index namespace shared."""
    code = textwrap.dedent(
        f"""
        import importlib, json, sysconfig
        import llama_index.core
        site = sysconfig.get_paths()["purelib"]
        files = {{p: importlib.import_module(p).__file__ for p in {[d.package for d in PARTNERS]!r}}}
        print(json.dumps({{"site": site, "files": files, "core": llama_index.core.__file__}}))
        """
    )
    result = json.loads(_run([str(venv / "python"), "-c", code], timeout=180, cwd=venv))
    site = Path(result["site"])
    for file in [*result["files"].values(), result["core"]]:
        assert Path(file).is_relative_to(site), file
    for folder in ("llama_index", "llama_index/postprocessor", "llama_index/llms", "llama_index/embeddings"):
        assert not (site / folder / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace"
    _run([*_pip(venv), "check"], timeout=120)


def _hiding_env(folder: Path, allowed: list[str]) -> dict[str, str]:
    """The environment of a run in the fresh venv that sees only ``allowed``'s dependency closure."""
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "VIRTUAL_ENV"))}
    return env | {
        "PYTHONPATH": str(folder),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "SPECPREFILL_ALLOWED": json.dumps(allowed),
        "SPECPREFILL_IMPORTS_OUT": str(folder / "imports.json"),
    }


def test_the_smoke_runs_hide_undeclared_distributions(venv: Path, tmp_path: Path) -> None:
    env = _hiding_env(tmp_path, ["langchain-specprefill"])
    code = "import langchain_specprefill\ntry:\n    import llama_index.core\nexcept ImportError:\n    print('hidden')"
    assert _run([str(venv / "python"), "-c", code], timeout=180, cwd=tmp_path, env=env).split() == ["hidden"]
    refused = json.loads((tmp_path / "imports.json").read_text())["refused"]
    assert refused.get("llama_index.core") == "llama-index-core", refused


@pytest.mark.parametrize("dist", PARTNERS, ids=IDS)
def test_an_integration_smoke_test_passes_on_its_own_dependencies(
    built: Built, venv: Path, dist: Distribution, tmp_path: Path
) -> None:
    """Its own tests/ run from its folder against the installed wheel, with undeclared distributions hidden."""
    env = _hiding_env(tmp_path, [dist.name, "pytest"])
    # the console script, not `python -m pytest`: the folder's own source must not shadow the wheel
    command = [str(venv / "pytest"), "-q", "-p", "no:cacheprovider"]
    report = _run(command, timeout=180, cwd=built.sources[dist.name], env=env)
    assert " passed" in report and "failed" not in report, report
    imported = json.loads((tmp_path / "imports.json").read_text())
    for package in (dist.package, "specprefill"):
        assert package in imported["files"], f"{package} was not imported from the venv's site-packages"
