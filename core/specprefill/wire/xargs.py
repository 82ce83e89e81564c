"""Client side of server-side pruning: per-request overrides out, the server's stats object in.

A vLLM server running the specprefill plugin with a speculator prunes every prompt it renders. Clients send
the FULL prompt; per request they may override two settings through ``vllm_xargs`` (:data:`KEEP_RATE_XARG`,
:data:`MAX_KEPT_XARG`) and they get the pruning stats back as a top-level ``"specprefill"`` object beside
``"usage"`` (streaming: on the final chunk). Both integrations in server mode use these helpers, so a
missing or malformed stats object fails the same way everywhere: with :class:`ServerStatsError`, never as a
silent success (an answer without stats cannot tell an unpruned prompt from a pruned one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from specprefill.config import SpecPrefillConfig
from specprefill.engine.callargs import GENERATION_ALIASES
from specprefill.errors import BackendError, ConfigurationError
from specprefill.result import STATS_KEY

__all__ = [
    "KEEP_RATE_XARG",
    "MAX_KEPT_XARG",
    "SERVER_OVERRIDES",
    "SERVER_STATS_FIELDS",
    "STATS_KEY",
    "ServerStatsError",
    "find_stats",
    "missing_stats_error",
    "openai_call_kwargs",
    "read_stats",
    "served_model",
    "server_xargs",
    "with_xargs",
]

KEEP_RATE_XARG = "specprefill_keep_rate"
"""``vllm_xargs`` key of the per-request keep rate (1.0 turns pruning off for that request)."""

MAX_KEPT_XARG = "specprefill_max_kept_tokens"
"""``vllm_xargs`` key of the per-request cap on kept tokens."""

SERVER_OVERRIDES = {"keep_rate": KEEP_RATE_XARG, "max_kept_tokens": MAX_KEPT_XARG}
"""The :class:`~specprefill.SpecPrefillConfig` fields a request may override on the server, and their keys."""

SERVER_STATS_FIELDS: dict[str, tuple[type, ...]] = {
    "tokens_in": (int,),
    "tokens_kept": (int,),
    "keep_ratio": (float, int),
    "speculator_seconds": (float, int),
    "positions": (str,),
    "fallback": (bool,),
    "fallback_reason": (str, type(None)),
    "pruned": (bool,),
}
"""Keys every server stats object carries, with their JSON types (more keys may follow and are kept)."""


class ServerStatsError(BackendError):
    """A specprefill server's answer carried no stats object, or a malformed one."""


def server_xargs(*, caller: str, **overrides: Any) -> dict[str, Any]:
    """``vllm_xargs`` entries for per-request overrides, validated as :class:`SpecPrefillConfig` fields.

    Args:
        caller: Who asks, for error messages.
        **overrides: ``keep_rate`` and/or ``max_kept_tokens``; None values are left out (server default).

    Returns:
        ``{KEEP_RATE_XARG: ..., MAX_KEPT_XARG: ...}`` for the values given.

    Raises:
        ConfigurationError: Another config field (only the server's settings decide those), or a value out
            of range (e.g. ``keep_rate=0``).

    """
    given = {name: value for name, value in overrides.items() if value is not None}
    other = sorted(set(given) - set(SERVER_OVERRIDES))
    if other:
        raise ConfigurationError(
            f"{caller} in server mode can only override {sorted(SERVER_OVERRIDES)} per request, not {other}; "
            "the other pruning settings are the server's (SPECPREFILL_SERVER_CONFIG or SPECPREFILL_SERVER_* "
            "variables of `specprefill serve`)"
        )
    try:
        checked = SpecPrefillConfig(**given)
    except ValidationError as exc:
        raise ConfigurationError(f"{caller}: invalid pruning override: {exc}") from exc
    return {SERVER_OVERRIDES[name]: getattr(checked, name) for name in given}


