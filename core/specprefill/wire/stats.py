"""The ``specprefill`` stats object: one schema, written by the server and read by every client.

Every server reply carries it under :data:`~specprefill.result.STATS_KEY` beside ``usage`` (streams: on the
final chunk), and the prune endpoint's reply holds it under ``stats``. :func:`stats_object` is the one writer,
:func:`read_stats` the one reader: it checks every key of :data:`STATS_FIELDS` and keeps any extra ones
(``kept_runs``, ``prompts``), so an old client reads a newer server. Clients that expect pruning use
:func:`find_stats`, which turns a malformed object into :class:`ServerStatsError`, and
:func:`missing_stats_error` when there is none: an answer without stats cannot tell an unpruned prompt from
a pruned one, so it is never a silent success.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from specprefill.errors import BackendError
from specprefill.result import STATS_KEY, PruneStats
from specprefill.wire.fields import WireFormatError, as_bool, as_int, as_mapping, as_number, as_optional_str

__all__ = [
    "POSITIONS",
    "STATS_FIELDS",
    "STATS_KEY",
    "Positions",
    "ServerStatsError",
    "find_stats",
    "merge_stats",
    "missing_stats_error",
    "prune_stats_object",
    "read_stats",
    "stats_object",
]

Positions = Literal["original", "none"]
"""``original``: the kept tokens were prefilled at their original positions; ``none``: nothing was restored."""

POSITIONS: tuple[Positions, ...] = ("original", "none")

STATS_FIELDS = (
    "tokens_in",
    "tokens_kept",
    "keep_ratio",
    "speculator_seconds",
    "positions",
    "fallback",
    "fallback_reason",
    "pruned",
)
"""Keys every stats object carries (more may follow, e.g. ``kept_runs`` or ``prompts``)."""


class ServerStatsError(BackendError):
    """A specprefill server's answer carried no stats object, or a malformed one."""


def stats_object(
    tokens_in: int,
    tokens_kept: int,
    *,
    speculator_seconds: float = 0.0,
    fallback_reason: str | None = None,
    positions: Positions | None = None,
) -> dict[str, Any]:
    """The stats object of one prompt.

    Args:
        tokens_in: Prompt tokens.
        tokens_kept: Tokens kept (all of them when nothing was pruned).
        speculator_seconds: Scoring and selection time.
        fallback_reason: The stable code of why pruning was asked for but the prompt ran whole (None: no fault).
        positions: Whether original positions were restored (default: ``original`` when tokens were dropped
            on a server that prefills the kept ones at their positions, else ``none``).

    """
    pruned = tokens_kept < tokens_in
    return {
        "tokens_in": tokens_in,
        "tokens_kept": tokens_kept,
        "keep_ratio": tokens_kept / tokens_in if tokens_in else 1.0,
        "speculator_seconds": round(speculator_seconds, 6),
        "positions": positions or ("original" if pruned else "none"),
        "fallback": fallback_reason is not None,
        "fallback_reason": fallback_reason,
        "pruned": pruned,
    }


def prune_stats_object(stats: PruneStats) -> dict[str, Any]:
    """The stats object of a pruning whose kept text goes back to the caller (no positions restored).

    A speculator failure is reported as the code ``"error"``; its text stays in the server log.
    """
    return stats_object(
        stats.tokens_in,
        stats.tokens_kept,
        speculator_seconds=stats.speculator_seconds,
        fallback_reason="error" if stats.fallback_reason else None,
        positions="none",
    )


def merge_stats(items: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One stats object for a response that ran several prompts (``/v1/completions`` with a list)."""
    if not items:
        return None
    if len(items) == 1:
        return dict(items[0])
    reasons = sorted({str(s["fallback_reason"]) for s in items if s.get("fallback_reason")})
    positions = {s.get("positions") for s in items}
    merged = stats_object(
        sum(int(s["tokens_in"]) for s in items),
        sum(int(s["tokens_kept"]) for s in items),
        speculator_seconds=sum(float(s["speculator_seconds"]) for s in items),
        fallback_reason=",".join(reasons) or None,
        positions="original" if "original" in positions else "none",
    )
    merged["prompts"] = [dict(s) for s in items]
    return merged


def read_stats(value: object, where: str = "stats") -> dict[str, Any]:
    """Validate a stats object read from the wire; returns a copy (extra keys kept).

    Raises:
        WireFormatError: Not an object, a key of :data:`STATS_FIELDS` missing, or a value of the wrong type.

    """
    obj = as_mapping(value, where)
    missing = [k for k in STATS_FIELDS if k not in obj]
    if missing:
        raise WireFormatError(f"{where} lacks {missing}", f"{where}.{missing[0]}")
    as_int(obj["tokens_in"], f"{where}.tokens_in")
    as_int(obj["tokens_kept"], f"{where}.tokens_kept")
    as_number(obj["keep_ratio"], f"{where}.keep_ratio")
    as_number(obj["speculator_seconds"], f"{where}.speculator_seconds")
    as_bool(obj["fallback"], f"{where}.fallback")
    as_optional_str(obj["fallback_reason"], f"{where}.fallback_reason")
    as_bool(obj["pruned"], f"{where}.pruned")
    if obj["positions"] not in POSITIONS:
        raise WireFormatError(f"{where}.positions must be one of {list(POSITIONS)}", f"{where}.positions")
    return dict(obj)


def find_stats(body: Mapping[str, Any], *, source: str) -> dict[str, Any] | None:
    """The checked stats object of a response body or stream chunk, or None when it has none.

    A ``beta.chat.completions.stream`` event (``{"type": "chunk", "chunk": {...}}``) is looked into too.

    Raises:
        ServerStatsError: The object is there but malformed (the server's plugin and this client disagree).

    """
    inner = body.get("chunk")
    holder = body if STATS_KEY in body else inner if isinstance(inner, Mapping) and STATS_KEY in inner else None
    if holder is None:
        return None
    try:
        return read_stats(holder[STATS_KEY], STATS_KEY)
    except WireFormatError as exc:
        raise ServerStatsError(
            f"malformed {STATS_KEY!r} object from {source}: {exc}; the server's specprefill plugin and this client "
            "disagree on the wire format (upgrade both to the same version)"
        ) from exc


def missing_stats_error(source: str) -> ServerStatsError:
    """The error for an answer without stats: the server does not prune (no plugin, or no speculator)."""
    return ServerStatsError(
        f"the answer from {source} carries no {STATS_KEY!r} stats, so it is unknown whether the prompt was "
        "pruned. Point base_url at a vLLM server that prunes: `specprefill serve MODEL --speculator NAME` (or "
        "set SPECPREFILL_SERVER_SPECULATOR for a plain vLLM server with specprefill installed). To prune in "
        "this process instead, also pass speculator=..."
    )
