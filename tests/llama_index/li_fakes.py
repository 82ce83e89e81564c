"""Hermetic stand-ins for the LlamaIndex tests: a character-level speculator and a scripted base backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, StreamChunk
from specprefill.config import SpecPrefillConfig
from specprefill.speculator import ImportanceResult, Speculator


class CharSpeculator(Speculator):
    """One token per character. Importance is 1.0 on every occurrence of a ``hot`` word, else a small ramp.

    The ramp (rising towards the end of the prompt) makes rankings deterministic and imitates the recency
    bias of real models, so tests show that the budget follows the hot words, not the position.
    """

    name = "char-fake"

    def __init__(self, hot: Sequence[str] = ("ANSWER",), *, fail: bool = False) -> None:
        self.hot = tuple(hot)
        self.fail = fail
        self.scored: list[str] = []

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

    def encode_with_specials(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return body + "<|assistant|>\n"

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        if self.fail:
            raise RuntimeError("scripted speculator failure")
        text = self.decode(input_ids)
        self.scored.append(text)
        n = len(text)
        importance = np.linspace(0.0, 0.1, n, dtype=np.float32)
        for word in self.hot:
            start = text.find(word)
            while start >= 0:
                importance[start : start + len(word)] = 1.0
                start = text.find(word, start + 1)
        return ImportanceResult(importance, [], queries=1, windows=1)

    @property
    def vocab_size(self) -> int:
        return 0x110000


class ScriptedBackend(BaseBackend):
    """A base model that answers with a fixed text (streamed in two pieces) and records every request."""

    name = "scripted"

    def __init__(self, answer: str = "Forty-two.", *, max_positions: int | None = 4096) -> None:
        self.answer = answer
        self.model_name = "scripted-base"
        self.max_position_embeddings = max_positions
        self.requests: list[tuple[BaseRequest, GenerationParams]] = []

    def same_tokenizer(self, speculator: object) -> bool:
        return False

    def _output(self, request: BaseRequest) -> BaseOutput:
        if request.messages is not None:
            prompt = "".join(str(m["content"]) for m in request.messages)
        else:
            prompt = request.text or ""
        return BaseOutput(
            text=self.answer,
            finish_reason="stop",
            prompt_tokens=len(prompt),
            completion_tokens=len(self.answer),
            prefill_seconds=0.001,
            total_seconds=0.002,
            positions="compacted",
            model=self.model_name,
        )

    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        self.requests.append((request, params))
        return self._output(request)

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        self.requests.append((request, params))
        half = len(self.answer) // 2
        yield StreamChunk(self.answer[:half])
        yield StreamChunk(self.answer[half:], output=self._output(request))
