"""Answering one prune request, without ASGI: settings, the token cap, scoring through the service, fallbacks.

:func:`handle_prune` takes the parsed JSON body and a scoring service (anything with ``settings`` and
``async run(fn, *, tokens)``, see :class:`ScoringRunner`) and gives ``(status, JSON body)``; it never raises for
bad input or a failing speculator. :func:`prune_request` is the work that runs in the scoring worker. The
ASGI side (reading the body, the API key, the reply) is :mod:`specprefill.server.endpoint`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError, PromptError, PromptTooLongError, SpeculatorError
from specprefill.prompt.passages import Passage, layout_passages, score_passages, scored_windows
from specprefill.prompt.segments import check_segments
from specprefill.spans import cut_spans, join_spans
from specprefill.speculator.base import Speculator
from specprefill.wire.prune import PruneReply, PruneRequest, WireFormatError
from specprefill.wire.stats import prune_stats_object, stats_object
from specprefill.wire.xargs import OverrideError, checked_overrides

__all__ = [
    "MAX_TOKENS_ENV",
    "EndpointUnavailableError",
    "ScoringRunner",
    "error_body",
    "fallback_reply",
    "handle_prune",
    "prune_request",
    "request_config",
]

logger = logging.getLogger("specprefill.server")

T = TypeVar("T")

MAX_TOKENS_ENV = "SPECPREFILL_SERVER_MAX_PRUNE_TOKENS"
"""The setting that caps the prompt tokens one prune request may score (``max_prune_tokens``)."""


class ScoringRunner(Protocol):
    """What :func:`handle_prune` needs of the scoring service (``specprefill.server.service.ScoringService``)."""

    settings: Any

    async def run(self, fn: Callable[[Speculator], T], *, tokens: int = 0) -> T:
        """Run ``fn(speculator)`` off the event loop; raise (e.g. ``ScoringUnavailableError``) when it cannot."""
        ...


class EndpointUnavailableError(SpeculatorError):
    """The scoring service could not be built (``reason`` is ``"load_failed"``, as the service reports it)."""

    reason = "load_failed"


# --- request handling (no ASGI in it) --------------------------------------------------------------------
def request_config(settings: object, request: PruneRequest) -> SpecPrefillConfig:
    """The config of one request: the server's, then the request's ``config``, ``keep_rate`` and ``max_kept_tokens``.

    The server's is ``settings.prune_config()`` (:class:`~specprefill.server.settings.ServerSettings`: its
    ``config`` with the shortcuts applied); the defaults when the settings could not be loaded.

    Raises:
        OverrideError: A field is unknown, of the wrong JSON type or out of range (``field`` names it).

    """
    prune_config = getattr(settings, "prune_config", None)
    base = prune_config() if callable(prune_config) else SpecPrefillConfig()
    values = dict(request.config)
    names = {name: f"config.{name}" for name in request.config}
    for name in ("keep_rate", "max_kept_tokens"):  # the request's own fields win over its config
        if getattr(request, name) is not None:
            values[name], names[name] = getattr(request, name), name
    return checked_overrides(values, base=base, where=names)


def prune_request(
    speculator: Speculator, request: PruneRequest, config: SpecPrefillConfig, *, max_tokens: int | None = None
) -> PruneReply:
    """Score and prune one request with ``speculator`` (runs in the scoring worker).

    A text prompt without a question prunes exactly as ``speculator.prune(prompt, config, protected_spans=...,
    segments=...)``; messages likewise, on the rendered chat. A text prompt with a question is laid out as one
    passage and the question (:mod:`specprefill.prompt.passages`: the question steers the look-ahead and is
    protected), and the kept spans are given in the prompt text.

    Raises:
        PromptTooLongError: The prompt holds more than ``max_tokens`` speculator tokens (checked before scoring).

    """
    if isinstance(request.prompt, str) and request.question is not None:
        _check_length(speculator.count_tokens(request.prompt + request.question), max_tokens)
        return _prune_with_question(speculator, request, config)
    prepared = speculator.prepare(request.prompt, request.protected_spans, config=config)
    _check_length(prepared.n_tokens, max_tokens)  # counted on the tokens that are scored next, not again
    scored = speculator.score_prompt(prepared, config, segments=request.segments)
    result = speculator.select(scored, config)
    return PruneReply(
        text=result.text,
        kept_spans=result.kept_spans,
        stats=prune_stats_object(result.stats),
        scored=scored if request.return_scores else None,
        messages=result.messages,
    )


def _prune_with_question(speculator: Speculator, request: PruneRequest, config: SpecPrefillConfig) -> PruneReply:
    prompt = str(request.prompt)
    layout = layout_passages([Passage(prompt, protected=request.protected_spans)], request.question)
    scored = score_passages(speculator, layout, config, segments=[check_segments(request.segments)])
    start, end = scored_windows(scored, layout)[0]
    result = speculator.select(scored, config)
    spans = cut_spans(result.kept_spans, (start, end))  # relative to the prompt text
    source = (scored.text or "")[start:end]
    text = source if spans == [(0, len(source))] else join_spans(source, spans, config.gap_marker)
    return PruneReply(text, spans, prune_stats_object(result.stats), scored if request.return_scores else None)


def fallback_reply(request: PruneRequest, reason: str) -> PruneReply:
    """Everything kept, flagged: the text prompt whole (for messages no text, since nothing rendered them)."""
    if isinstance(request.prompt, str):
        return PruneReply(request.prompt, [(0, len(request.prompt))], stats_object(0, 0, fallback_reason=reason))
    return PruneReply(None, [], stats_object(0, 0, fallback_reason=reason), messages=request.prompt)


def error_body(status: int, message: str, kind: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    """``(status, OpenAI-style error object)``."""
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _input_error(exc: BaseException) -> BaseException | None:
    """The caller's mistake behind a failure, if it is one (the service wraps what ``fn`` raised as the cause)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, (PromptError, ConfigurationError)):
            return error
    return None


