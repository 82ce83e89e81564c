"""Deadlines and retries for HTTP clients: an overall time limit, which failures to retry and how long to wait.

Generic: nothing here knows a particular API. :class:`Deadline` bounds a whole request (retries, waits and a
trickling stream included); :func:`retry_delay` honours ``Retry-After`` (seconds or an HTTP date) and backs
off with jitter otherwise; :class:`ProbeGate` spaces out capability probes after transient failures.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from specprefill.errors import BackendError

__all__ = ["RETRY_STATUS", "Deadline", "ProbeGate", "retry_after", "retry_delay", "retryable", "status_of"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth a retry: timeouts, conflicts, too early, rate limits and server errors."""


@dataclass
class Deadline:
    """An overall time limit (``seconds=None``: none)."""

    seconds: float | None
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit; never negative)."""
        if self.seconds is None:
            return math.inf
        return max(0.0, self.start + self.seconds - time.monotonic())

    def expired(self) -> bool:
        """Whether the limit has passed."""
        return self.remaining() <= 0.0

    def error(self, where: str, doing: str) -> BackendError:
        """The error for a request cut at the deadline."""
        return BackendError(
            f"the server at {where} did not finish {doing} within request_timeout={self.seconds}s (it hung, "
            "answered too slowly, or kept failing); raise request_timeout=... or check the server load"
        )


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an ``openai`` status error, else None."""
    status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date), or None."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
    if parsed is None:
        return None
    return max(0.0, parsed.timestamp() - time.time())


def retryable(exc: BaseException, openai: Any) -> bool:
    """Whether a failed attempt may be retried (connection trouble, timeouts, 408/409/425/429/5xx).

    Args:
        exc: The failure.
        openai: The ``openai`` module (its timeout and connection error classes; imported lazily by callers).

    """
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    status = status_of(exc)
    return status is not None and (status in RETRY_STATUS or status >= 500)


def retry_delay(attempt: int, exc: BaseException, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds before retry number ``attempt`` (from 0): ``Retry-After`` if given, else jittered backoff."""
    asked = retry_after(exc)
    if asked is not None:
        return asked
    return float(min(cap, base * 2.0**attempt)) * (0.5 + random.random() / 2)


@dataclass
class ProbeGate:
    """When a capability probe may run again after a transient failure (exponential backoff)."""

    first: float = 2.0
    cap: float = 300.0
    delay: float = 0.0
    not_before: float = 0.0

    def open(self) -> bool:
        """Whether a probe may run now."""
        return time.monotonic() >= self.not_before

    def failed(self) -> None:
        """Record a transient failure: wait longer before the next probe."""
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        self.not_before = time.monotonic() + self.delay

    def reset(self) -> None:
        """Record a definite answer."""
        self.delay = self.not_before = 0.0
