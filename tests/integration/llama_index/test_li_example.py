"""examples/llamaindex_rag.py runs end to end, offline, on the packaged models."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from li_support import EXAMPLE, ROOT

from conftest import needs_model

pytestmark = [needs_model, pytest.mark.integration]


def test_example_runs_and_prints_answer_sources_and_stats() -> None:
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}  # no OpenAI fallback
    question = "In which year was the stone bridge in Lanternfield completed?"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), question, "--max-new-tokens", "16", "--async"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "indexed 6 documents as" in out
    assert f"Q: {question}" in out and "\nA: " in out
    assert "Sources (pruned):" in out and "tokens kept" in out
    assert "Postprocessor: 4 nodes ->" in out
    assert "LLM: prompt tokens" in out and "TTFT" in out
    print(f"example ran in {seconds:.1f} s")
