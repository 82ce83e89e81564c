"""The request hook inside vLLM's OpenAI API server: prune the token ids vLLM rendered, before scheduling.

Hook points (vLLM 0.32/0.33, read from its source):

* ``OpenAIServingChat.create_chat_completion`` and ``OpenAIServingCompletion.create_completion`` are
  wrapped: the wrapper validates the ``vllm_xargs`` overrides (a bad value is an HTTP 400 before any work),
  puts a per-request :class:`Ticket` (the chat messages, the overrides) in a context variable, and adds the
  ``specprefill`` stats object to the response: beside ``usage`` in a JSON reply, on the final chunk(s) of
  a stream (the ``usage`` chunk and every chunk with a ``finish_reason``).
* ``AsyncLLM.generate`` is wrapped: the serving handler calls it (inside the wrapped handler, so the ticket
  is visible) with the prompt vLLM rendered (chat template, tools) and tokenised. The returned async
  generator first awaits the :class:`~specprefill.server.service.ScoringService` (off the event loop),
  replaces ``prompt_token_ids`` with the kept ids and puts their original positions into
  ``SamplingParams.extra_args`` (:func:`specprefill.vllm_plugin.positions.request_extras`). The existing
  front-end guard (:mod:`specprefill.vllm_plugin.frontend`) then bounds-checks that map and enforces the
  cache salt, and the model-runner hooks restore the positions.

* ``OpenAIServingResponses.create_responses`` (the Responses API) is wrapped like the chat handler, its
  ``instructions`` and text ``input`` standing in for the messages (:func:`~.tickets.responses_messages`).
* ``AsyncLLM.shutdown`` is wrapped: on SIGTERM vLLM stops the engine client first, and every request still
  waiting for its scores gets an HTTP 503 at once instead of waiting for its deadline.

Per-request settings are strict (:mod:`specprefill.server.tickets`): an unknown ``specprefill_*`` key or a
JSON boolean where a number belongs is an HTTP 400 naming the key. If scoring is unavailable or does not pay
(:func:`cost_guard`), the request runs unpruned and its stats say ``fallback: true`` with a stable reason
code; the details go to the server log, one WARNING line per fallback. Importing this module does not
import vLLM.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.scoring.select import budget_chunks
from specprefill.server import metrics, shared
from specprefill.server.pruning import TOKENIZER_PROBE, Outcome, ScoreJob, TokenizerMismatchError
from specprefill.server.queueing import FloorEstimate
from specprefill.server.replies import attach_stats
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.server.shared import get_service
from specprefill.server.tickets import Ticket, chat_messages, maybe_booleans, responses_messages, ticket_for
from specprefill.vllm_plugin.common import HOOK_MARK, unsupported_reason
from specprefill.vllm_plugin.guard import has_position_keys
from specprefill.vllm_plugin.positions import XARG_LENGTH, XARG_RUNS, request_extras
from specprefill.wire.stats import stats_object
from specprefill.wire.xargs import OverrideError

__all__ = ["BASE_COST", "cost_guard", "install", "install_if_configured", "installed", "uninstall"]

logger = logging.getLogger("specprefill.server")

_TARGETS = (
    ("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat", "create_chat_completion"),
    ("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion", "create_completion"),
    ("vllm.v1.engine.async_llm", "AsyncLLM", "generate"),
)
_OPTIONAL_TARGETS = (
    ("vllm.entrypoints.openai.responses.serving", "OpenAIServingResponses", "create_responses"),
    ("vllm.v1.engine.async_llm", "AsyncLLM", "shutdown"),
)
"""Hook points that a vLLM build may lack; without them the rest still works."""

BASE_COST = FloorEstimate()
"""The base model's prefill seconds per prompt token in this process: the lowest rate (dispatch to first output)
among the last requests served, so a busy engine's queue does not count as what pruning one request saves."""


_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("specprefill_ticket", default=None)


# --- request handlers ----------------------------------------------------------------------------
def _wrap_handler(original: Callable[..., Any], *, kind: str) -> Callable[..., Any]:
    @functools.wraps(original)
    async def handler(self: Any, request: Any, raw_request: Any = None) -> Any:
        try:
            body = await _body(raw_request) if maybe_booleans(request) else None  # the body only when it decides
            ticket = ticket_for(request, _server_config(), messages=_messages(request, kind), raw_body=body)
        except OverrideError as exc:
            return self.create_error_response(f"vllm_xargs.{exc}", param=f"vllm_xargs.{exc.field}")
        token = _ticket.set(ticket)
        try:
            result = await original(self, request, raw_request)
        finally:
            _ticket.reset(token)
        return attach_stats(result, ticket)

    return handler


def _server_config() -> SpecPrefillConfig:
    return get_service().settings.prune_config()


