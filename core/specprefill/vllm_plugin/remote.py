"""Client side of the plugin for OpenAI-compatible servers: finding out whether a server restores positions.

A stock vLLM server accepts ``vllm_xargs`` but ignores the position keys, so the only reliable test is
behavioural. :func:`probe_position_support` sends one short token-id prompt three times with
``max_tokens=1`` and ``logprobs=1``: twice plainly (to measure run-to-run noise) and once with its second
token moved to original position 31. A server with the plugin then answers differently (RoPE sees another
distance); a stock server answers the same. Any error (no logprobs, unknown parameters, 4xx) counts as
"not supported", so the caller falls back to compacted positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from specprefill.vllm_plugin.positions import PositionMap, request_extras

__all__ = ["PROBE_GAP", "positions_body", "probe_position_support"]

logger = logging.getLogger("specprefill.vllm_plugin")

PROBE_GAP = 31
"""Original position of the probe's second token (its first is at 0): small enough for any context."""

_MIN_EFFECT = 1e-4


def _first_logprob(response: Any) -> tuple[str | None, float] | None:
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None
    logprobs = getattr(choices[0], "logprobs", None)
    values = getattr(logprobs, "token_logprobs", None) if logprobs is not None else None
    tokens = getattr(logprobs, "tokens", None) if logprobs is not None else None
    if not values or values[0] is None:
        return None
    return (str(tokens[0]) if tokens else None), float(values[0])


def probe_position_support(client: Any, model: str, token_ids: Sequence[int], *, raise_errors: bool = False) -> bool:
    """Whether the server behind ``client`` prefills token-id prompts at the positions in ``vllm_xargs``.

    Args:
        client: An ``openai.OpenAI`` client (``with_options`` is used to turn retries off).
        model: Served model name.
        token_ids: Any valid token ids of the server's vocabulary (the first two are used).
        raise_errors: Let a failed request raise (so a caller can tell a transient failure from a "no")
            instead of answering False.

    Returns:
        True only when the positioned request answers measurably differently from two identical plain ones.

    """
    ids = [int(t) for t in token_ids[:2]]
    if not ids:
        return False
    if len(ids) == 1:
        ids = ids * 2
    pmap = PositionMap.from_positions([0, PROBE_GAP], PROBE_GAP + 1)
    quiet = client.with_options(max_retries=0)
    base = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
    try:
        plain = [_first_logprob(quiet.completions.create(**base)) for _ in range(2)]
        moved = _first_logprob(
            quiet.completions.create(**base, extra_body={"vllm_xargs": pmap.to_xargs(), "cache_salt": pmap.salt()})
        )
    except Exception as exc:  # any failure means "cannot restore positions there"
        if raise_errors:
            raise
        logger.info("specprefill: position probe failed (%s); assuming the server cannot restore positions", exc)
        return False
    first, second = plain
    if first is None or second is None or moved is None:
        logger.info("specprefill: the server returned no logprobs to the position probe; assuming no support")
        return False
    noise = abs(first[1] - second[1])
    effect = abs(first[1] - moved[1])
    supported = (moved[0] != first[0] and first[0] == second[0]) or effect > max(_MIN_EFFECT, 10 * noise)
    logger.info(
        "specprefill: position probe: plain logprob %.6f (noise %.2e), moved %.6f -> %s",
        first[1],
        noise,
        moved[1],
        "positions restored" if supported else "positions ignored (stock server)",
    )
    return supported


def positions_body(
    token_ids: Sequence[int],
    position_ids: Sequence[int] | None,
    original_length: int | None,
    *,
    user_salt: str | None = None,
) -> dict[str, Any] | None:
    """The ``extra_body`` for a pruned token-id request (``vllm_xargs`` + ``cache_salt``), None when unpruned."""
    xargs, salt = request_extras(position_ids, original_length, n_tokens=len(token_ids), user_salt=user_salt)
    if not xargs:
        return None
    body: dict[str, Any] = {"vllm_xargs": xargs}
    if salt:
        body["cache_salt"] = salt
    return body
