"""Points where running scoring work can be stopped, or can let other work run first.

A speculator calls :func:`checkpoint` at its natural boundaries: after every attention layer of a forward
pass (``"layer"``), between look-ahead steps (``"step"``) and between the windows of a long prompt
(``"window"``). Outside a :func:`watching` block that costs one context-variable lookup and does nothing.
Inside one, the watcher decides: it raises :class:`ScoringCancelledError` when nobody waits for the result
any more (the caller's deadline passed, the client disconnected, the server is shutting down), so the
speculator stops within one layer; and at ``"window"`` boundaries it may run other, more urgent scoring
jobs before this one continues (the server's scoring service does, so a short request never waits for the
whole of a huge one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Literal

from specprefill.errors import SpeculatorError

__all__ = ["Boundary", "ScoringCancelledError", "Watcher", "checkpoint", "watching"]

Boundary = Literal["layer", "step", "window"]
"""Where a speculator is: after an attention layer, between look-ahead steps, between prompt windows."""

Watcher = Callable[[Boundary], None]
"""Called at every checkpoint; raises :class:`ScoringCancelledError` to stop the work."""

_WATCHER: ContextVar[Watcher | None] = ContextVar("specprefill_scoring_watcher", default=None)


class ScoringCancelledError(SpeculatorError):
    """Scoring stopped at a checkpoint because nobody waits for its result any more.

    Never a fallback: the work is abandoned, so there is no request left to serve with it.
    """


def checkpoint(boundary: Boundary) -> None:
    """Let the active watcher (if any) stop this work or run other work first.

    Raises:
        ScoringCancelledError: The watcher cancelled the work.

    """
    watcher = _WATCHER.get()
    if watcher is not None:
        watcher(boundary)


@contextlib.contextmanager
def watching(watcher: Watcher | None) -> Iterator[None]:
    """Run the block with ``watcher`` called at every :func:`checkpoint` (None: no watcher)."""
    token = _WATCHER.set(watcher)
    try:
        yield
    finally:
        _WATCHER.reset(token)
