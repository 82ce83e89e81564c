"""``RemoteSpeculator``: the server's speculator over HTTP (``POST /specprefill/v1/prune``), no model here.

The server tokenises, renders and scores; the client gets the scored prompt back (``return_scores``) and
selects locally with the same pure functions as in-process pruning (:func:`~specprefill.scoring.select.select_scored`,
:func:`~specprefill.prompt.passages.select_passages`), so the result equals in-process pruning with the same
speculator and config. The client's config travels with the request, so the server scores with the client's
look-ahead and pooling settings.

Errors are typed: :class:`RemoteConnectionError` (no connection, timeout), :class:`RemoteRequestError` (400:
the server rejected the input; also a :class:`~specprefill.errors.PromptError`), :class:`RemoteResponseError`
(any other non-200, ``status`` set) and :class:`RemoteProtocolError` (a reply that is not a prune reply:
empty, truncated, not JSON, wrong shape). :meth:`RemoteSpeculator.prune_passages` falls back to keeping
everything, flagged, when the config's ``fallback_on_error`` is on and the server cannot score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import Unpack

from specprefill._deps import require
from specprefill.config import SpecPrefillConfig
from specprefill.errors import PromptError, SpeculatorError
from specprefill.prompt.assemble import ResultBuilder
from specprefill.prompt.passages import (
    DEFAULT_INSTRUCTION,
    Passage,
    PassageLayout,
    PassageOutcome,
    PrunedPassages,
    layout_passages,
    protect_scored_passages,
    select_passages,
)
from specprefill.prompt.prepared import PromptOptions, ScoredPrompt
from specprefill.prompt.protect import check_spans
from specprefill.prompt.segments import check_segments
from specprefill.result import Message, PruneResult, PruneStats
from specprefill.spans import Span
from specprefill.wire.prune import PRUNE_PATH, PruneReply, PruneRequest, WireFormatError, decode_json

if TYPE_CHECKING:
    import httpx

__all__ = [
    "PRUNE_PATH",
    "SERVER_ONLY_FIELDS",
    "RemoteConnectionError",
    "RemoteProtocolError",
    "RemoteRequestError",
    "RemoteResponseError",
    "RemoteSpeculator",
    "RemoteSpeculatorError",
    "fallback_passages",
]

logger = logging.getLogger("specprefill")


RemotePrompt = str | Sequence[Message]
"""What the server's speculator takes: text, or chat messages (rendered with its chat template)."""

SERVER_ONLY_FIELDS = frozenset({"max_speculator_tokens", "window_query_tokens"})
"""Config fields the client does not send: they bound the server's work and are the server's to set."""


class RemoteSpeculatorError(SpeculatorError):
    """The prune server could not score (connection, HTTP status or reply)."""


class RemoteConnectionError(RemoteSpeculatorError):
    """No reply: the server cannot be reached or did not answer within the timeout."""


