"""``specprefill bench overhead`` end to end over the real packaged model."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import needs_model


@needs_model
@pytest.mark.integration
def test_overhead_bench_prints_default_float32_and_bfloat16_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    from specprefill.bench.overhead import main
    from specprefill.speculator.loading import default_dtype

    assert main(["--lengths", "48", "--repeats", "1", "--lookahead", "2", "1"]) == 0
    out: Any = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["48"]]
    assert [row[1] for row in rows[:2]] == ["2", "1"]  # both look-ahead settings, side by side
    picked = str(default_dtype("cpu")).removeprefix("torch.")
    assert f"dtype=None picked {picked}" in out
    assert f"default={picked} s" in out and "float32 s" in out and "bfloat16 s" in out
