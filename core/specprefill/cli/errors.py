"""Exit codes and how the CLI turns exceptions into one ``error: ...`` line."""

from __future__ import annotations

import logging
import sys
import traceback

from specprefill.errors import SpecPrefillError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "fail", "one_line", "short_reason"]

logger = logging.getLogger("specprefill")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_SHORT = 160


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (white space collapsed), or its type name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def short_reason(exc: BaseException, limit: int = _SHORT) -> str:
    """Type and the start of the message of an unexpected exception (its text may quote the prompt)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = " ".join(first.split())
    if len(reason) > limit:
        reason = reason[: limit - 1] + "…"
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def fail(exc: BaseException, *, verbose: bool) -> int:
    """Print the one-line error for ``exc`` on stderr (the traceback too with ``--verbose``); return 2.

    Typed errors (:class:`~specprefill.errors.SpecPrefillError`) print their whole message, which says the
    fix. ``MemoryError`` says the input was too large. Anything else prints its type and a short reason;
    the full message goes to the log at DEBUG level only.
    """
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, SpecPrefillError):
        message = one_line(exc)
    elif isinstance(exc, MemoryError):
        message = "out of memory; give a smaller input (fewer or shorter files) or free some memory"
    else:
        logger.debug("unexpected error: %r", exc)
        message = f"unexpected {short_reason(exc)} (run with --verbose for details)"
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR
