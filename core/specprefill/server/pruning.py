"""Pure parts of server-side pruning: vLLM's rendered prompt as a prepared prompt, and the scoring job.

Nothing here imports vLLM; :mod:`specprefill.server.hooks` moves data between vLLM and these functions.
Request settings are checked by :mod:`specprefill.wire.xargs` and the stats object is
:mod:`specprefill.wire.stats`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.prompt.prepared import PreparedPrompt, ScoredPrompt
from specprefill.prompt.protect import protection_for_messages
from specprefill.result import Message
from specprefill.scoring.select import select_scored
from specprefill.spans import Span
from specprefill.speculator.base import Speculator

__all__ = [
    "TOKENIZER_PROBE",
    "Outcome",
    "ScoreJob",
    "TokenizerMismatchError",
    "aligned_offsets",
    "locate_contents_from_end",
    "outcome_of",
    "prepare_tokens",
]

TOKENIZER_PROBE = "SpecPrefill tokenizer probe: naïve café, 12345, <tag>"
"""Text the served model's tokenizer and the speculator's must split into the same ids (checked once)."""

_checked: dict[int, bool] = {}


def aligned_offsets(speculator: Speculator, text: str, ids: Sequence[int]) -> list[Span] | None:
    """Character offsets of ``ids`` in ``text``: the speculator's tokenisation when it gives exactly ``ids``."""
    for encode in (speculator.encode, speculator.encode_with_specials):
        got, offsets = encode(text)
        if list(got) == list(ids):
            return offsets
    return None


class TokenizerMismatchError(PromptError):
    """The speculator's tokenizer differs from the served model's; server-side pruning needs the same one."""


@dataclass(frozen=True)
class Outcome:
    """What scoring decided for one request."""

    kept: npt.NDArray[np.int64]
    """Sorted kept token indices (all of them when nothing was pruned)."""
    seconds: float
    """Speculator wall time (tokenisation alignment, scoring, selection)."""
    fallback_reason: str | None = None
    """Why the request is served unpruned although pruning was asked for (None: no fault)."""


def locate_contents_from_end(rendered: str, contents: Sequence[str]) -> list[Span]:
    """Each message content's span in vLLM's rendering: the LAST in-order placement, searched from the end.

    Templates render the tools block (and a default system prompt) before the messages. A forward search
    would take a content that also occurs there (a question that repeats a tool's description) for that
    text: the tools block would be pruned and the real content protected as template. From the end, each
    content is the last occurrence before the next content's span. A content that is not found gets the
    empty span at that limit (it is then treated as template); a stripped match is tried too.
    """
    spans: list[Span] = []
    limit = len(rendered)
    for content in reversed(contents):
        for candidate in (content, content.strip()):
            pos = rendered.rfind(candidate, 0, limit) if candidate else -1
            if pos >= 0:
                spans.append((pos, pos + len(candidate)))
                limit = pos
                break
        else:
            spans.append((limit, limit))
    return spans[::-1]


def prepare_tokens(
    speculator: Speculator,
    ids: Sequence[int],
    config: SpecPrefillConfig,
    *,
    text: str | None = None,
    messages: list[Message] | None = None,
) -> PreparedPrompt:
    """The first half of :func:`score_tokens`: vLLM's ids as a prepared prompt with chat protection.

    Raises:
        PromptError: A chat prompt whose text the speculator does not tokenise into ``ids``.

    """
    offsets = aligned_offsets(speculator, text, ids) if text is not None else None
    protected = np.zeros(len(ids), dtype=np.bool_)
    spans: list[Span] | None = None
    if messages is not None:
        if offsets is None or text is None:
            raise PromptError("the speculator does not tokenise the rendered chat into vLLM's token ids")
        spans = locate_contents_from_end(text, [m["content"] for m in messages])
        protected = protection_for_messages(offsets, text, messages, spans, config)
    return PreparedPrompt(
        list(ids),
        protected,
        text=text if offsets is not None else None,
        offsets=offsets,
        messages=messages,
        content_spans=spans,
    )


def outcome_of(scored: ScoredPrompt, config: SpecPrefillConfig, started: float) -> Outcome:
    """The second half of :func:`score_tokens`: select the kept chunks of a scored prompt.

    Args:
        scored: The scored prompt (alone or from a batch, :meth:`Speculator.score_prompts`).
        config: The request's config.
        started: ``time.perf_counter()`` when the request's scoring began (for ``Outcome.seconds``).

    """
    kept = select_scored(scored, config)
    return Outcome(kept=kept, seconds=time.perf_counter() - started, fallback_reason=scored.fallback_reason)


@dataclass
class ScoreJob:
    """One request's scoring job: picklable (it may run in the scoring host) and batchable.

    Called alone it is ``prepare`` then ``finish``; in a micro-batch the service calls
    :meth:`prepare` for every job, scores all prepared prompts together
    (:meth:`~specprefill.speculator.base.Speculator.score_prompts`) and calls :meth:`finish` with each result.
    """

    ids: list[int]
    config: SpecPrefillConfig
    text: str | None = None
    messages: list[Message] | None = None
    probe: list[int] | None = None
    """The served model's ids for :data:`TOKENIZER_PROBE` (None: skip the tokenizer check)."""
    started: float = 0.0

    def __call__(self, speculator: Speculator) -> Outcome:
        """Score and select alone."""
        return self.finish(speculator, speculator.score_prompt(*self.prepare(speculator)))

    def prepare(self, speculator: Speculator) -> tuple[PreparedPrompt, SpecPrefillConfig]:
        """Check the tokenizer and build the prepared prompt (the part before the model runs).

        Raises:
            TokenizerMismatchError: The speculator tokenises differently from the served model.

        """
        self.started = time.perf_counter()
        key = id(speculator)
        if key not in _checked and self.probe is not None:
            _checked[key] = list(speculator.encode(TOKENIZER_PROBE)[0]) == self.probe
        if not _checked.get(key, True):
            raise TokenizerMismatchError(
                f"speculator {speculator.name!r} does not share the served model's tokenizer; server-side pruning "
                "needs a speculator of the same family (e.g. Llama-3.1-8B-Instruct for Llama-3.1-70B-Instruct)"
            )
        prepared = prepare_tokens(speculator, self.ids, self.config, text=self.text, messages=self.messages)
        return prepared, self.config

    def finish(self, speculator: Speculator, scored: ScoredPrompt) -> Outcome:
        """Select the kept chunks of this job's scored prompt."""
        return outcome_of(scored, self.config, self.started)
