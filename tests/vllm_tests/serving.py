"""A real ``specprefill serve`` (vLLM's OpenAI server with server-side pruning) on 127.0.0.1, for tests.

:func:`running_server` starts one through the launcher, waits for ``/health`` and kills it on exit. The
session-scoped :func:`spec_server` fixture shares ONE such server across modules (start-up costs a minute or
more on the CI machines): SmolLM2-135M as base and speculator, keep rate 0.3, float32 everywhere, the
speculator :func:`speculator_factories.fail_on_marker` (the real SmolLM2, except that a prompt containing
``FAIL_MARKER`` fails, so fallback is testable on the same server), and a chat template that renders tools
with the Hermes tool-call parser (:data:`SPEC_SERVER_ARGS`), so tool calling works through it. Use it from a
test module with ``pytest_plugins = ["serving"]`` (there is no ``conftest.py`` in this folder; see
``vllm_helpers``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STARTUP_SECONDS = float(os.environ.get("SPECPREFILL_TEST_SERVER_TIMEOUT", "600"))
MAX_MODEL_LEN = 4096
SPEC_SERVER_SPECULATOR = "speculator_factories:fail_on_marker"
"""The shared server's speculator: SmolLM2 float32 that fails on ``speculator_factories.FAIL_MARKER``."""
TOOLS_TEMPLATE = HERE / "smollm2_tools.jinja"
"""SmolLM2's chat template plus a tools block and Hermes-style tool calls (identical without tools)."""
SPEC_SERVER_ARGS = ("--chat-template", str(TOOLS_TEMPLATE), "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
"""vLLM options of the shared server: tools are rendered (in the system turn) and tool calls parsed."""
SUITE_KEEP_RATE = 0.5
SUITE_SERVER_ENV = {
    "SPECPREFILL_SERVER_MIN_PROMPT_TOKENS": "0",
    "SPECPREFILL_SERVER_CONFIG_JSON": '{"protect_question_tokens": 0, "protect_system_tokens": 0, "lookahead": 1}',
    "VLLM_CPU_OMP_THREADS_BIND": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
}
"""Settings of the standard-suite server (:func:`suite_server`). Every prompt is scored, however short, and the
message contents (system prompt and question included) are prunable, so the suites' short prompts lose tokens;
what is outside the contents (chat template, hence the whole tools block) stays protected. Look-ahead 1 (the
observation window only) keeps scoring to one speculator prefill: these runs test the clients, not the ranking.
The engine gets one core: beside other work on 2 cores, two OpenMP threads decoded 6.6-6.9 tokens/s, one
16-18 (the speculator and the test's clients use the other core). Its worker runs in a process of its own
(``vllm_helpers`` turns vLLM's multiprocessing off for the in-process engines, and the children inherit it):
in one process, 4 structured-output requests took 104 s instead of 10."""
SUITE_SERVER_ARGS = (
    *SPEC_SERVER_ARGS,
    "--tool-strict-level", "parameter",
    "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
)  # fmt: skip
"""vLLM options of the suite server: the shared server's tools template and Hermes parser; every tool call held by
guided decoding to its tool's argument schema (``auto`` pins the arguments only of tools declared ``strict``,
and the suites' are not); JSON without free white space (with it, SmolLM2-135M's joke objects ran on in blank
lines, spaces and repeated words until ``max_tokens`` cut them: every structured-output test failed)."""


@dataclass
class ServerHandle:
    """A started server: ``base_url`` ends in ``/v1`` (what the ``openai`` client takes)."""

    base_url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for ``/health``, ``/metrics``, ``/specprefill/...``)."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 6000) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-n:]