class RemoteResponseError(RemoteSpeculatorError):
    """The server answered with an error status (``status``; ``error_type`` from its JSON error, if any)."""

    def __init__(self, message: str, *, status: int, error_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class RemoteRequestError(RemoteResponseError, PromptError):
    """The server rejected the request as invalid (HTTP 400); the message says which field."""


class RemoteProtocolError(RemoteSpeculatorError):
    """The reply is not a prune reply: empty, truncated, not JSON, or of the wrong shape."""


class RemoteSpeculator(ResultBuilder):
    """Score prompts with the speculator of a specprefill server, select locally.

    Args:
        base_url: The server's root URL, e.g. ``"http://gpu-node:8000"`` (a trailing ``/v1`` is accepted).
        timeout: Seconds for connecting and for the whole reply.
        api_key: Bearer token, when the server was started with ``--api-key``.
        transport: httpx transport for the sync client (tests).
        async_transport: httpx transport for the async client (tests).

    Example:
        >>> remote = RemoteSpeculator("http://127.0.0.1:8000", timeout=30)
        >>> result = remote.prune("long text ...", SpecPrefillConfig(keep_rate=0.3))

    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise SpeculatorError(f"base_url must be an http(s) URL such as 'http://host:8000', got {base_url!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout = float(timeout)
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._async_transport = async_transport
        self.name = f"remote:{self.base_url}"
        """The server speculator's name once a reply named it (before: ``remote:<base_url>``)."""

    @property
    def url(self) -> str:
        """The prune endpoint's URL."""
        return self.base_url + PRUNE_PATH

    # --- HTTP -----------------------------------------------------------------------------------------
    def request(self, body: PruneRequest) -> PruneReply:
        """Send one prune request and read the reply.

        Raises:
            RemoteConnectionError: The server cannot be reached or timed out.
            RemoteRequestError: The server rejected the request (400).
            RemoteResponseError: Any other non-200 status.
            RemoteProtocolError: The reply is not a valid prune reply.

        """
        httpx = require("httpx", extra="remote")
        try:
            with httpx.Client(timeout=self.timeout, transport=self._transport) as client:
                response = client.post(self.url, json=body.to_wire(), headers=self._headers)
                return self._read(response.status_code, response.content)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc

    async def arequest(self, body: PruneRequest) -> PruneReply:
        """Async :meth:`request` (a fresh ``httpx.AsyncClient`` per call, so any event loop works)."""
        httpx = require("httpx", extra="remote")
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._async_transport) as client:
                response = await client.post(self.url, json=body.to_wire(), headers=self._headers)
                return self._read(response.status_code, response.content)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc

    def _connection_error(self, exc: Exception) -> RemoteConnectionError:
        return RemoteConnectionError(
            f"prune server {self.url} did not answer ({type(exc).__name__}: {exc}); check base_url and that "
            f"the server runs with the prune endpoint, or raise timeout (now {self.timeout:g} s)"
        )

    def _read(self, status: int, content: bytes) -> PruneReply:
        if status != 200:
            message, kind = _error_of(content)
            text = f"prune server {self.url} answered HTTP {status}: {message}"
            error = RemoteRequestError if status == 400 else RemoteResponseError
            raise error(text, status=status, error_type=kind)
        try:
            reply = PruneReply.from_wire(decode_json(content, what="reply"))
        except WireFormatError as exc:
            raise RemoteProtocolError(f"prune server {self.url} sent a malformed reply: {exc}") from exc
        if reply.scored is not None and reply.scored.speculator:
            self.name = reply.scored.speculator
        return reply

    # --- scoring and pruning ----------------------------------------------------------------------------
    def request_for(
        self,
        prompt: str | Sequence[Message],
        config: SpecPrefillConfig | None = None,
        *,
        question: str | None = None,
        protected_spans: Iterable[Span] = (),
        segments: Iterable[int | Span] = (),
        return_scores: bool = True,
        fallback: bool = False,
    ) -> PruneRequest:
        """The request for ``prompt`` with ``config`` (all its fields but :data:`SERVER_ONLY_FIELDS`)."""
        cfg = config or SpecPrefillConfig()
        fields = cfg.model_dump(exclude=set(SERVER_ONLY_FIELDS) | {"keep_rate", "max_kept_tokens"})
        return PruneRequest(
            prompt=prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
            question=question,
            keep_rate=cfg.keep_rate,
            max_kept_tokens=cfg.max_kept_tokens,
            protected_spans=tuple(check_spans(protected_spans)),
            segments=tuple(check_segments(segments)),
            return_scores=return_scores,
            fallback=fallback,
            config=fields,
        )

    def score_prompt(
        self, prompt: RemotePrompt, config: SpecPrefillConfig | None = None, **options: Unpack[PromptOptions]
    ) -> ScoredPrompt:
        """Tokenise, protect and score on the server; what ``Speculator.score_prompt`` returns in-process.

        Raises:
            RemoteSpeculatorError: See :meth:`request`; also when the server could not score (503).

        """
        return _scored_of(self.request(self.request_for(prompt, config, **options)), self.url)

    async def ascore_prompt(
        self, prompt: RemotePrompt, config: SpecPrefillConfig | None = None, **options: Unpack[PromptOptions]
    ) -> ScoredPrompt:
        """Async :meth:`score_prompt`."""
        return _scored_of(await self.arequest(self.request_for(prompt, config, **options)), self.url)

    def prune(
        self, prompt: RemotePrompt, config: SpecPrefillConfig | None = None, **options: Unpack[PromptOptions]
    ) -> PruneResult:
        """Score on the server, select here: equals ``Speculator.prune`` with the server's speculator."""
        return self.select(self.score_prompt(prompt, config, **options), config)

    # --- passages (the document compressor and the node postprocessor) -----------------------------------
    def prune_passages(
        self, passages: Sequence[Passage], question: str | None, config: SpecPrefillConfig, **options: Any
    ) -> PrunedPassages:
        """:func:`specprefill.prompt.passages.prune_passages` (same options) with the prompt scored on the server.

        Raises:
            RemoteSpeculatorError: The server could not score and ``config.fallback_on_error`` is off (with it
                on, every passage is kept and the result's stats say ``fallback``).
            RemoteRequestError: The server rejected the request.

        """
        layout = layout_passages(passages, question, options.get("instruction", DEFAULT_INSTRUCTION))
        try:
            reply = self.request(self.request_for(layout.messages, config))
        except RemoteSpeculatorError as exc:
            return self._fallback(exc, passages, config)
        return self._select_passages(reply, layout, passages, config, options.get("min_tokens_per_passage", 0))

    async def aprune_passages(
        self, passages: Sequence[Passage], question: str | None, config: SpecPrefillConfig, **options: Any
    ) -> PrunedPassages:
        """Async :meth:`prune_passages`."""
        layout = layout_passages(passages, question, options.get("instruction", DEFAULT_INSTRUCTION))
        try:
            reply = await self.arequest(self.request_for(layout.messages, config))
        except RemoteSpeculatorError as exc:
            return self._fallback(exc, passages, config)
        return self._select_passages(reply, layout, passages, config, options.get("min_tokens_per_passage", 0))

    def _select_passages(
        self,
        reply: PruneReply,
        layout: PassageLayout,
        passages: Sequence[Passage],
        config: SpecPrefillConfig,
        min_tokens_per_passage: int,
    ) -> PrunedPassages:
        scored = protect_scored_passages(_scored_of(reply, self.url), layout, config)
        return select_passages(self, scored, layout, passages, config, min_tokens_per_passage=min_tokens_per_passage)

    def _fallback(
        self, exc: RemoteSpeculatorError, passages: Sequence[Passage], config: SpecPrefillConfig
    ) -> PrunedPassages:
        if isinstance(exc, RemoteRequestError) or not config.fallback_on_error:
            raise exc
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("remote speculator unavailable (%s); keeping every passage", reason)
        return fallback_passages(passages, config, reason, self.name)


