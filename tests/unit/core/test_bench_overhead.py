"""`specprefill bench overhead`: the dtype comparison table and its measurement loop."""

from __future__ import annotations

from collections.abc import Sequence

from specprefill.bench.overhead import DtypeRow, format_dtype_table, measure_dtypes


class _Config:
    _attn_implementation = "sdpa"


class _Model:
    def __init__(self) -> None:
        self.config = _Config()

    def set_attn_implementation(self, name: str) -> None:
        self.config._attn_implementation = name


class _FakeSpeculator:
    def __init__(self, calls: list[tuple[str, int]], label: str) -> None:
        self.model = _Model()
        self.calls = calls
        self.label = label

    def encode(self, text: str) -> list[list[int]]:
        return [list(range(len(text.split())))]

    def plain_prefill(self, ids: Sequence[int]) -> None:
        self.calls.append((self.label, len(ids)))


def test_measure_dtypes_interleaves_variants_on_the_same_prompt() -> None:
    calls: list[tuple[str, int]] = []
    variants = {name: _FakeSpeculator(calls, name) for name in ("default", "float32", "bfloat16")}
    rows = measure_dtypes(variants, [3, 5], repeats=2)
    assert [r.tokens for r in rows] == [3, 5]
    assert all(set(r.seconds) == set(variants) for r in rows)
    # per length: one warm-up each, then the variants alternate within every repeat
    assert calls[:9] == [(name, 3) for name in ("default", "float32", "bfloat16")] * 3
    assert calls[9:] == [(name, 5) for name in ("default", "float32", "bfloat16")] * 3


def test_dtype_table_names_the_pick_and_gives_the_ratio() -> None:
    rows = [DtypeRow(512, {"default": 1.0, "float32": 1.0, "bfloat16": 4.0})]
    table = format_dtype_table(rows, "float32", {"default": 0.5, "float32": 0.25, "bfloat16": 0.75})
    lines = table.splitlines()
    assert "default=float32 s" in lines[0] and "bf16/fp32" in lines[0]
    assert lines[2].split() == ["512", "1.000", "1.000", "4.000", "4.00"]
    assert lines[3].split() == ["load", "0.500", "0.250", "0.750"]


def test_dtype_table_without_both_dtypes_has_no_ratio() -> None:
    table = format_dtype_table([DtypeRow(8, {"default": 2.0})], "bfloat16", {"default": 1.0})
    assert "bf16/fp32" not in table
    assert table.splitlines()[2].split() == ["8", "2.000"]
