"""Server-side SpecPrefill inside vLLM's OpenAI API server: the speculator runs beside the base model.

With ``SPECPREFILL_SERVER_SPECULATOR`` set (see :mod:`.settings`), the vLLM plugin entry point
(:func:`specprefill.server.plugin.register`) installs :mod:`.hooks` in the API-server process: every
``/v1/chat/completions`` and ``/v1/completions`` request is pruned on the token ids vLLM rendered, scored
by the :mod:`.service` off the event loop, prefilled at the original positions, and answered with a
``specprefill`` stats object (:mod:`specprefill.wire.stats`) and counted in ``/metrics`` (:mod:`.metrics`).
``specprefill serve`` (:mod:`specprefill.cli.serve`) starts such a server. With ``--api-server-count``
above 1 the API-server processes share vLLM's main process's speculator (:mod:`.shared`).

Importing this package does not import vLLM, torch or a model.
"""

from __future__ import annotations

from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.server.shared import get_service

__all__ = ["ScoringService", "ScoringUnavailableError", "ServerSettings", "get_service"]
