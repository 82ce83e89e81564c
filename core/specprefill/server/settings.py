"""Configuration of server-side pruning: environment variables and/or a JSON or TOML file.

Every field of :class:`ServerSettings` can be set by an environment variable ``SPECPREFILL_SERVER_<FIELD>``
(upper case), or in a JSON/TOML file named by ``SPECPREFILL_SERVER_CONFIG``. The environment wins over the
file. Example file (TOML)::

    speculator = "meta-llama/Llama-3.1-8B-Instruct"
    device = "cuda:0"
    deadline_seconds = 2.0

    [config]            # any SpecPrefillConfig field
    keep_rate = 0.1
    min_prompt_tokens = 1024

The same as environment variables::

    SPECPREFILL_SERVER_SPECULATOR=meta-llama/Llama-3.1-8B-Instruct
    SPECPREFILL_SERVER_DEVICE=cuda:0
    SPECPREFILL_SERVER_CONFIG_JSON='{"keep_rate": 0.1, "min_prompt_tokens": 1024}'
    SPECPREFILL_SERVER_KEEP_RATE=0.1          # shortcut for config.keep_rate

Pruning is active only when ``speculator`` is set; otherwise the vLLM plugin only restores positions.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_POSITION_INTS",
    "ENV_FILE",
    "ENV_PREFIX",
    "ServerSettings",
    "env_values",
    "read_file",
]

logger = logging.getLogger("specprefill.server")

ENV_PREFIX = "SPECPREFILL_SERVER_"
"""Prefix of the environment variables; the rest is the field name in upper case."""

ENV_FILE = "SPECPREFILL_SERVER_CONFIG"
"""Environment variable naming a ``.json`` or ``.toml`` settings file."""

_CONFIG_JSON = "CONFIG_JSON"
"""``SPECPREFILL_SERVER_CONFIG_JSON``: the ``config`` mapping as JSON (``..._CONFIG`` names the file)."""

_SHORTCUTS = ("keep_rate", "min_prompt_tokens", "max_kept_tokens")
"""Fields of ``config`` that also have their own top-level setting and variable."""


DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""16 MiB: a 128k-token prompt sent as token ids with a full position map is under 3 MB, while a list of
10^7 integers is at least 20 MB of JSON. Raise it for requests with many base64 images."""

DEFAULT_MAX_POSITION_INTS = 2**17
"""131,072 integers. Clients encode maximal runs (:func:`~specprefill.vllm_plugin.positions.encode_runs`),
separated by at least one dropped token, so a T-token prompt has at most ceil(T/2) runs: at most T integers
for an even T, even when every other token is kept. The default therefore admits every map of a prompt up to
131,072 tokens (a full 128k context at token granularity), and a map of 32-token chunks, as SpecPrefill keeps
them, for prompts of 4 million tokens. A map at the limit is 1.2 MB of JSON, which vLLM parses on its event
loop in tens of milliseconds (on 2 CPU cores ``/health`` then waited at most 29 ms; at twice the limit,
132 ms); the 16 MiB body limit alone let through 1.8 million integers, which held the loop for 1.1 s."""