def _messages(request: Any, kind: str) -> list[dict[str, Any]] | None:
    if kind == "chat":
        return chat_messages(request.messages)
    if kind == "responses":
        return responses_messages(getattr(request, "instructions", None), getattr(request, "input", ""))
    return None


async def _body(raw_request: Any) -> bytes | None:
    """The raw body FastAPI already read (cached on the request), to tell JSON booleans from numbers."""
    body = getattr(raw_request, "body", None)
    if body is None:
        return None
    with contextlib.suppress(Exception):  # no body (a test's fake request): booleans go unchecked
        return bytes(await body())
    return None


# --- the engine client ---------------------------------------------------------------------------
def _wrap_generate(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def generate(self: Any, prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        ticket = _ticket.get()
        if ticket is None or not _token_prompt(prompt) or not hasattr(sampling_params, "extra_args"):
            return original(self, prompt, sampling_params, request_id, *args, **kwargs)
        return _pruned_generate(self, original, ticket, prompt, sampling_params, request_id, args, kwargs)

    return generate


def _token_prompt(prompt: Any) -> bool:
    return (
        isinstance(prompt, dict)
        and prompt.get("type", "token") == "token"
        and isinstance(prompt.get("prompt_token_ids"), list)
    )


async def _pruned_generate(
    engine: Any,
    original: Callable[..., Any],
    ticket: Ticket,
    prompt: dict[str, Any],
    params: Any,
    request_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncIterator[Any]:
    client_map = has_position_keys(params.extra_args)  # a client's map is not echoed (the guard checks it)
    prompt, stats = await _prune(engine, ticket, prompt, params)
    if ticket.kept_runs and not client_map:
        stats["kept_runs"] = list((params.extra_args or {}).get(XARG_RUNS) or [0, stats["tokens_in"]])
    ticket.stats[request_id] = stats
    metrics.observe(stats)
    sent = len(prompt["prompt_token_ids"])
    started, first = time.perf_counter(), True
    async with contextlib.aclosing(original(engine, prompt, params, request_id, *args, **kwargs)) as outputs:
        async for output in outputs:
            if first:
                BASE_COST.observe(sent, time.perf_counter() - started)
                first = False
            yield output


async def _prune(engine: Any, ticket: Ticket, prompt: dict[str, Any], params: Any) -> tuple[dict[str, Any], Any]:
    ids: list[int] = prompt["prompt_token_ids"]
    n = len(ids)
    extra = params.extra_args
    if has_position_keys(extra):  # pruned by the client: the guard checks its map, the positions are original
        original = (extra or {}).get(XARG_LENGTH)
        return prompt, stats_object(original if isinstance(original, int) else n, n, positions="original")
    config = ticket.config
    if (config.keep_rate >= 1.0 and config.max_kept_tokens is None) or not config.long_enough(n):
        return prompt, stats_object(n, n)
    service = get_service()
    refused = _refusal(engine) or cost_guard(service, config, n)
    if refused is not None:
        return prompt, _fallback(n, refused, f"{n}-token prompt")
    text = prompt.get("prompt") if isinstance(prompt.get("prompt"), str) else None
    job = ScoreJob(ids=ids, config=config, text=text, messages=ticket.messages, probe=_probe_ids(engine))
    try:
        outcome: Outcome = await service.run(job, tokens=n)
    except ScoringUnavailableError as exc:
        reason = "tokenizer_mismatch" if isinstance(exc.__cause__, TokenizerMismatchError) else exc.reason
        if reason == "shutdown":
            raise _shutting_down() from exc
        return prompt, _fallback(n, reason, str(exc))
    kept = [int(i) for i in outcome.kept]
    if outcome.fallback_reason:  # the speculator itself failed: the details go to the log only
        metrics.log_fallback("error", outcome.fallback_reason, tokens=n)
    stats = stats_object(
        n, len(kept), speculator_seconds=outcome.seconds, fallback_reason="error" if outcome.fallback_reason else None
    )
    if len(kept) == n:
        return prompt, stats
    xargs, _ = request_extras(kept, n, n_tokens=len(kept))
    params.extra_args = {**(extra or {}), **xargs}
    pruned = {k: v for k, v in prompt.items() if k != "prompt_token_offsets"}
    pruned["prompt_token_ids"] = [ids[i] for i in kept]
    return pruned, stats


def _fallback(n: int, reason: str, detail: str) -> dict[str, Any]:
    """The stats of a request served unpruned for ``reason`` (a stable code), logged once with ``detail``."""
    metrics.log_fallback(reason, detail, tokens=n)
    return stats_object(n, n, fallback_reason=reason)


def cost_guard(service: ScoringService, config: SpecPrefillConfig, n: int) -> str | None:
    """``"cost_guard"`` when scoring ``n`` tokens is expected to cost more than the base prefill it saves.

    Both sides are learnt online: the speculator's seconds per token (:attr:`ScoringService.cost`) and the
    base's (:data:`BASE_COST`, the floor of recent rates). Until both are known, and with ``cost_guard`` off,
    every prompt is scored.
    """
    if not service.settings.cost_guard:
        return None
    scoring, base = service.cost.estimate(n), BASE_COST.seconds_per_token
    if scoring is None or base is None:
        return None
    kept = budget_chunks(config.keep_rate, n)  # the selection's own rounding of the token budget
    if config.max_kept_tokens is not None:
        kept = min(kept, config.max_kept_tokens)
    return "cost_guard" if scoring > base * (n - kept) else None


def _shutting_down() -> Exception:
    """What makes vLLM answer HTTP 503: the server stops, the request may be retried elsewhere."""
    message = "the server is shutting down; retry the request"
    try:
        from vllm.exceptions import RetryableRequestError
    except ImportError:  # an older vLLM without it: a plain 500, still at once
        return RuntimeError(message)
    error: Exception = RetryableRequestError(message)
    return error


def _probe_ids(engine: Any) -> list[int] | None:
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return None
    try:
        return [int(t) for t in tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)]
    except Exception:  # a tokenizer without that signature: skip the check, scoring still validates ids
        return None


_refusals: dict[int, str | None] = {}


def _refusal(engine: Any) -> str | None:
    """``"positions_unsupported"`` when the served model cannot take restored positions (checked once)."""
    config = getattr(engine, "vllm_config", None)
    if config is None:
        return None
    if id(config) not in _refusals:
        reason = unsupported_reason(config)
        if reason is not None:
            logger.error("specprefill: server-side pruning is off for this model: %s", reason)
        _refusals[id(config)] = None if reason is None else "positions_unsupported"
    return _refusals[id(config)]


# --- installation --------------------------------------------------------------------------------
def _targets(*, optional: bool = True) -> list[tuple[Any, str]]:
    out = []
    for module_name, class_name, method in _TARGETS + (_OPTIONAL_TARGETS if optional else ()):
        try:
            module = importlib.import_module(module_name)
            out.append((getattr(module, class_name), method))
        except (ImportError, AttributeError):
            if (module_name, class_name, method) in _TARGETS:
                raise
            logger.info("specprefill: %s.%s.%s is not in this vLLM; not hooked", module_name, class_name, method)
    return out


def _hook(method: str, current: Callable[..., Any]) -> Callable[..., Any]:
    if method == "generate":
        return _wrap_generate(current)
    if method == "shutdown":
        return _wrap_shutdown(current)
    kind = {"create_chat_completion": "chat", "create_responses": "responses"}.get(method, "completion")
    return _wrap_handler(current, kind=kind)


def _wrap_shutdown(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def shutdown(self: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(Exception):  # shutting down must go on whatever happens here
            get_service().close()  # every request waiting for its scores answers now (503)
        return original(self, *args, **kwargs)

    return shutdown


def install() -> None:
    """Wrap the request handlers, ``AsyncLLM.generate`` and ``AsyncLLM.shutdown`` in this process (idempotent).

    Raises:
        ImportError: vLLM or one of the required hook points is missing.

    """
    for cls, method in _targets():
        current = getattr(cls, method)
        if getattr(current, HOOK_MARK, False):
            continue
        hook = _hook(method, current)
        setattr(hook, HOOK_MARK, True)
        setattr(cls, method, hook)


def uninstall() -> None:
    """Put the original methods back."""
    for cls, method in _targets():
        current = getattr(cls, method)
        if getattr(current, HOOK_MARK, False):
            setattr(cls, method, current.__wrapped__)


def installed() -> bool:
    """Whether the required hooks are in place in this process."""
    try:
        return all(getattr(getattr(cls, m), HOOK_MARK, False) for cls, m in _targets(optional=False))
    except (ImportError, AttributeError):
        return False


def install_if_configured(settings: ServerSettings | None = None) -> bool:
    """Install the hooks and start the scoring service, in the API-server processes and when configured.

    vLLM calls the plugin entry point in every process. The process without a multiprocessing parent
    (vLLM's main process) hosts the speculator and exports the :mod:`~specprefill.server.shared` scoring
    host to the processes it starts; ``ApiServer_*`` children (``--api-server-count`` above 1) forward
    their jobs to it; engine-core and worker processes never load a speculator.

    Returns:
        True when server-side pruning is now active in this process.

    Raises:
        ConfigurationError: The settings are invalid (vLLM then stops at start-up with the message).

    """
    settings = settings or ServerSettings.load()
    if not settings.enabled:
        return False
    role = shared.current_role()
    if role is None:
        return False
    metrics.ensure_log_handler()
    install()
    service = get_service()
    if role == "host":
        service.on_batch = metrics.observe_batch
        shared.start_host(service)
    if settings.preload:
        service.start()
    logger.info("specprefill: server-side pruning with speculator %r (%s)", settings.speculator, role)
    return True
