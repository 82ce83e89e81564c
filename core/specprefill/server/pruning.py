"""Pure parts of server-side pruning: request overrides, chat protection, the scoring job and the stats object.

Nothing here imports vLLM; :mod:`specprefill.server.hooks` moves data between vLLM and these functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError
from specprefill.prompt.prepared import (
    PreparedPrompt,
    ScoredPrompt,
    locate_contents,
    message_text,
    protection_for_messages,
    select_scored,
)
from specprefill.result import Message
from specprefill.spans import Span
from specprefill.speculator.base import Speculator

__all__ = [
    "XARG_KEEP_RATE",
    "XARG_MAX_KEPT",
    "XARG_RETURN_KEPT",
    "Outcome",
    "aligned_offsets",
    "chat_messages",
    "merge_stats",
    "outcome_of",
    "parse_overrides",
    "prepare_tokens",
    "score_tokens",
    "stats_object",
    "wants_kept_runs",
]

XARG_KEEP_RATE = "specprefill_keep_rate"
"""``vllm_xargs`` key: this request's keep rate in (0, 1]; 1.0 turns pruning off."""

XARG_MAX_KEPT = "specprefill_max_kept_tokens"
"""``vllm_xargs`` key: this request's cap on kept (unprotected) tokens, an integer >= 1."""

XARG_RETURN_KEPT = "specprefill_return_kept"
"""``vllm_xargs`` key: ``true`` adds ``kept_runs`` (``[start, length, ...]`` of the kept prompt positions) to
the stats, e.g. to check that a tools block was kept whole."""


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"vllm_xargs.{key} must be a number, got {type(value).__name__} {value!r:.40}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigurationError(f"vllm_xargs.{key} must be finite, got {value!r}")
    return number


