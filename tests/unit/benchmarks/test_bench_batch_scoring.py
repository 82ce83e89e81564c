"""benchmarks.batch_scoring: prompt lengths, the table, argument checks (no model)."""

from __future__ import annotations

import pytest

from benchmarks.batch_scoring import BatchRow, parse_args, prompt_lengths, table


def test_prompt_lengths() -> None:
    assert prompt_lengths(3, 1000, 0.0) == [1000, 1000, 1000]
    assert prompt_lengths(1, 1000, 0.5) == [1000]
    assert prompt_lengths(3, 1000, 0.5) == [500, 750, 1000]


def test_table_shows_throughput_and_speedup() -> None:
    out = table(
        [BatchRow(batch=4, tokens=1024, one_by_one_seconds=8.0, batched_seconds=4.0, speedup=2.0, max_abs_diff=1e-7)]
    )
    assert "| 4 | 1024 | 8.000 | 4.000 | 0.50 | 1.00 | 2.00x | 1.0e-07 |" in out


@pytest.mark.parametrize("bad", [["--spread", "1"], ["--tokens", "8"], ["--batches", "0"], ["--repeats", "0"]])
def test_bad_arguments_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(bad)