class ServerSettings(BaseModel):
    """How the API server prunes: which speculator, where it runs, and the scoring service's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    speculator: str | None = None
    """Speculator: an embedded name (``smollm2-135m``), a transformers folder, a hub id, or a ``module:callable``
    factory returning a :class:`~specprefill.speculator.base.Speculator`. None: no pruning."""

    device: str = "cpu"
    """torch device of the speculator, e.g. ``"cpu"`` or ``"cuda:0"`` (beside tensor-parallel rank 0)."""

    dtype: str | None = None
    """Speculator weight dtype (``"bfloat16"``, ``"float32"``); None picks the device's fastest exact dtype."""

    config: dict[str, Any] = Field(default_factory=dict)
    """:class:`~specprefill.SpecPrefillConfig` fields, e.g. ``{"keep_rate": 0.3, "min_prompt_tokens": 256}``."""

    keep_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Shortcut for ``config["keep_rate"]`` (wins over it)."""

    min_prompt_tokens: int | None = Field(default=None, ge=0)
    """Shortcut for ``config["min_prompt_tokens"]`` (wins over it)."""

    max_kept_tokens: int | None = Field(default=None, ge=1)
    """Shortcut for ``config["max_kept_tokens"]`` (wins over it)."""

    deadline_seconds: float = Field(default=30.0, gt=0.0)
    """Longest a request waits for its scores (queue time included); later it runs unpruned, flagged."""

    queue_size: int = Field(default=64, ge=1)
    """Requests waiting for the speculator at most; one more runs unpruned with reason ``queue_full``."""

    max_batch: int = Field(default=8, ge=1)
    """Queued requests the scoring worker takes per wake-up."""

    batch_forward: bool | None = None
    """Score a micro-batch's prompts in shared padded forward passes (None: on CUDA only, where it pays;
    on CPU the padded batch measured slower than one prompt at a time)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    """Largest request body the server reads (:class:`~specprefill.server.limits.BodyLimitMiddleware`; 413
    above it, before parsing; 0 = no limit). Raise it for requests with many base64 images."""

    max_position_ints: int = Field(default=DEFAULT_MAX_POSITION_INTS, ge=0)
    """Longest position map (``vllm_xargs.specprefill_runs``) a request body may carry, in integers; a longer
    one gets a 413 from :class:`~specprefill.server.limits.BodyLimitMiddleware` before the body is parsed
    (0 = no check). The default, 131,072, admits every map of a prompt up to 131,072 tokens (a map holds at
    most one integer per prompt token) and costs vLLM tens of milliseconds to parse; see
    :data:`DEFAULT_MAX_POSITION_INTS`."""

    max_prune_bytes: int = Field(default=8 * 2**20, ge=1)
    """Largest body of ``POST /specprefill/v1/prune`` (:mod:`specprefill.server.endpoint`)."""

    preload: bool = True
    """Load the speculator when the API server starts (else on the first request)."""

    cost_guard: bool = True
    """Skip scoring (``fallback_reason: "cost_guard"``) when the speculator's expected time, learnt online,
    exceeds the base prefill time pruning would save, also learnt online from the requests served."""

    max_prune_tokens: int = Field(default=32_768, ge=1)
    """Longest prompt ``POST /specprefill/v1/prune`` scores, in tokens (estimated from the characters before
    anything runs; a 413 above it)."""

    @property
    def enabled(self) -> bool:
        """Whether a speculator is configured (pruning on)."""
        return bool(self.speculator)

    def prune_config(self) -> SpecPrefillConfig:
        """The :class:`~specprefill.SpecPrefillConfig` of ``config`` with the shortcuts applied.

        Raises:
            ConfigurationError: A field is unknown or out of range.

        """
        shortcuts = {name: getattr(self, name) for name in _SHORTCUTS if getattr(self, name) is not None}
        return SpecPrefillConfig.model_validate({**self.config, **shortcuts})

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from ``SPECPREFILL_SERVER_CONFIG`` (a file) and ``SPECPREFILL_SERVER_*`` variables.

        Args:
            environ: The environment to read (default ``os.environ``).

        Returns:
            Validated settings (defaults when nothing is set: pruning off).

        Raises:
            ConfigurationError: The file cannot be read or parsed, a value is invalid, or a field is unknown;
                the message names the variable or file.

        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = env.get(ENV_FILE, "").strip()
        if path:
            values.update(read_file(Path(path)))
        values.update(env_values(env))
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid specprefill server settings: {_explain(exc)}") from exc
        settings.prune_config()  # fail at start-up, not on the first request
        return settings


def read_file(path: Path) -> dict[str, Any]:
    """Parse a ``.json`` or ``.toml`` settings file into a mapping.

    Raises:
        ConfigurationError: Missing file, unknown suffix, a parse error, or not a mapping at the top.

    """
    if path.suffix.lower() not in (".json", ".toml"):
        raise ConfigurationError(f"{ENV_FILE}={path}: use a .json or .toml file")
    try:
        raw = path.read_bytes()
        data = _toml().loads(raw.decode()) if path.suffix.lower() == ".toml" else json.loads(raw)
    except OSError as exc:
        raise ConfigurationError(f"{ENV_FILE}={path} cannot be read: {exc}") from exc
    except ValueError as exc:  # json and tomllib decode errors are ValueErrors
        raise ConfigurationError(f"{ENV_FILE}={path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{ENV_FILE}={path} must hold a mapping of settings at the top level")
    return data


def _toml() -> Any:
    """``tomllib`` (Python 3.11+) or ``tomli``."""
    for name in ("tomllib", "tomli"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ConfigurationError("TOML settings files need Python 3.11+ or `pip install tomli`; or use a .json file")


def env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``SPECPREFILL_SERVER_<FIELD>`` variables (strings, validated later).

    Raises:
        ConfigurationError: ``SPECPREFILL_SERVER_CONFIG_JSON`` is not a JSON object. Unknown
            ``SPECPREFILL_SERVER_*`` variables are logged and ignored.

    """
    fields = set(ServerSettings.model_fields) - {"config"}
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_FILE:
            continue
        name = key[len(ENV_PREFIX) :]
        if name == _CONFIG_JSON:
            out["config"] = _json_object(key, value)
        elif name.lower() in fields:
            out[name.lower()] = value if value.strip() else None
        else:  # may belong to another part of the server (e.g. the prune endpoint): warn, do not fail
            known = ", ".join(sorted(ENV_PREFIX + f.upper() for f in fields | {_CONFIG_JSON.lower()}))
            logger.warning("specprefill: ignoring unknown setting %s (known: %s (a file), %s)", key, ENV_FILE, known)
    return out


def _json_object(key: str, value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise ConfigurationError(f"{key} must be a JSON object of SpecPrefillConfig fields: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{key} must be a JSON object, e.g. '{{\"keep_rate\": 0.3}}'")
    return data


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{loc} (env {ENV_PREFIX}{loc.split('.')[0].upper()}): {err['msg']}")
    return "; ".join(parts)
