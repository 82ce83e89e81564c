"""Per-request pruning settings: the ``vllm_xargs`` keys, their one validation, and the client helpers.

A vLLM server running the specprefill plugin with a speculator prunes every prompt it renders. Clients send
the FULL prompt; per request they may override two settings through ``vllm_xargs`` (:data:`XARG_KEEP_RATE`,
:data:`XARG_MAX_KEPT`) and ask for the kept runs (:data:`XARG_RETURN_KEPT`). The prune endpoint takes the same
settings as JSON fields. Every path, the server's hook, the prune endpoint and the clients, validates them
with :func:`checked_overrides`: JSON types strictly (a boolean is not a number), then the ranges of
:class:`~specprefill.config.SpecPrefillConfig`. The stats come back as :mod:`specprefill.wire.stats` says.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.engine.callargs import GENERATION_ALIASES
from specprefill.errors import ConfigurationError

__all__ = [
    "SERVER_OVERRIDES",
    "XARG_KEEP_RATE",
    "XARG_MAX_KEPT",
    "XARG_RETURN_KEPT",
    "OverrideError",
    "checked_overrides",
    "openai_call_kwargs",
    "overrides_from_xargs",
    "served_model",
    "server_xargs",
    "wants_kept_runs",
    "with_xargs",
]

XARG_KEEP_RATE = "specprefill_keep_rate"
"""``vllm_xargs`` key: this request's keep rate in (0, 1]; 1.0 turns pruning off."""

XARG_MAX_KEPT = "specprefill_max_kept_tokens"
"""``vllm_xargs`` key: this request's cap on kept (unprotected) tokens, an integer >= 1."""

XARG_RETURN_KEPT = "specprefill_return_kept"
"""``vllm_xargs`` key: ``true`` adds ``kept_runs`` (``[start, length, ...]`` of the kept prompt positions) to
the stats, e.g. to check that a tools block was kept whole."""

SERVER_OVERRIDES = {"keep_rate": XARG_KEEP_RATE, "max_kept_tokens": XARG_MAX_KEPT}
"""The :class:`~specprefill.SpecPrefillConfig` fields a chat/completion request may override, and their keys."""


class OverrideError(ConfigurationError):
    """A per-request setting is unknown, of the wrong JSON type or out of range; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _json_kinds(annotation: Any) -> set[type]:
    """The JSON value types a config field of this annotation accepts (``None`` as ``type(None)``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_json_kinds(arg) for arg in typing.get_args(annotation)))
    if typing.get_origin(annotation) is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    return {annotation} if isinstance(annotation, type) else {object}


def _check_json_type(name: str, value: object, where: str) -> object:
    """``value`` if its JSON type suits config field ``name`` (integral floats pass as ints), else an error."""
    kinds = _json_kinds(SpecPrefillConfig.model_fields[name].annotation)
    if value is None and type(None) in kinds:
        return value
    if isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, int) and (int in kinds or float in kinds):
        return value
    elif (
        isinstance(value, float) and math.isfinite(value) and (float in kinds or (int in kinds and value.is_integer()))
    ):
        return int(value) if float not in kinds else value
    elif isinstance(value, str) and str in kinds:
        return value
    wanted = "/".join(sorted(k.__name__ for k in kinds if k is not type(None)))
    raise OverrideError(f"{where} must be {wanted}, got {type(value).__name__} {value!r:.40}", where)


def checked_overrides(
    values: Mapping[str, object],
    *,
    base: SpecPrefillConfig | None = None,
    allowed: Collection[str] | None = None,
    where: Mapping[str, str] | None = None,
) -> SpecPrefillConfig:
    """The one validation of per-request settings: ``base`` with ``values`` applied, or a typed error.

    Args:
        values: Config field names and their values as they came (parsed JSON, keyword arguments); None
            means "the default" and is skipped.
        base: The config the values change (default: the library defaults).
        allowed: The fields that may be set here (default: every config field).
        where: How to name each field in errors (e.g. its ``vllm_xargs`` key); default the field name.

    Returns:
        The validated config.

    Raises:
        OverrideError: A field is unknown or not allowed, its JSON type is wrong (a boolean or a string
            where a number belongs), or its value is out of range; ``field`` names it as ``where`` does.

    """
    names = where or {}
    fields = SpecPrefillConfig.model_fields if allowed is None else allowed
    checked: dict[str, object] = {}
    for name, value in values.items():
        label = names.get(name, name)
        if name not in fields or name not in SpecPrefillConfig.model_fields:
            valid = sorted(names.get(f, f) for f in fields)
            raise OverrideError(f"{label} is not a setting that can be changed here; valid: {valid}", label)
        if value is not None:
            checked[name] = _check_json_type(name, value, label)
    config = base or SpecPrefillConfig()
    try:
        return config.with_overrides(**checked)
    except ConfigurationError as exc:
        culprit = next((n for n in checked if not _fits(config, n, checked[n])), next(iter(checked), "config"))
        label = names.get(culprit, culprit)
        raise OverrideError(f"{label}: {exc}", label) from exc


def _fits(config: SpecPrefillConfig, name: str, value: object) -> bool:
    try:
        config.with_overrides(**{name: value})
    except ConfigurationError:
        return False
    return True


def overrides_from_xargs(xargs: Mapping[str, Any] | None, base: SpecPrefillConfig) -> SpecPrefillConfig:
    """A chat/completion request's config: ``base`` with the overrides its ``vllm_xargs`` carry.

    Raises:
        OverrideError: A value is not a number, NaN/infinite, a keep rate outside (0, 1], or a token cap that
            is not a whole number >= 1 (the server answers HTTP 400 naming the key).

    """
    given = {name: (xargs or {}).get(key) for name, key in SERVER_OVERRIDES.items()}
    return checked_overrides(given, base=base, allowed=SERVER_OVERRIDES, where=SERVER_OVERRIDES)


def wants_kept_runs(xargs: Mapping[str, Any] | None) -> bool:
    """Whether the request asked for ``kept_runs`` in its stats (:data:`XARG_RETURN_KEPT`).

    Raises:
        OverrideError: The value is not a boolean.

    """
    value = (xargs or {}).get(XARG_RETURN_KEPT, False)
    # vLLM's request model turns JSON true/false into 1/0 (vllm_xargs holds str | int | float | list)
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise OverrideError(f"{XARG_RETURN_KEPT} must be true or false, got {value!r:.40}", XARG_RETURN_KEPT)


def server_xargs(*, caller: str, **overrides: Any) -> dict[str, Any]:
    """``vllm_xargs`` entries for a client's per-request overrides (checked as :func:`checked_overrides` does).

    Args:
        caller: Who asks, for error messages.
        **overrides: ``keep_rate`` and/or ``max_kept_tokens``; None values are left out (server default).

    Returns:
        ``{XARG_KEEP_RATE: ..., XARG_MAX_KEPT: ...}`` for the values given.

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
        checked = checked_overrides(given, allowed=SERVER_OVERRIDES)
    except ConfigurationError as exc:
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
