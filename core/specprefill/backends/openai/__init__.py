"""Base backend for OpenAI-compatible servers: the backend, its bounded HTTP, its probes and error mapping.

- :mod:`.backend`: :class:`OpenAIBackend`, token ids to ``/v1/completions`` or messages to chat completions;
- :mod:`.http`: the reply checks and stream parsing of one request;
- :mod:`.probes`: what a server supports (``/tokenize``, restored positions), probed once;
- :mod:`.errors`: the ``openai`` client's exceptions as :class:`~specprefill.errors.BackendError`.

The deadline and retry rules every HTTP client here uses are in :mod:`specprefill.backends.retry`.
"""

from __future__ import annotations

from specprefill.backends.openai.backend import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TIMEOUT,
    OpenAIBackend,
)

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_REQUEST_TIMEOUT", "DEFAULT_TIMEOUT", "OpenAIBackend"]