def openai_call_kwargs(kwargs: Mapping[str, Any], *, caller: str) -> dict[str, Any]:
    """A server-mode call's keyword arguments in OpenAI names (``max_new_tokens`` becomes ``max_tokens``).

    ``keep_rate`` / ``max_kept_tokens`` stay (the clients turn them into ``vllm_xargs``); everything else
    (``tools``, ``response_format``, ...) is the OpenAI client's business.

    Raises:
        ConfigurationError: ``protected_spans`` or another pruning setting, which only the server decides.

    """
    to_openai = {ours: theirs for theirs, ours in GENERATION_ALIASES.items()}
    out = {to_openai.get(key, key): value for key, value in kwargs.items()}
    server_owned = (set(SpecPrefillConfig.model_fields) | {"protected_spans"}) - set(SERVER_OVERRIDES)
    refused = sorted(server_owned & set(out))
    if refused:
        raise ConfigurationError(
            f"{caller} in server mode cannot set {refused} per call: the server decides them (it protects the "
            f"chat template, system prompt, question and tools itself); only {sorted(SERVER_OVERRIDES)} travel"
        )
    return out


def with_xargs(extra_body: Mapping[str, Any] | None, xargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """``extra_body`` with ``xargs`` merged into its ``vllm_xargs`` (``xargs`` win over entries already there).

    Returns:
        A new dict, or None when there is nothing to send.

    """
    body = dict(extra_body or {})
    merged = {**dict(body.get("vllm_xargs") or {}), **xargs}
    if merged:
        body["vllm_xargs"] = merged
    return body or None


def read_stats(value: Any, *, source: str) -> dict[str, Any]:
    """The server's stats object, checked against :data:`SERVER_STATS_FIELDS`.

    Args:
        value: What the response held under ``"specprefill"``.
        source: Where it came from, for the error message (e.g. the server URL).

    Returns:
        A copy of the object (extra keys kept).

    Raises:
        ServerStatsError: Not an object, a key missing, or a value of the wrong type.

    """
    if not isinstance(value, Mapping):
        raise ServerStatsError(
            f"the {STATS_KEY!r} object from {source} is {type(value).__name__}, not a JSON object; the server's "
            "specprefill plugin and this client disagree on the wire format (upgrade both to the same version)"
        )
    problems = []
    for key, types in SERVER_STATS_FIELDS.items():
        if key not in value:
            problems.append(f"{key} missing")
            continue
        item = value[key]
        wrong_bool = isinstance(item, bool) and bool not in types
        if wrong_bool or not isinstance(item, types):
            problems.append(f"{key}={item!r} is not {'/'.join(t.__name__ for t in types)}")
    if problems:
        raise ServerStatsError(
            f"malformed {STATS_KEY!r} object from {source}: {'; '.join(problems)}; the server's specprefill "
            "plugin and this client disagree on the wire format (upgrade both to the same version)"
        )
    return dict(value)


def find_stats(body: Mapping[str, Any], *, source: str) -> dict[str, Any] | None:
    """The checked stats object of a response body or stream chunk, or None when it has none.

    A ``beta.chat.completions.stream`` event (``{"type": "chunk", "chunk": {...}}``) is looked into too.

    Raises:
        ServerStatsError: The object is there but malformed.

    """
    if STATS_KEY in body:
        return read_stats(body[STATS_KEY], source=source)
    inner = body.get("chunk")
    if isinstance(inner, Mapping) and STATS_KEY in inner:
        return read_stats(inner[STATS_KEY], source=source)
    return None


def missing_stats_error(source: str) -> ServerStatsError:
    """The error for an answer without stats: the server does not prune (no plugin, or no speculator)."""
    return ServerStatsError(
        f"the answer from {source} carries no {STATS_KEY!r} stats, so it is unknown whether the prompt was "
        "pruned. Point base_url at a vLLM server that prunes: `specprefill serve MODEL --speculator NAME` (or "
        "set SPECPREFILL_SERVER_SPECULATOR for a plain vLLM server with specprefill installed). To prune in "
        "this process instead, also pass speculator=..."
    )


def served_model(base_url: str, api_key: str, timeout: float | None) -> str:
    """The first model a server lists at ``/v1/models`` (what ``model=None`` means in server mode).

    Raises:
        ConfigurationError: The server lists no model.

    """
    import openai

    with openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=1) as client:
        models = [m.id for m in client.models.list()]
    if not models:
        raise ConfigurationError(f"the server at {base_url} lists no model at /v1/models; pass model=...")
    return models[0]
