"""Loading the speculator a server's settings name: an embedded name, a folder, a hub id, or a factory."""

from __future__ import annotations

import importlib
import re

from specprefill.errors import ConfigurationError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator

__all__ = ["load_configured_speculator"]

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_configured_speculator(settings: ServerSettings) -> Speculator:
    """Load the speculator that ``settings.speculator`` names (a ``module:callable`` factory or a model).

    ``settings.batch_forward``, when set, goes to the speculator's ``batch_forward`` (if it has one).

    Raises:
        ConfigurationError: No speculator configured, or the factory cannot be imported or returns no Speculator.
        ModelLoadError: The model cannot be loaded.

    """
    speculator = _load(settings)
    if settings.batch_forward is not None and hasattr(speculator, "batch_forward"):
        speculator.batch_forward = settings.batch_forward
    return speculator


def _load(settings: ServerSettings) -> Speculator:
    name = settings.speculator
    if not name:
        raise ConfigurationError("no speculator configured; set SPECPREFILL_SERVER_SPECULATOR")
    if _FACTORY.match(name):
        module_name, attr = name.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"speculator factory {name!r} cannot be imported: {exc}") from exc
        made = factory()
        if not isinstance(made, Speculator):
            raise ConfigurationError(f"speculator factory {name!r} returned {type(made).__name__}, not a Speculator")
        return made
    from specprefill.speculator.loading import load_speculator

    return load_speculator(name, device=settings.device, dtype=settings.dtype)
