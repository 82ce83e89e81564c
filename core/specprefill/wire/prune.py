"""JSON wire form of the prune endpoint (``POST /specprefill/v1/prune``): requests, replies, stats, scores.

Pure and symmetric: the server (:mod:`specprefill.server.endpoint`) and the client
(:mod:`specprefill.speculator.remote`) use the same functions, so what one writes the other reads back.
Everything read from the wire is validated; a malformed payload (truncated, empty, not JSON, a wrong type, a
span out of range) raises :class:`WireFormatError` naming the field, never passes as a success.

Request body::

    {"prompt": str | [messages], "question": str | null, "keep_rate": float | null,
     "max_kept_tokens": int | null, "protected_spans": [[start, end], ...], "segments": [int | [start, end]],
     "return_scores": bool, "fallback": bool, "config": {SpecPrefillConfig fields} | null}

Reply body::

    {"text": str | null, "kept_spans": [[start, end], ...], "messages": [messages] | null,
     "stats": {stats object}, "scored": {ScoredPrompt wire form} | null}

The stats object is :mod:`specprefill.wire.stats`'s, the same everywhere the server reports pruning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specprefill.prompt.prepared import ScoredPrompt
from specprefill.result import Message
from specprefill.spans import Span, index_runs
from specprefill.wire.fields import (
    WireFormatError,
    as_bool,
    as_int,
    as_ints,
    as_list,
    as_mapping,
    as_messages,
    as_number,
    as_optional_str,
    as_segments,
    as_spans,
)
from specprefill.wire.stats import read_stats

__all__ = [
    "PRUNE_PATH",
    "REQUEST_KEYS",
    "PruneReply",
    "PruneRequest",
    "WireFormatError",
    "decode_json",
    "encode_json",
    "scored_from_wire",
    "scored_to_wire",
]

PRUNE_PATH = "/specprefill/v1/prune"
"""Path of the prune endpoint on the server."""

REQUEST_KEYS = (
    "prompt",
    "question",
    "keep_rate",
    "max_kept_tokens",
    "protected_spans",
    "segments",
    "return_scores",
    "fallback",
    "config",
)
"""Keys a prune request may hold (any other key is an error, so typos do not pass silently)."""


def encode_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON (``NaN`` and infinities are not JSON and are refused)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode_json(raw: bytes | str, *, what: str = "body") -> Any:
    """Parse JSON, raising :class:`WireFormatError` for an empty, truncated or unparseable payload."""
    if not raw.strip():
        raise WireFormatError(f"the {what} is empty; expected a JSON object", what)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise WireFormatError(f"the {what} is not valid JSON ({exc}); was it truncated?", what) from None


# --- scored prompts --------------------------------------------------------------------------------------
def scored_to_wire(scored: ScoredPrompt) -> dict[str, Any]:
    """A :class:`~specprefill.prompt.prepared.ScoredPrompt` as a JSON-safe dict.

    ``protected`` is sent as ``[start, end)`` runs of protected token indices; non-finite importance values
    are sent as ``null`` (they read back as NaN, which selection ranks lowest).
    """
    importance = None
    if scored.importance is not None:
        importance = [v if math.isfinite(v) else None for v in scored.importance.astype(np.float64).tolist()]
    return {
        "kind": scored.kind,
        "input_ids": list(scored.input_ids),
        "offsets": None if scored.offsets is None else [list(s) for s in scored.offsets],
        "protected": [list(r) for r in index_runs(np.flatnonzero(scored.protected).tolist())],
        "importance": importance,
        "segments": None if scored.segments is None else list(scored.segments),
        "text": scored.text,
        "messages": scored.messages,
        "content_spans": None if scored.content_spans is None else [list(s) for s in scored.content_spans],
        "speculator_seconds": scored.speculator_seconds,
        "queries": scored.queries,
        "windows": scored.windows,
        "lookahead_token_ids": list(scored.lookahead_token_ids),
        "fallback_reason": scored.fallback_reason,
        "speculator": scored.speculator,
    }


def scored_from_wire(value: object, where: str = "scored") -> ScoredPrompt:
    """Read back what :func:`scored_to_wire` wrote, checking every length and range.

    Raises:
        WireFormatError: A field is missing, of the wrong type, or inconsistent with the others.

    """
    obj = as_mapping(value, where)
    ids = as_ints(obj.get("input_ids"), f"{where}.input_ids", low=0)
    n = len(ids)
    text = as_optional_str(obj.get("text"), f"{where}.text")
    limit = len(text) if text is not None else 0
    offsets = None if obj.get("offsets") is None else as_spans(obj["offsets"], f"{where}.offsets", limit)
    if (offsets is None) != (text is None) or (offsets is not None and len(offsets) != n):
        raise WireFormatError(f"{where}.offsets must give one span per token of the text", f"{where}.offsets")
    protected = np.zeros(n, dtype=np.bool_)
    for s, e in as_spans(obj.get("protected", []), f"{where}.protected", n):
        protected[s:e] = True
    importance = None
    if obj.get("importance") is not None:
        raw = as_list(obj["importance"], f"{where}.importance")
        if len(raw) != n:
            raise WireFormatError(f"{where}.importance has {len(raw)} values for {n} tokens", f"{where}.importance")
        importance = np.array([math.nan if v is None else as_number(v, f"{where}.importance") for v in raw], np.float32)
    segments = None if obj.get("segments") is None else as_ints(obj["segments"], f"{where}.segments", low=0, high=n)
    spans = obj.get("content_spans")
    scored = ScoredPrompt(
        input_ids=ids,
        protected=protected,
        text=text,
        offsets=offsets,
        messages=None if obj.get("messages") is None else as_messages(obj["messages"], f"{where}.messages"),
        content_spans=None if spans is None else as_spans(spans, f"{where}.content_spans", limit),
        segments=segments,
        importance=importance,
        speculator_seconds=as_number(obj.get("speculator_seconds", 0.0), f"{where}.speculator_seconds"),
        queries=as_int(obj.get("queries", 0), f"{where}.queries"),
        windows=as_int(obj.get("windows", 0), f"{where}.windows"),
        lookahead_token_ids=as_ints(obj.get("lookahead_token_ids", []), f"{where}.lookahead_token_ids", low=0),
        fallback_reason=as_optional_str(obj.get("fallback_reason"), f"{where}.fallback_reason"),
        speculator=as_optional_str(obj.get("speculator", ""), f"{where}.speculator") or "",
    )
    if obj.get("kind", scored.kind) != scored.kind:
        raise WireFormatError(
            f"{where}.kind says {obj.get('kind')!r} but the fields make a {scored.kind!r} prompt", f"{where}.kind"
        )
    return scored


# --- request and reply -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneRequest:
    """A validated prune request (see the module docstring for the JSON)."""

    prompt: str | list[Message]
    """Text, or chat messages (rendered with the server speculator's chat template)."""
    question: str | None = None
    """For a text prompt: the question it should answer (laid out after the text, protected, steers scoring)."""
    keep_rate: float | None = None
    """Fraction to keep (None: the server's default)."""
    max_kept_tokens: int | None = None
    """Token cap (None: the server's default)."""
    protected_spans: tuple[Span, ...] = ()
    """Character spans of the prompt text (or rendered chat) that are never dropped."""
    segments: tuple[int | Span, ...] = ()
    """Character offsets or spans where the chunk grid restarts."""
    return_scores: bool = False
    """Return the scored prompt (``scored``) so the client can select itself."""
    fallback: bool = True
    """When scoring is unavailable: keep everything and flag it (True), or answer 503 (False)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Further :class:`~specprefill.config.SpecPrefillConfig` fields over the server's config."""

    def to_wire(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "prompt": self.prompt,
            "question": self.question,
            "keep_rate": self.keep_rate,
            "max_kept_tokens": self.max_kept_tokens,
            "protected_spans": [list(s) for s in self.protected_spans],
            "segments": [list(s) if isinstance(s, tuple) else s for s in self.segments],
            "return_scores": self.return_scores,
            "fallback": self.fallback,
            "config": dict(self.config) or None,
        }

    @classmethod
    def from_wire(cls, value: object) -> PruneRequest:
        """Validate a parsed JSON body.

        Raises:
            WireFormatError: Unknown keys, a missing or empty prompt, or a field of the wrong type or range.

        """
        obj = as_mapping(value, "body")
        unknown = sorted(set(obj) - set(REQUEST_KEYS))
        if unknown:
            raise WireFormatError(f"unknown field(s) {unknown}; valid fields: {list(REQUEST_KEYS)}", unknown[0])
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise WireFormatError("prompt is empty; send the text to prune", "prompt")
        elif isinstance(prompt, list) and prompt:
            prompt = as_messages(prompt, "prompt")
        else:
            raise WireFormatError("prompt must be a non-empty string or a non-empty list of messages", "prompt")
        question = as_optional_str(obj.get("question"), "question")
        if question is not None and not isinstance(prompt, str):
            raise WireFormatError("question goes with a text prompt; put it in the last user message", "question")
        keep_rate = None if obj.get("keep_rate") is None else as_number(obj["keep_rate"], "keep_rate")
        cap = None if obj.get("max_kept_tokens") is None else as_int(obj["max_kept_tokens"], "max_kept_tokens")
        config = obj.get("config")
        return cls(
            prompt=prompt,
            question=question,
            keep_rate=keep_rate,
            max_kept_tokens=cap,
            protected_spans=tuple(as_spans(obj.get("protected_spans") or [], "protected_spans")),
            segments=tuple(as_segments(obj.get("segments") or [])),
            return_scores=as_bool(obj.get("return_scores", False), "return_scores"),
            fallback=as_bool(obj.get("fallback", True), "fallback"),
            config={} if config is None else dict(as_mapping(config, "config")),
        )


@dataclass(frozen=True)
class PruneReply:
    """A validated prune reply."""

    text: str | None
    """The kept text (kept spans joined with the gap marker); None after a fallback on a chat prompt."""
    kept_spans: list[Span]
    """Kept character spans of the prompt text (for chat prompts: of the rendered chat)."""
    stats: dict[str, Any]
    """The stats object (:mod:`specprefill.wire.stats`)."""
    scored: ScoredPrompt | None = None
    """The scored prompt when the request asked for it (None after a fallback); with a ``question`` it is the
    rendered question prompt (instruction, the text as one passage, the question), not the bare text."""
    messages: list[Message] | None = None
    """For chat prompts: the messages cut down to their kept spans."""

    def to_wire(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "text": self.text,
            "kept_spans": [list(s) for s in self.kept_spans],
            "messages": self.messages,
            "stats": self.stats,
            "scored": None if self.scored is None else scored_to_wire(self.scored),
        }

    @classmethod
    def from_wire(cls, value: object) -> PruneReply:
        """Validate a parsed reply body.

        Raises:
            WireFormatError: A field is missing or malformed.

        """
        obj = as_mapping(value, "reply")
        for key in ("text", "kept_spans", "stats"):
            if key not in obj:
                raise WireFormatError(f"the reply lacks {key!r}; is this a specprefill prune endpoint?", key)
        text = as_optional_str(obj["text"], "text")
        return cls(
            text=text,
            kept_spans=as_spans(obj["kept_spans"], "kept_spans"),
            stats=read_stats(obj["stats"]),
            scored=None if obj.get("scored") is None else scored_from_wire(obj["scored"]),
            messages=None if obj.get("messages") is None else as_messages(obj["messages"], "messages"),
        )
