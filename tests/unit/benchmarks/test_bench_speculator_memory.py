"""benchmarks.speculator_memory: parameter counts, the fitted line, the suggested utilization (no model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.speculator_memory import fit_line, kv_bytes_per_token, shape_parameters, suggested_utilization
from benchmarks.ttft_vllm import SHAPES


def test_shape_parameters_match_the_published_models() -> None:
    assert shape_parameters(SHAPES["8b"]) == pytest.approx(8.03e9, rel=0.005)  # Llama-3.1-8B
    assert shape_parameters(SHAPES["70b"]) == pytest.approx(70.55e9, rel=0.005)  # Llama-3.1-70B
    # Llama-3.2-1B ties its embeddings (1.24B); untied, as built here, the LM head adds 0.26B
    assert shape_parameters(SHAPES["1b"]) == pytest.approx(1.24e9 + 128256 * 2048, rel=0.005)


def test_kv_bytes_per_token() -> None:
    llama8b = SimpleNamespace(num_hidden_layers=32, num_key_value_heads=8, hidden_size=4096, num_attention_heads=32)
    assert kv_bytes_per_token(llama8b, 2) == 131072  # 128 KiB per token in bf16: 4 GiB at 32k
    assert kv_bytes_per_token(SimpleNamespace(**vars(llama8b), head_dim=64), 2) == 65536


def test_fit_line() -> None:
    assert fit_line([1000, 2000, 4000], [3000, 5000, 9000]) == pytest.approx((1000.0, 2.0))
    assert fit_line([100], [250]) == (0.0, 2.5)


def test_suggested_utilization_leaves_the_speculator_room() -> None:
    assert suggested_utilization(80, 23.0) == 0.70  # (80 - 23 - 1) / 80 = 0.70
    assert suggested_utilization(141, 23.0) == 0.82  # 117 / 141 = 0.8297 -> 0.82
