"""The one shared set of hermetic fakes (unit tests only): a configurable speculator and a configurable base.

:class:`FakeSpeculator` is a real :class:`~specprefill.speculator.base.Speculator`: one token per character
(id = code point), a deterministic importance (a rising ramp, and 1.0 on every ``hot`` word), an optional
delay and an optional failure. :class:`FakeBackend` is a real :class:`~specprefill.backends.base.BaseBackend`:
a scripted reply, every request and parameter set recorded, an optional delay and an optional failure.
A :class:`BosSpeculator` (and its one-token-per-word :class:`WordSpeculator`) adds a zero-width special token
for the prompt-location tests. The presets at the end are the configurations the test modules share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from specprefill import SpecPrefillConfig
from specprefill.backends.base import BaseBackend, BaseOutput, BaseRequest, GenerationParams, StreamChunk
from specprefill.engine import SpecPrefillEngine
from specprefill.prompt.messages import plain_chat
from specprefill.spans import Span
from specprefill.speculator.base import ImportanceResult, Speculator

Template = Callable[[list[dict[str, Any]]], str]


def role_tags(messages: list[dict[str, Any]]) -> str:
    """A minimal chat template: ``<|role|>`` lines, then the assistant tag."""
    body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return body + "<|assistant|>\n"


def chatml(messages: list[dict[str, Any]]) -> str:
    """A ChatML-like template that strips white space around contents, like many real ones."""
    body = "".join(f"<|im_start|>{m['role']}\n{str(m['content']).strip()}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


class FakeSpeculator(Speculator):
    """One token per character; importance is a ramp rising to the end, with 1.0 on every ``hot`` word.

    Args:
        name: The speculator's name (shows in stats).
        hot: Words whose every occurrence scores 1.0.
        ramp: ``(low, high)`` of the linear ramp over the prompt, or None for the token index itself.
        template: Renders chat messages to text.
        fail: Raised by :meth:`score` when set (after counting the call).
        delay: Seconds each :meth:`score` call sleeps first.
    """

    def __init__(
        self,
        *,
        name: str = "char-spec",
        hot: Sequence[str] = (),
        ramp: tuple[float, float] | None = (0.0, 1.0),
        template: Template = plain_chat,
        fail: BaseException | None = None,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.hot = tuple(hot)
        self.ramp = ramp
        self.template = template
        self.fail = fail
        self.delay = delay
        self.calls = 0
        self.scored: list[str] = []

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        return self.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return self.template(messages)

    def importance(self, text: str) -> np.ndarray:
        """The deterministic per-character importance of ``text``."""
        n = len(text)
        if self.ramp is None:
            values = np.arange(n, dtype=np.float32)
        else:
            values = np.linspace(self.ramp[0], self.ramp[1], n, dtype=np.float32)
        for word in self.hot:
            start = text.find(word)
            while start >= 0:
                values[start : start + len(word)] = 1.0
                start = text.find(word, start + 1)
        return values

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        text = self.decode(input_ids)
        self.scored.append(text)
        return ImportanceResult(self.importance(text), [], queries=1, windows=1)

    @property
    def vocab_size(self) -> int:
        return 0x110000


class BosSpeculator(FakeSpeculator):
    """A tokenizer with a special token: token 0 is a zero-width BOS, ids are code points + 1 in a 1000-token
    vocabulary; upper-case letters are important (1.0), everything else 0.01."""

    def __init__(self, template: Template = chatml) -> None:
        super().__init__(name="char-fake", template=template)

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        return [min(ord(c), 998) + 1 for c in text], [(i, i + 1) for i in range(len(text))]

    def encode_with_specials(self, text: str) -> tuple[list[int], list[Span]]:
        ids, offsets = self.encode(text)
        return [0, *ids], [(0, 0), *offsets]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join("<s>" if t == 0 else chr(t - 1) for t in token_ids)

    def score(self, input_ids: Sequence[int], config: SpecPrefillConfig) -> ImportanceResult:
        imp = np.array([1.0 if chr(max(t - 1, 0)).isupper() else 0.01 for t in input_ids], dtype=np.float32)
        return ImportanceResult(imp, [], queries=1, windows=1)

    @property
    def vocab_size(self) -> int:
        return 1000


class WordSpeculator(BosSpeculator):
    """One token per word, with offsets that leave out the spaces (as some tokenizers report them)."""

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        offsets = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        ids = [ord(text[s]) + 1 if text[s:e].isupper() else 2 for s, e in offsets]
        return ids, offsets


Split = Literal["words", "chars", "halves"]


class FakeBackend(BaseBackend):
    """Answers ``reply`` and records every request (``requests``) and its parameters (``params``).

    Args:
        reply: The scripted answer.
        split: How it streams: ``"words"`` (word pieces, cut at a stop string or ``max_new_tokens`` words,
            then ``finish_reason="length"``), ``"chars"`` (one piece per character) or ``"halves"`` (two pieces).
        model: The base model's name.
        same: What :meth:`same_tokenizer` answers (token ids or text requests).
        max_positions: The ``max_position_embeddings`` it reports.
        delay: Seconds before each streamed piece (``asyncio.sleep`` on the native async path).
        fail: Raised when a call starts (after recording it).
        native_async: Own ``astream``/``agenerate`` (counted in ``async_calls``) instead of the base's thread.
        **output: Fields of the final :class:`BaseOutput` to set (``prefill_seconds``, ``token_ids``, ...).
    """

    kind = "fake"

    def __init__(
        self,
        reply: str = "ok!",
        *,
        split: Split = "words",
        model: str = "fake-base",
        same: bool = True,
        max_positions: int | None = None,
        delay: float = 0.0,
        fail: BaseException | None = None,
        native_async: bool = False,
        **output: Any,
    ) -> None:
        self.reply = reply
        self.split = split
        self.model_name = model
        self.same = same
        self.max_position_embeddings = max_positions
        self.delay = delay
        self.fail = fail
        self.native_async = native_async
        self.output_fields = output
        self.requests: list[BaseRequest] = []
        self.params: list[GenerationParams] = []
        self.async_calls = 0

    def same_tokenizer(self, speculator: object) -> bool:
        return self.same

    def _compare_tokenizer(self, speculator: object) -> bool:
        return self.same

    def _pieces(self, params: GenerationParams) -> tuple[list[str], str]:
        if self.split == "chars":
            return list(self.reply), "stop"
        if self.split == "halves":
            half = len(self.reply) // 2
            return [self.reply[:half], self.reply[half:]], "stop"
        text, finish = self.reply, "stop"
        for stop in params.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split(" ")
        if len(words) > params.max_new_tokens:
            words, finish = words[: params.max_new_tokens], "length"
        return [w if i == 0 else " " + w for i, w in enumerate(words)], finish

    def _output(self, request: BaseRequest, pieces: list[str], finish: str) -> BaseOutput:
        if request.token_ids is not None:
            prompt_tokens = len(request.token_ids)
            positions = "full" if request.original_length == prompt_tokens else "original"
        else:
            positions = "compacted"
            prompt_tokens = len(request.text or "") or sum(len(str(m["content"])) for m in request.messages or [])
        output = BaseOutput(
            text="".join(pieces), finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=len(pieces),
            positions=positions, model=self.model_name,  # type: ignore[arg-type]
        )  # fmt: skip
        return dataclasses.replace(output, **self.output_fields)

    def _chunks(self, request: BaseRequest, params: GenerationParams) -> list[StreamChunk]:
        self.requests.append(request)
        self.params.append(params)
        if self.fail is not None:
            raise self.fail
        pieces, finish = self._pieces(params)
        last = StreamChunk(pieces[-1] if pieces else "", output=self._output(request, pieces, finish))
        return [StreamChunk(piece) for piece in pieces[:-1]] + [last]

    def stream(self, request: BaseRequest, params: GenerationParams) -> Iterator[StreamChunk]:
        for chunk in self._chunks(request, params):
            if self.delay:
                time.sleep(self.delay)
            yield chunk

    async def astream(self, request: BaseRequest, params: GenerationParams) -> AsyncIterator[StreamChunk]:
        if not self.native_async:
            async for chunk in super().astream(request, params):
                yield chunk
            return
        self.async_calls += 1
        for chunk in self._chunks(request, params):
            await asyncio.sleep(self.delay)
            yield chunk

    async def agenerate(self, request: BaseRequest, params: GenerationParams) -> BaseOutput:
        if not self.native_async:
            return await super().agenerate(request, params)
        output = None
        async for chunk in self.astream(request, params):
            output = chunk.output or output
        assert output is not None
        return output


# --- presets shared by several test modules -------------------------------------------------------------------
def letter_speculator() -> FakeSpeculator:
    """Later characters matter more, importance = the token index (the LangChain tests)."""
    return FakeSpeculator(name="letter-spec", ramp=None)


def hot_word_speculator(hot: Sequence[str] = ("ANSWER",), *, fail: bool = False) -> FakeSpeculator:
    """``hot`` words score 1.0 over a small recency ramp; ``<|role|>`` chat (the LlamaIndex tests)."""
    failure = RuntimeError("scripted speculator failure") if fail else None
    return FakeSpeculator(name="char-fake", hot=hot, ramp=(0.0, 0.1), template=role_tags, fail=failure)


def scripted_backend(
    reply: str = "Hello there friend", *, model: str = "scripted-base", delay: float = 0.0
) -> FakeBackend:
    """Word pieces, natively async, same tokenizer (the LangChain tests)."""
    return FakeBackend(reply, model=model, delay=delay, native_async=True, prefill_seconds=0.01, total_seconds=0.02)


def answering_backend(answer: str = "Forty-two.", *, max_positions: int | None = 4096) -> FakeBackend:
    """A fixed answer in two pieces to a different tokenizer (the LlamaIndex tests)."""
    return FakeBackend(
        answer, split="halves", model="scripted-base", same=False, max_positions=max_positions,
        completion_tokens=len(answer), prefill_seconds=0.001, total_seconds=0.002,
    )  # fmt: skip


FAKE_CONFIG = SpecPrefillConfig(keep_rate=0.25, chunk_size=8, min_prompt_tokens=0, lookahead=1)


def fake_engine(reply: str = "Hello there friend", **backend_kwargs: Any) -> SpecPrefillEngine:
    """An engine with the letter speculator and a scripted base (no model, no sockets)."""
    return SpecPrefillEngine(letter_speculator(), scripted_backend(reply, **backend_kwargs), FAKE_CONFIG)


def recording_backend(same: bool = True) -> FakeBackend:
    """Answers "ok!" in three pieces, ``finish_reason="length"`` (the engine tests)."""
    return FakeBackend(
        "ok!", split="chars", same=same, finish_reason="length", token_ids=[1, 2, 3],
        prefill_seconds=0.25, total_seconds=0.5,
    )  # fmt: skip