def post_json(url: str, data: bytes, *, timeout: float = 300) -> tuple[int, str, float]:
    """POST a JSON body; ``(status, body text, seconds)``, also for 4xx/5xx answers."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    return status, text, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this checkout's code and this folder on PYTHONPATH, both CPU cores."""
    env = dict(os.environ)
    root = HERE.parents[1]
    sources = [root / "core", *sorted(p.parent for p in (root / "integrations").rglob("pyproject.toml"))]
    paths = [*map(str, sources), str(HERE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["SPECPREFILL_SERVER_DTYPE"] = "float32"
    env.setdefault("SPECPREFILL_SERVER_DEADLINE_SECONDS", "300")
    env.setdefault("SPECPREFILL_SERVER_MIN_PROMPT_TOKENS", "256")
    # these servers check what pruning does to each request, so every prompt is scored: with the cost guard on,
    # a 135M base beside a 135M speculator on 2 cores would (rightly) stop scoring once it learnt the costs
    env.setdefault("SPECPREFILL_SERVER_COST_GUARD", "false")
    env.update(extra or {})
    return env


def wait_healthy(process: subprocess.Popen[bytes], root_url: str, tail: Callable[[], str]) -> None:
    """Poll ``root_url/health`` until it answers 200; raise with the log ``tail()`` if the process dies or times out."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{root_url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(1.0)
    raise RuntimeError(f"server not healthy after {STARTUP_SECONDS:.0f}s:\n{tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    model: str = "smollm2-135m",
    *,
    speculator: str = "smollm2-135m",
    keep_rate: float = 0.3,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_dir: Path | None = None,
) -> Iterator[ServerHandle]:
    """Start ``specprefill serve MODEL --speculator ... --keep-rate ...`` on a free port; stop it on exit.

    vLLM runs eagerly in float32 with a small KV cache (``MAX_MODEL_LEN`` tokens, 16 sequences); pass
    ``extra_args`` to add or override vLLM options and ``env`` for ``SPECPREFILL_SERVER_*`` settings.
    """
    port = free_port()
    folder = log_dir or Path(tempfile.mkdtemp(prefix="specprefill-serve-"))
    log_path = folder / f"server-{port}.log"
    cmd = [
        sys.executable, "-m", "specprefill.cli", "serve", model,
        "--speculator", speculator, "--keep-rate", str(keep_rate),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN),
        "--kv-cache-memory-bytes", str(1 << 29), "--max-num-seqs", "16",
        *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(env))
    handle = ServerHandle(f"http://127.0.0.1:{port}/v1", port, process, log_path)
    try:
        wait_healthy(process, handle.root_url, handle.log_tail)
        yield handle
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def spec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """ONE shared pruning server for the session (see the module docstring)."""
    from vllm_helpers import HAS_EMBEDDED, HAS_HF, HAS_VLLM, VLLM_REASON

    if not (HAS_VLLM and HAS_HF and HAS_EMBEDDED):
        pytest.skip(VLLM_REASON)
    logs = tmp_path_factory.mktemp("spec-server")
    with running_server(speculator=SPEC_SERVER_SPECULATOR, extra_args=SPEC_SERVER_ARGS, log_dir=logs) as handle:
        yield handle


@pytest.fixture(scope="session")
def suite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """ONE pruning server for LangChain's and LlamaIndex's own suites (``test_vllm_*_suites.py``).

    The README's serve line (SmolLM2-135M as base and speculator) with :data:`SUITE_SERVER_ARGS`, keep rate
    :data:`SUITE_KEEP_RATE` and :data:`SUITE_SERVER_ENV`: the suites' prompts are a few tokens long, and each of
    them is to be pruned.
    """
    from vllm_helpers import HAS_EMBEDDED, HAS_HF, HAS_VLLM, VLLM_REASON

    if not (HAS_VLLM and HAS_HF and HAS_EMBEDDED):
        pytest.skip(VLLM_REASON)
    logs = tmp_path_factory.mktemp("suite-server")
    with running_server(
        keep_rate=SUITE_KEEP_RATE, env=SUITE_SERVER_ENV, extra_args=SUITE_SERVER_ARGS, log_dir=logs
    ) as handle:
        yield handle