def fallback_passages(passages: Sequence[Passage], config: SpecPrefillConfig, reason: str, name: str) -> PrunedPassages:
    """Every passage kept whole, the result flagged as a fallback (token counts 0: nothing was tokenised)."""
    stats = PruneStats(
        tokens_in=0,
        tokens_kept=0,
        keep_ratio=1.0,
        keep_rate=config.keep_rate,
        fallback=True,
        fallback_reason=reason,
        speculator=name,
    )
    result = PruneResult(
        original_length=0,
        input_ids=[],
        kept_indices=np.zeros(0, dtype=np.int64),
        kept_token_ids=[],
        text="",
        stats=stats,
    )
    return PrunedPassages([PassageOutcome(text=p.text) for p in passages], result)


def _scored_of(reply: PruneReply, url: str) -> ScoredPrompt:
    if reply.scored is None:
        reason = reply.stats.get("fallback_reason") or "the reply holds no scores"
        raise RemoteProtocolError(f"prune server {url} returned no scored prompt ({reason})")
    return reply.scored


def _error_of(content: bytes) -> tuple[str, str]:
    """``(message, type)`` from an OpenAI-style JSON error body, or a snippet of whatever came."""
    try:
        error = decode_json(content, what="error reply")
    except WireFormatError:
        return content[:200].decode("utf-8", errors="replace") or "(empty body)", ""
    inner: Any = error.get("error") if isinstance(error, dict) else None
    if isinstance(inner, dict):
        return str(inner.get("message", inner)), str(inner.get("type", ""))
    return str(inner if inner is not None else error)[:200], ""
