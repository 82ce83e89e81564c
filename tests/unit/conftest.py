"""Fixtures of the unit tier: the scripted stand-in for a pruning vLLM server (``fake_vllm_server``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_vllm_server import FakeVLLMServer


@pytest.fixture
def fake_vllm() -> Iterator[FakeVLLMServer]:
    """A fresh scripted server on 127.0.0.1 (stats in every answer until ``stats_mode`` says otherwise)."""
    with FakeVLLMServer() as server:
        yield server
