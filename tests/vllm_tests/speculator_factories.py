"""``module:callable`` speculator factories for test servers (``SPECPREFILL_SERVER_SPECULATOR``).

The server process imports this module by name, so it must stay light (no pytest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specprefill import load_speculator
from specprefill.config import SpecPrefillConfig
from specprefill.result import Message
from specprefill.spans import Span
from specprefill.speculator.base import ImportanceResult, Speculator

FAIL_MARKER = "SPECPREFILL-FORCE-FAIL"
"""A prompt containing this text makes :class:`FailOnMarker` raise while scoring."""


class FailOnMarker(Speculator):
    """The embedded SmolLM2 speculator (float32), except that scoring a prompt with :data:`FAIL_MARKER` fails."""

    def __init__(self, inner: Speculator) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:  # context_window, tokenizer, ... of the real speculator
        return getattr(self.inner, name)

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        return self.inner.encode(text)

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        return self.inner.encode_with_specials(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.inner.decode(token_ids)

    def render_chat(self, messages: list[Message]) -> str:
        return self.inner.render_chat(messages)

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        if FAIL_MARKER in self.inner.decode(input_ids):
            raise RuntimeError("forced speculator failure (test)")
        return self.inner.score(input_ids, config)


def fail_on_marker() -> Speculator:
    """SmolLM2-135M in float32 that fails on prompts containing :data:`FAIL_MARKER`."""
    return FailOnMarker(load_speculator("smollm2-135m", dtype="float32"))


def always_failing() -> Speculator:
    """A speculator whose loading fails (every request then runs unpruned with reason ``load_failed``)."""
    raise RuntimeError("this speculator never loads (test)")
