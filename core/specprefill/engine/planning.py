"""The engine's planning core: from a prune result (or a speculator failure) to the request the base gets.

Pure functions shared by every engine entry point (sync and async, generate and stream): the engine only
decides *where* scoring runs; *what* goes to the base is decided here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specprefill.backends.base import BaseRequest
from specprefill.errors import EmptyPromptError, PromptError
from specprefill.prompt.messages import validate_messages
from specprefill.prompt.prepared import Prompt, prompt_kind
from specprefill.result import PruneResult, PruneStats

__all__ = ["Plan", "bare_prune", "fallback_plan", "full_request", "is_token_ids", "plan_request"]


@dataclass(frozen=True)
class Plan:
    """What one call sends to the base, and what the speculator decided."""

    prune: PruneResult | None
    """What the speculator kept; None when it could not run (see :meth:`prune_result`)."""
    request: BaseRequest
    speculator_name: str
    fallback_prompt: Prompt | None = None
    """Set when the speculator raised outside ``prune``; the whole prompt went to the base."""
    fallback_reason: str | None = None
    """Why the speculator could not run."""

    def prune_result(self, base_prompt_tokens: int) -> PruneResult:
        """The prune result of the call: the speculator's, or, after a fallback, the whole prompt's.

        A fallback's result is built once, here, when the base has said how long the prompt was.
        """
        if self.prune is not None:
            return self.prune
        return bare_prune(self.fallback_prompt or "", base_prompt_tokens, self.speculator_name, self.fallback_reason)


def is_token_ids(prompt: Prompt) -> bool:
    """Whether ``prompt`` is a non-empty sequence of integer token ids (not text, not messages)."""
    try:
        return prompt_kind(prompt)[0] == "token_ids"
    except PromptError:
        return False


def plan_request(prompt: Prompt, pruned: PruneResult, *, same_tokenizer: bool, speculator_name: str) -> Plan:
    """The base request for a prune result.

    Token form with original positions when the base shares the speculator's tokenizer; otherwise the kept
    messages or text (the base re-tokenises, positions compacted). Unpruned prompts go whole.

    Args:
        prompt: The caller's prompt.
        pruned: What the speculator kept.
        same_tokenizer: Whether the base takes the speculator's token ids.
        speculator_name: For statistics.

    Returns:
        The :class:`Plan`.

    """
    if not pruned.stats.pruned or len(pruned.kept_token_ids) == pruned.original_length:
        request = full_request(prompt, pruned, same=same_tokenizer)
    elif same_tokenizer:
        request = BaseRequest(
            token_ids=list(pruned.kept_token_ids),
            position_ids=[int(i) for i in pruned.kept_indices],
            original_length=pruned.original_length,
            text=None if pruned.messages is not None else pruned.text,
            messages=pruned.messages,
        )
    elif pruned.messages is not None:
        request = BaseRequest(messages=pruned.messages)
    else:
        request = BaseRequest(text=pruned.text)
    return Plan(pruned, request, speculator_name)


def fallback_plan(prompt: Prompt, speculator_name: str, reason: str) -> Plan:
    """The plan when the speculator could not run at all (e.g. it failed to load): the whole prompt."""
    request = full_request(prompt, None, same=False)
    return Plan(None, request, speculator_name, fallback_prompt=prompt, fallback_reason=reason)


def full_request(prompt: Prompt, pruned: PruneResult | None, *, same: bool) -> BaseRequest:
    """The whole, unpruned prompt.

    With the speculator's token ids (positions ``0..N-1``) when the base shares its tokenizer; otherwise
    the original text or messages. A token-id prompt for a base with another tokenizer goes as decoded
    text; without any speculator (it could not load) the ids go as they are.

    Raises:
        EmptyPromptError: The prompt is empty or only white space.

    """
    if pruned is not None and same:
        ids = list(pruned.input_ids)
        return BaseRequest(
            token_ids=ids,
            position_ids=list(range(len(ids))),
            original_length=len(ids),
            text=prompt if isinstance(prompt, str) else None,
            messages=pruned.messages,
        )
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty or only white space")
        return BaseRequest(text=prompt)
    if is_token_ids(prompt):
        if pruned is not None:
            return BaseRequest(text=pruned.text)
        ids = _ids(prompt)
        return BaseRequest(token_ids=ids, position_ids=list(range(len(ids))), original_length=len(ids))
    return BaseRequest(messages=validate_messages(list(prompt)))


def bare_prune(prompt: Prompt, tokens: int, speculator: str, reason: str | None) -> PruneResult:
    """A prune result for a prompt the speculator never saw (everything kept, ``fallback=True``)."""
    ids = _ids(prompt) if is_token_ids(prompt) else []
    n = len(ids) or tokens
    stats = PruneStats(
        tokens_in=n,
        tokens_kept=n,
        keep_ratio=1.0,
        keep_rate=1.0,
        pruned=False,
        fallback=True,
        fallback_reason=reason,
        speculator=speculator,
    )
    text = prompt if isinstance(prompt, str) else ""
    messages = None if isinstance(prompt, str) or ids else validate_messages(list(prompt))
    return PruneResult(
        original_length=n,
        input_ids=ids,
        kept_indices=np.arange(n, dtype=np.int64),
        kept_token_ids=ids,
        text=text,
        stats=stats,
        source_text=text or None,
        messages=messages,
    )


def _ids(prompt: Prompt) -> list[int]:
    items: Sequence[Any] = prompt
    return [int(t) for t in items]
