"""Capability probes of an OpenAI-compatible server: a shared tokenizer, and restored positions.

Only definite answers are cached: a working ``/tokenize`` (or 404 everywhere), and a position probe that
ran (or was refused with 400/404/405/422). Transient failures (5xx, timeouts, connection errors) give the
safe answer for now (text path, compacted positions) and the probe runs again after a growing backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from specprefill.backends.base import BaseRequest
from specprefill.backends.retry import Deadline, ProbeGate, status_of
from specprefill.errors import BackendError

__all__ = ["TOKENIZER_PROBE", "ServerProbes"]

logger = logging.getLogger("specprefill.openai")

TOKENIZER_PROBE = "Speculative prefill probe: naïve café, 12345 tokens → 東京 ✓ <b>ok</b>\n\tend."
"""Text tokenised by both the server and the speculator to decide whether they share a tokenizer."""

_REFUSED = frozenset({400, 404, 405, 422})
"""Statuses that are a definite "no" from a capability probe."""


class ServerProbes:
    """The probes of :class:`~specprefill.backends.openai.backend.OpenAIBackend` (mixed into it)."""

    client: Any
    base_url: str
    request_timeout: float | None
    restore_positions: bool | None
    _openai: Any
    _positions_lock: threading.Lock
    _tokenize_gate: ProbeGate
    _positions_gate: ProbeGate

    @property
    def model(self) -> str:
        """The served model name (provided by the backend)."""
        raise NotImplementedError

    def _timeout(self, deadline: Deadline) -> Any:  # provided by the backend
        raise NotImplementedError

    def tokenize_urls(self) -> list[str]:
        """Candidate URLs of a vLLM-style ``/tokenize`` endpoint: the server root, then under ``base_url``."""
        root = self.base_url.removesuffix("/v1")
        urls = [f"{root}/tokenize"]
        if root != self.base_url:
            urls.append(f"{self.base_url}/tokenize")
        return urls

    def tokenize(self, text: str) -> list[int] | None:
        """Token ids of ``text`` by the server's tokenizer (no special tokens), or None if it cannot say.

        Args:
            text: Text to tokenise.

        Returns:
            The ids from ``POST /tokenize``, or None when the server has no such endpoint or fails.

        """
        return self._server_tokens(text)[0]

    def _server_tokens(self, text: str) -> tuple[list[int] | None, bool]:
        """``(ids or None, definite)``: definite when the ids came back or every URL answered 404."""
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        definite = True
        timeout = self._timeout(Deadline(min(self.request_timeout or 30.0, 30.0)))
        for url in self.tokenize_urls():
            try:
                data = self.client.post(url, cast_to=object, body=body, options={"timeout": timeout})
            except self._openai.OpenAIError as exc:
                logger.debug("tokenize at %s failed: %s", url, exc)
                definite = definite and status_of(exc) == 404
                continue
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if isinstance(tokens, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                return [int(t) for t in tokens], True
            definite = False
        return None, definite

    def _compare_tokenizer(self, speculator: object) -> bool | None:
        """Compare the server's ``/tokenize`` of :data:`TOKENIZER_PROBE` with the speculator's ``encode``.

        Definite answers (a working ``/tokenize``, or 404 everywhere) are cached by the caller; after a
        transient failure the answer is "not now" (the text path) and the probe runs again after a backoff.
        """
        encode = getattr(speculator, "encode", None)
        if not callable(encode):
            return False
        if not self._tokenize_gate.open():
            return None
        try:
            server, definite = self._server_tokens(TOKENIZER_PROBE)
        except BackendError as exc:  # listing models failed
            logger.info("tokenizer probe failed (%s); using the text path for now", type(exc).__name__)
            server, definite = None, False
        if server is None and not definite:
            self._tokenize_gate.failed()
            logger.info("tokenizer probe at %s failed transiently; text path until it is retried", self.base_url)
            return None
        self._tokenize_gate.reset()
        answer = server is not None and list(encode(TOKENIZER_PROBE)[0]) == server
        logger.info("server %s %s the speculator's tokenizer", self.base_url, "shares" if answer else "does not share")
        return answer

    def restored_positions_body(self, request: BaseRequest) -> dict[str, Any] | None:
        """Extra request body that makes the server prefill at the original positions, or None.

        A vLLM server with the specprefill plugin (:mod:`specprefill.vllm_plugin`) takes the original
        positions in ``vllm_xargs`` plus a position-derived ``cache_salt``; whether this server does is
        probed (:func:`~specprefill.vllm_plugin.remote.probe_position_support`) and a definite answer cached.
        A stock server, or one that cannot be probed right now, gets compacted positions (None is returned).

        Args:
            request: A token-form request with ``position_ids`` and ``original_length``.

        Returns:
            ``{"vllm_xargs": ..., "cache_salt": ...}`` when the server restores positions, else None.

        """
        from specprefill.vllm_plugin import remote

        if request.token_ids is None or not self._server_restores_positions(request.token_ids):
            return None
        return remote.positions_body(request.token_ids, request.position_ids, request.original_length)

    def _server_restores_positions(self, token_ids: list[int]) -> bool:
        if self.restore_positions is not None:
            return self.restore_positions
        with self._positions_lock:
            if self.restore_positions is None and self._positions_gate.open():
                from specprefill.vllm_plugin import remote

                try:
                    answer = remote.probe_position_support(self.client, self.model, token_ids, raise_errors=True)
                except Exception as exc:
                    if status_of(exc) not in _REFUSED:
                        self._positions_gate.failed()
                        logger.info("position probe failed (%s); compacted positions for now", type(exc).__name__)
                        return False
                    answer = False
                self._positions_gate.reset()
                self.restore_positions = answer
                if not answer:
                    logger.warning(
                        "the server at %s does not restore original positions (no specprefill vLLM plugin); "
                        "pruned prompts go at compacted positions (stats: positions='compacted')",
                        self.base_url,
                    )
        return bool(self.restore_positions)
