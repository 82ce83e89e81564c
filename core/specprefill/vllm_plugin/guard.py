"""Server-side checks on client-supplied position maps, and the cache salt the server enforces (pure).

Anyone who can reach a vLLM server can put :data:`~.positions.XARG_RUNS` / :data:`~.positions.XARG_LENGTH`
into ``vllm_xargs``. Before the server spends any work proportional to their size, :func:`check_request_map`
bounds them by what the request itself allows:

* the number of runs is at most the prompt length (every run keeps at least one token);
* the kept count (sum of the run lengths) equals the prompt length;
* the original length is at most ``max_model_len`` (positions past it have no RoPE meaning);
* every value is a plain non-negative integer: ``bool``, floats (NaN included), strings and ``None`` are
  rejected.

A rejected map raises :class:`PositionMapRejectedError`, a ``ValueError`` too, so vLLM's OpenAI server answers it
with a 400 reply instead of running the prompt at compacted positions that the client would read as
``positions="original"``.

Prefix caching hashes token ids, not positions, and vLLM takes the ``cache_salt`` from the client. So the
server decides the salt itself (:func:`enforced_salt`): a request with positions always gets the salt derived
from its map (the client's salt is mixed in, keeping tenant isolation), and a request without positions can
never carry a salt from that namespace. Pruned and unpruned requests therefore never share KV blocks,
whatever the client sends.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specprefill.vllm_plugin.positions import (
    SALT_PREFIX,
    XARG_LENGTH,
    XARG_RUNS,
    PositionMap,
    PositionSpecError,
    cache_salt,
)

__all__ = [
    "MAX_POSITION",
    "PLAIN_SALT_PREFIX",
    "PositionMapRejectedError",
    "check_original_length",
    "check_request_map",
    "check_run_count",
    "enforced_salt",
    "has_position_keys",
    "strict_int",
]

MAX_POSITION = 2**31 - 1
"""Largest original length accepted when the server's ``max_model_len`` is unknown (int32 positions)."""

PLAIN_SALT_PREFIX = "specprefill-plain-"
"""Prefix given to a client salt that imitates a derived one on a request WITHOUT positions."""


class PositionMapRejectedError(PositionSpecError, ValueError):
    """A client-supplied position map breaks a bound of its request (vLLM answers it with HTTP 400)."""


