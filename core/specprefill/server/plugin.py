"""The ``vllm.general_plugins`` entry point of server-side pruning (``specprefill_server``).

vLLM calls every general plugin in every process it starts. This one first makes sure the position hooks
are in place (:func:`specprefill.vllm_plugin.register`, the other entry point; both are idempotent, so their
order does not matter), then, with ``SPECPREFILL_SERVER_SPECULATOR`` set, installs the request hooks and
the scoring service in the process that serves HTTP (:func:`specprefill.server.hooks.install_if_configured`).
Engine-core and worker processes never load a speculator. ``SPECPREFILL_VLLM_PLUGIN=0`` turns both off.
"""

from __future__ import annotations

import os

from specprefill import vllm_plugin
from specprefill.server.hooks import install_if_configured

__all__ = ["register"]


def register() -> None:
    """Install the position hooks, then server-side pruning when it is configured (see the module docstring)."""
    if vllm_plugin.plugin_disabled(os.environ):
        return
    vllm_plugin.register()
    install_if_configured()