def parse_overrides(xargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The per-request :class:`~specprefill.SpecPrefillConfig` overrides in ``vllm_xargs``.

    Args:
        xargs: The request's ``vllm_xargs`` (None: no overrides).

    Returns:
        ``{"keep_rate": ..., "max_kept_tokens": ...}`` with only the keys the request set.

    Raises:
        ConfigurationError: A value is not a number, NaN/infinite, a keep rate outside (0, 1], or a token
            cap that is not a whole number >= 1 (the server answers HTTP 400).

    """
    if not xargs:
        return {}
    out: dict[str, Any] = {}
    if xargs.get(XARG_KEEP_RATE) is not None:
        rate = _number(xargs[XARG_KEEP_RATE], XARG_KEEP_RATE)
        if not 0.0 < rate <= 1.0:
            raise ConfigurationError(f"vllm_xargs.{XARG_KEEP_RATE} must be in (0, 1] (1.0 = no pruning), got {rate}")
        out["keep_rate"] = rate
    if xargs.get(XARG_MAX_KEPT) is not None:
        cap = _number(xargs[XARG_MAX_KEPT], XARG_MAX_KEPT)
        if cap < 1 or not cap.is_integer():
            raise ConfigurationError(f"vllm_xargs.{XARG_MAX_KEPT} must be a whole number >= 1, got {cap}")
        out["max_kept_tokens"] = int(cap)
    return out


def wants_kept_runs(xargs: Mapping[str, Any] | None) -> bool:
    """Whether the request asked for ``kept_runs`` in its stats (:data:`XARG_RETURN_KEPT`).

    Raises:
        ConfigurationError: The value is not a boolean.

    """
    value = (xargs or {}).get(XARG_RETURN_KEPT, False)
    # vLLM's request model turns JSON true/false into 1/0 (vllm_xargs holds str | int | float | list)
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise ConfigurationError(f"vllm_xargs.{XARG_RETURN_KEPT} must be true or false, got {value!r:.40}")


def chat_messages(messages: Sequence[Any]) -> list[Message] | None:
    """OpenAI chat messages as ``{"role", "content": text}`` dicts, or None when one holds non-text parts.

    Assistant turns with only tool calls get empty content (their rendering is template, so protected).
    """
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            return None
        try:
            text = message_text(dict(m))
        except PromptError:  # images, audio, ...: token ids hold placeholders; do not prune
            return None
        out.append({"role": m["role"], "content": text})
    return out


def aligned_offsets(speculator: Speculator, text: str, ids: Sequence[int]) -> list[Span] | None:
    """Character offsets of ``ids`` in ``text``: the speculator's tokenisation when it gives exactly ``ids``."""
    for encode in (speculator.encode, speculator.encode_with_specials):
        got, offsets = encode(text)
        if list(got) == list(ids):
            return offsets
    return None


@dataclass(frozen=True)
class Outcome:
    """What scoring decided for one request."""

    kept: npt.NDArray[np.int64]
    """Sorted kept token indices (all of them when nothing was pruned)."""
    seconds: float
    """Speculator wall time (tokenisation alignment, scoring, selection)."""
    fallback_reason: str | None = None
    """Why the request is served unpruned although pruning was asked for (None: no fault)."""


def score_tokens(
    speculator: Speculator,
    ids: Sequence[int],
    config: SpecPrefillConfig,
    *,
    text: str | None = None,
    messages: list[Message] | None = None,
) -> Outcome:
    """Score vLLM's rendered prompt ids and select the kept chunks (runs on the scoring thread).

    For chat prompts (``messages`` and the rendered ``text``) template tokens (everything outside message
    contents, so the whole tools block), system prompts and the end of the final user turn are protected,
    exactly as :meth:`Speculator.prune` protects messages.

    Raises:
        PromptError: A chat prompt whose text the speculator does not tokenise into ``ids`` (another tokenizer).
        SpeculatorError: Scoring failed and ``config.fallback_on_error`` is off.

    """
    start = time.perf_counter()
    prepared = prepare_tokens(speculator, ids, config, text=text, messages=messages)
    return outcome_of(speculator.score_prompt(prepared, config), config, start)


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
        spans = locate_contents(text, [m["content"] for m in messages])
        protected = protection_for_messages(offsets, len(text), messages, spans, config)
    return PreparedPrompt(
        list(ids),
        protected,
        text=text if offsets is not None else None,
        offsets=offsets,
        messages=messages,
        content_spans=spans,
        kind="messages" if messages is not None else "token_ids",
    )


def outcome_of(scored: ScoredPrompt, config: SpecPrefillConfig, started: float) -> Outcome:
    """The second half of :func:`score_tokens`: select the kept chunks of a scored prompt.

    Args:
        scored: The scored prompt (alone or from a batch, :meth:`Speculator.score_prompts`).
        config: The request's config.
        started: ``time.perf_counter()`` when the request's scoring began (for ``Outcome.seconds``).

    """
    kept = select_scored(scored, config, budget_protected=config.protected_count_toward_budget)
    return Outcome(kept=kept, seconds=time.perf_counter() - started, fallback_reason=scored.fallback_reason)


def stats_object(
    tokens_in: int,
    tokens_kept: int,
    *,
    speculator_seconds: float = 0.0,
    fallback_reason: str | None = None,
) -> dict[str, Any]:
    """The ``specprefill`` stats object of one response (the same keys in every server reply).

    ``positions`` is ``"original"`` when tokens were dropped (the kept ones keep their original positions),
    else ``"none"``; ``fallback`` is True when pruning was asked for but the request ran unpruned.
    """
    pruned = tokens_kept < tokens_in
    return {
        "tokens_in": tokens_in,
        "tokens_kept": tokens_kept,
        "keep_ratio": tokens_kept / tokens_in if tokens_in else 1.0,
        "speculator_seconds": round(speculator_seconds, 6),
        "positions": "original" if pruned else "none",
        "fallback": fallback_reason is not None,
        "fallback_reason": fallback_reason,
        "pruned": pruned,
    }


def merge_stats(items: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One stats object for a response that ran several prompts (``/v1/completions`` with a list)."""
    if not items:
        return None
    if len(items) == 1:
        return dict(items[0])
    reasons = [str(s["fallback_reason"]) for s in items if s.get("fallback_reason")]
    merged = stats_object(
        sum(int(s["tokens_in"]) for s in items),
        sum(int(s["tokens_kept"]) for s in items),
        speculator_seconds=sum(float(s["speculator_seconds"]) for s in items),
        fallback_reason=",".join(sorted(set(reasons))) or None,
    )
    merged["prompts"] = [dict(s) for s in items]
    return merged