def has_position_keys(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether ``extra_args`` carries either SpecPrefill position key (O(1))."""
    if not extra_args:
        return False
    return XARG_RUNS in extra_args or XARG_LENGTH in extra_args


def strict_int(value: Any, what: str) -> int:
    """``value`` as a non-negative int; bools, floats (NaN too), strings and None are rejected.

    Raises:
        PositionMapRejectedError: With the offending value's type, never its (possibly huge) text.

    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "NaN" if isinstance(value, float) and math.isnan(value) else type(value).__name__
        raise PositionMapRejectedError(f"{what} must be a non-negative integer, got {kind}")
    number = int(value)
    if number < 0:
        raise PositionMapRejectedError(f"{what} must be a non-negative integer, got {number}")
    return number


def check_original_length(value: Any, *, max_model_len: int | None) -> int:
    """Validate :data:`XARG_LENGTH` (O(1)).

    Raises:
        PositionMapRejectedError: Not a non-negative integer, zero, or above ``max_model_len``.

    """
    limit = MAX_POSITION if max_model_len is None else int(max_model_len)
    n = strict_int(value, XARG_LENGTH)
    if n < 1 or n > limit:
        raise PositionMapRejectedError(f"{XARG_LENGTH}={n} must be between 1 and max_model_len={limit}")
    return n


def check_run_count(runs: Any, *, max_tokens: int) -> Sequence[Any]:
    """Validate the container of :data:`XARG_RUNS` by its size alone (O(1)), before reading any item.

    Args:
        runs: The value the client sent.
        max_tokens: The most tokens the request can have kept (its prompt length, or ``max_model_len``
            while the prompt is not tokenised yet); each run keeps at least one.

    Raises:
        PositionMapRejectedError: Not a list, an odd or zero item count, or more runs than ``max_tokens``.

    """
    if not isinstance(runs, (list, tuple)):
        raise PositionMapRejectedError(f"{XARG_RUNS} must be a flat list of integers, got {type(runs).__name__}")
    count = len(runs)
    if count == 0 or count % 2:
        raise PositionMapRejectedError(f"{XARG_RUNS} must hold [orig_start, length] pairs, got {count} items")
    if count // 2 > max_tokens:
        raise PositionMapRejectedError(
            f"{XARG_RUNS} has {count // 2} runs but the prompt has at most {max_tokens} tokens; "
            "every run keeps at least one"
        )
    return runs


def check_request_map(
    extra_args: Mapping[str, Any] | None,
    *,
    prompt_len: int | None,
    max_model_len: int | None,
    prompt_may_grow: bool = False,
) -> PositionMap | None:
    """The validated position map of one request, or None when it carries no position keys.

    All size checks run before any item of the runs list is read, so a hostile list costs O(1) to refuse;
    the full parse is then bounded by the prompt length.

    Args:
        extra_args: ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP).
        prompt_len: Number of prompt token ids vLLM will prefill (None: not known yet; then only the bounds
            that ``max_model_len`` implies are checked and the kept count is not).
        max_model_len: The engine's context length (None: :data:`MAX_POSITION`).
        prompt_may_grow: ``prompt_len`` may include generated tokens (a worker sees a preempted request
            again as a new one whose prompt holds its output so far): the kept count must then be at most
            ``prompt_len`` instead of equal to it.

    Returns:
        The map (possibly the identity map), or None.

    Raises:
        PositionMapRejectedError: Any rule broken; the message names it.

    """
    if extra_args is None or not has_position_keys(extra_args):
        return None
    if XARG_RUNS not in extra_args or XARG_LENGTH not in extra_args:
        missing = XARG_LENGTH if XARG_RUNS in extra_args else XARG_RUNS
        raise PositionMapRejectedError(f"vllm_xargs has one specprefill key but not {missing!r}; send both or neither")
    n = check_original_length(extra_args[XARG_LENGTH], max_model_len=max_model_len)
    bound = n if prompt_len is None else min(n, int(prompt_len))
    runs = check_run_count(extra_args[XARG_RUNS], max_tokens=bound)
    values = [strict_int(v, f"every item of {XARG_RUNS}") for v in runs]
    try:
        pmap = PositionMap.from_runs(values, n)
    except PositionSpecError as exc:
        raise PositionMapRejectedError(str(exc)) from exc
    if prompt_len is not None and (pmap.n_kept > prompt_len if prompt_may_grow else pmap.n_kept != prompt_len):
        rule = "it must be at most that" if prompt_may_grow else "they must be equal"
        raise PositionMapRejectedError(
            f"{XARG_RUNS} keeps {pmap.n_kept} tokens but the prompt has {prompt_len}; {rule}"
        )
    return pmap


def enforced_salt(pmap: PositionMap | None, client_salt: str | None) -> str | None:
    """The cache salt the server gives a request, whatever salt the client sent.

    Args:
        pmap: The request's validated map (None or identity: positions are vLLM's own).
        client_salt: The ``cache_salt`` the client sent.

    Returns:
        With positions: the salt derived from the map and the client's salt. Without: the client's salt,
        unless it lies in the derived namespace (``specprefill-...``), which it is then moved out of.

    """
    if pmap is not None and not pmap.is_identity:
        return cache_salt(pmap, client_salt)
    if client_salt and client_salt.startswith(SALT_PREFIX):
        return PLAIN_SALT_PREFIX + hashlib.sha256(client_salt.encode()).hexdigest()[:48]
    return client_salt
