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

If scoring is unavailable (queue full, deadline, speculator error) the request runs unpruned and its stats
say ``fallback: true`` with the reason. Importing this module does not import vLLM.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.result import STATS_KEY
from specprefill.server import metrics, shared
from specprefill.server.pruning import TOKENIZER_PROBE, Outcome, ScoreJob, TokenizerMismatchError, chat_messages
from specprefill.server.service import ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.server.shared import get_service
from specprefill.vllm_plugin.common import HOOK_MARK, unsupported_reason
from specprefill.vllm_plugin.guard import has_position_keys
from specprefill.vllm_plugin.positions import XARG_RUNS, request_extras
from specprefill.wire.stats import merge_stats, stats_object
from specprefill.wire.xargs import OverrideError, overrides_from_xargs, wants_kept_runs

__all__ = ["Ticket", "install", "install_if_configured", "installed", "uninstall"]

logger = logging.getLogger("specprefill.server")

_TARGETS = (
    ("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat", "create_chat_completion"),
    ("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion", "create_completion"),
    ("vllm.v1.engine.async_llm", "AsyncLLM", "generate"),
)


@dataclass
class Ticket:
    """One HTTP request's pruning context, shared by its handler and the ``generate`` calls it makes."""

    config: SpecPrefillConfig
    """The request's pruning config: the server's with the request's ``vllm_xargs`` overrides."""
    messages: list[dict[str, Any]] | None = None
    kept_runs: bool = False
    usage_chunk: bool = False
    """The stream ends with a usage chunk (``stream_options.include_usage``): the stats go there, once."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def response_stats(self) -> dict[str, Any] | None:
        """The stats object of the response (merged over the prompts of a batched completion request)."""
        return merge_stats([self.stats[k] for k in sorted(self.stats)])


_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("specprefill_ticket", default=None)


# --- request handlers ----------------------------------------------------------------------------
def _wrap_handler(original: Callable[..., Any], *, chat: bool) -> Callable[..., Any]:
    @functools.wraps(original)
    async def handler(self: Any, request: Any, raw_request: Any = None) -> Any:
        xargs = getattr(request, "vllm_xargs", None)
        try:
            config = overrides_from_xargs(xargs, get_service().settings.prune_config())
            kept_runs = wants_kept_runs(xargs)
        except OverrideError as exc:
            return self.create_error_response(f"vllm_xargs.{exc}", param=f"vllm_xargs.{exc.field}")
        messages = chat_messages(request.messages) if chat else None
        usage_chunk = bool(getattr(getattr(request, "stream_options", None), "include_usage", False))
        ticket = Ticket(config=config, messages=messages, kept_runs=kept_runs, usage_chunk=usage_chunk)
        token = _ticket.set(ticket)
        try:
            result = await original(self, request, raw_request)
        finally:
            _ticket.reset(token)
        return _attach(result, ticket)

    return handler


def _attach(result: Any, ticket: Ticket) -> Any:
    if hasattr(result, "__aiter__"):
        return _stream_with_stats(result, ticket)
    stats = ticket.response_stats()
    if stats is not None and hasattr(result, "usage"):
        setattr(result, STATS_KEY, stats)
    return result


def _final_chunk(payload: str, *, usage_chunk: bool) -> bool:
    """Whether a stream chunk gets the stats: the closing usage chunk if one comes, else finish chunks.

    The usage chunk is the one with no choices (with ``continuous_usage_stats`` every chunk has a usage).
    """
    if usage_chunk:
        return '"choices":[]' in payload and '"usage":{' in payload
    return '"finish_reason"' in payload and payload.count('"finish_reason":null') < payload.count('"finish_reason"')


async def _stream_with_stats(stream: AsyncIterator[str], ticket: Ticket) -> AsyncIterator[str]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            is_data = isinstance(item, str) and item.startswith("data: {")
            if is_data and _final_chunk(item, usage_chunk=ticket.usage_chunk):
                item = _with_stats(item, ticket)
            yield item


def _with_stats(item: str, ticket: Ticket) -> str:
    stats = ticket.response_stats()
    if stats is None:
        return item
    try:
        chunk = json.loads(item[len("data: ") :])
    except ValueError:
        return item
    if not isinstance(chunk, dict) or "error" in chunk:
        return item
    chunk[STATS_KEY] = stats
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


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
    async with contextlib.aclosing(original(engine, prompt, params, request_id, *args, **kwargs)) as outputs:
        async for output in outputs:
            yield output


async def _prune(engine: Any, ticket: Ticket, prompt: dict[str, Any], params: Any) -> tuple[dict[str, Any], Any]:
    ids: list[int] = prompt["prompt_token_ids"]
    n = len(ids)
    service = get_service()
    extra = params.extra_args
    if has_position_keys(extra):  # already pruned by the client: its map is checked by the guard
        return prompt, stats_object(n, n)
    config = ticket.config
    if (config.keep_rate >= 1.0 and config.max_kept_tokens is None) or not config.long_enough(n):
        return prompt, stats_object(n, n)
    refused = _refusal(engine)
    if refused is not None:
        return prompt, stats_object(n, n, fallback_reason=refused)
    text = prompt.get("prompt") if isinstance(prompt.get("prompt"), str) else None
    probe = _probe_ids(engine)
    job = ScoreJob(ids=ids, config=config, text=text, messages=ticket.messages, probe=probe)
    try:
        outcome: Outcome = await service.run(job, tokens=n)
    except ScoringUnavailableError as exc:
        reason = "tokenizer_mismatch" if isinstance(exc.__cause__, TokenizerMismatchError) else exc.reason
        logger.warning("specprefill: request served unpruned (%s): %s", reason, exc)
        return prompt, stats_object(n, n, fallback_reason=reason)
    kept = [int(i) for i in outcome.kept]
    failure = f"error: {outcome.fallback_reason}" if outcome.fallback_reason else None  # the model failed
    stats = stats_object(n, len(kept), speculator_seconds=outcome.seconds, fallback_reason=failure)
    if len(kept) == n:
        return prompt, stats
    xargs, _ = request_extras(kept, n, n_tokens=len(kept))
    params.extra_args = {**(extra or {}), **xargs}
    pruned = {k: v for k, v in prompt.items() if k != "prompt_token_offsets"}
    pruned["prompt_token_ids"] = [ids[i] for i in kept]
    return pruned, stats


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
def _targets() -> list[tuple[Any, str]]:
    out = []
    for module_name, class_name, method in _TARGETS:
        module = importlib.import_module(module_name)
        out.append((getattr(module, class_name), method))
    return out


def install() -> None:
    """Wrap the chat/completion handlers and ``AsyncLLM.generate`` in this process (idempotent).

    Raises:
        ImportError: vLLM or one of the hook points is missing.

    """
    for cls, method in _targets():
        current = getattr(cls, method)
        if getattr(current, HOOK_MARK, False):
            continue
        if method == "generate":
            hook = _wrap_generate(current)
        else:
            hook = _wrap_handler(current, chat=method == "create_chat_completion")
        setattr(hook, HOOK_MARK, True)
        setattr(cls, method, hook)


def uninstall() -> None:
    """Put the original methods back."""
    for cls, method in _targets():
        current = getattr(cls, method)
        if getattr(current, HOOK_MARK, False):
            setattr(cls, method, current.__wrapped__)


def installed() -> bool:
    """Whether the hooks are in place in this process."""
    try:
        return all(getattr(getattr(cls, m), HOOK_MARK, False) for cls, m in _targets())
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
    install()
    service = get_service()
    if role == "host":
        service.on_batch = metrics.observe_batch
        shared.start_host(service)
    if settings.preload:
        service.start()
    logger.info("specprefill: server-side pruning with speculator %r (%s)", settings.speculator, role)
    return True
