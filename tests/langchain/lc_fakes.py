"""Hermetic fakes for the LangChain adapter tests: a character-level speculator and a scripted base."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

import numpy as np

from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, StreamChunk
from specprefill.engine import SpecPrefillEngine
from specprefill.prompts import plain_chat
from specprefill.result import Message
from specprefill.spans import Span
from specprefill.speculator import ImportanceResult, Speculator


class LetterSpeculator(Speculator):
    """One token per character; a character's importance is its position (later matters more)."""

    name = "letter-spec"

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        return self.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def render_chat(self, messages: list[Message]) -> str:
        return plain_chat(messages)

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        return ImportanceResult(np.arange(len(input_ids), dtype=np.float32), [], 1, 1)

    @property
    def vocab_size(self) -> int:
        return 0x110000


class ScriptedBackend(BaseBackend):
    """Answers with ``reply`` in word pieces, natively async; remembers requests and parameters."""

    name = "scripted"

    def __init__(self, reply: str = "Hello there friend", *, model: str = "scripted-base", delay: float = 0.0) -> None:
        self.reply = reply
        self.model_name = model
        self.delay = delay
        self.requests: list[BaseRequest] = []
        self.params: list[GenerationParams] = []
        self.async_calls = 0

    def same_tokenizer(self, speculator: object) -> bool:
        return True

    def _pieces(self, params: GenerationParams) -> tuple[list[str], str]:
        text = self.reply
        finish = "stop"
        for stop in params.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split(" ")
        if len(words) > params.max_new_tokens:
            words, finish = words[: params.max_new_tokens], "length"
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        return pieces, finish

    def _output(self, request: BaseRequest, pieces: list[str], finish: str) -> BaseOutput:
        prompt_tokens = len(request.token_ids or [])
        return BaseOutput(
            text="".join(pieces),
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(pieces),
            prefill_seconds=0.01,
            total_seconds=0.02,
            positions="original" if prompt_tokens != request.original_length else "full",
            model=self.model_name,
        )

    def generate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        *_, last = self.stream(request, params)
        assert last.output is not None
        return last.output

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        self.requests.append(request)
        self.params.append(params)
        pieces, finish = self._pieces(params)
        for piece in pieces[:-1]:
            yield StreamChunk(piece)
        yield StreamChunk(pieces[-1] if pieces else "", output=self._output(request, pieces, finish))

    async def agenerate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        output = None
        async for chunk in self.astream(request, params):
            output = chunk.output or output
        assert output is not None
        return output

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        self.async_calls += 1
        for chunk in self.stream(request, params):
            await asyncio.sleep(self.delay)
            yield chunk


FAKE_CONFIG = SpecPrefillConfig(keep_rate=0.25, chunk_size=8, min_prompt_tokens=0, lookahead=1)


def fake_engine(reply: str = "Hello there friend", **backend_kwargs: object) -> SpecPrefillEngine:
    """An engine with the letter speculator and a scripted base (no model, no sockets)."""
    return SpecPrefillEngine(LetterSpeculator(), ScriptedBackend(reply, **backend_kwargs), FAKE_CONFIG)  # type: ignore[arg-type]
