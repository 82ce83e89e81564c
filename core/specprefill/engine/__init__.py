"""The engine: prune with the speculator, then generate with the base model.

- :mod:`.core`: :class:`SpecPrefillEngine` (generate, stream, and their async forms);
- :mod:`.planning`: what goes to the base, from a prune result or a speculator failure;
- :mod:`.result`: :class:`EngineResult`, :class:`EngineStats`, :class:`EngineChunk`;
- :mod:`.factory`: :func:`~.factory.load_engine`, one call from a model name to an engine;
- :mod:`.callargs`: which per-call keyword arguments are generation settings and which config overrides.
"""

from __future__ import annotations

from specprefill.engine.core import SpecPrefillEngine
from specprefill.engine.result import EngineChunk, EngineResult, EngineStats

__all__ = ["EngineChunk", "EngineResult", "EngineStats", "SpecPrefillEngine"]