def _estimate_tokens(request: PruneRequest) -> int:
    """A token count from the characters, before anything runs (about 4 characters a token)."""
    return _characters(request) // 4 + 1


def _characters(request: PruneRequest) -> int:
    if isinstance(request.prompt, str):
        return len(request.prompt) + len(request.question or "")
    return sum(len(str(m.get("content", ""))) for m in request.prompt)


def _check_length(tokens: int, max_tokens: int | None) -> None:
    """Refuse a prompt of more than ``max_tokens`` speculator tokens, before the model runs."""
    if max_tokens is not None and tokens > max_tokens:
        raise PromptTooLongError(_too_long(tokens, max_tokens))


def _too_long(tokens: int, cap: int) -> str:
    return (
        f"the prompt is about {tokens:,} tokens; the prune endpoint scores at most {cap:,} "
        f"({MAX_TOKENS_ENV}); send less text, or split it into passages and prune them in several requests"
    )


async def handle_prune(body: object, service: ScoringRunner) -> tuple[int, dict[str, Any]]:
    """Answer one prune request: ``(status, JSON body)``; never raises for bad input or a failing speculator.

    Args:
        body: The parsed JSON body.
        service: The scoring service; :func:`prune_request` runs through ``service.run``.

    """
    try:
        request = PruneRequest.from_wire(body)
    except WireFormatError as exc:
        return error_body(400, str(exc), "invalid_request_error", exc.field)
    try:
        config = request_config(service.settings, request)
    except OverrideError as exc:
        return error_body(400, f"invalid settings: {exc}", "invalid_request_error", exc.field)
    cap = getattr(service.settings, "max_prune_tokens", None)
    estimate = _estimate_tokens(request)
    if cap is not None and estimate > cap:  # refused before anything is tokenised or queued
        return error_body(413, _too_long(estimate, cap), "request_too_large", "prompt")
    work = partial(prune_request, request=request, config=config, max_tokens=cap)
    try:
        reply = await service.run(work, tokens=estimate)
    except Exception as exc:  # scoring unavailable (queue full, deadline, over budget, load failure, error)
        bad_input = _input_error(exc)
        if isinstance(bad_input, PromptTooLongError):
            return error_body(413, str(bad_input), "request_too_large", "prompt")
        if bad_input is not None:
            return error_body(400, str(bad_input), "invalid_request_error", "prompt")
        reason = str(getattr(exc, "reason", "error"))  # a stable code; the details go to the log only
        logger.warning("prune endpoint: scoring unavailable: %s (%s: %s)", reason, type(exc).__name__, exc)
        if not request.fallback:
            return error_body(503, f"scoring is unavailable ({reason}); retry later", "scoring_unavailable")
        return 200, fallback_reply(request, reason).to_wire()
    return 200, reply.to_wire()
