"""Prometheus counters and histograms of server-side pruning, shown by vLLM's ``/metrics``.

They are registered with ``prometheus_client``'s default registry, the one vLLM's ``/metrics`` route serves
(with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client writes them to that folder, where vLLM collects them).
With ``--api-server-count`` above 1 the scoring host is vLLM's main process, which imported prometheus_client
before vLLM set that folder; the metrics here are built in multiprocess mode whenever the folder is set, so
the host's batch sizes reach ``/metrics`` too.

==========================================  ======================================================
``specprefill_requests_total{outcome}``     requests: ``pruned``, ``passed_through``, ``fallback``
``specprefill_fallbacks_total{reason}``     fallbacks by reason (``queue_full``, ``deadline``, ...)
``specprefill_prompt_tokens_in_total``      prompt tokens vLLM rendered for requests seen
``specprefill_prompt_tokens_kept_total``    prompt tokens sent to the base model
``specprefill_speculator_seconds``          histogram of speculator time per scored request
``specprefill_scoring_batch_size``          histogram of requests the scoring worker took per wake-up
==========================================  ======================================================
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["LOG_FORMAT", "METRIC_NAMES", "ensure_log_handler", "log_fallback", "observe", "observe_batch"]

logger = logging.getLogger("specprefill.server")

LOG_FORMAT = "%(levelname)s %(asctime)s [specprefill] %(message)s"
"""How specprefill's lines look in the server log (beside vLLM's own)."""

METRIC_NAMES = (
    "specprefill_requests_total",
    "specprefill_fallbacks_total",
    "specprefill_prompt_tokens_in_total",
    "specprefill_prompt_tokens_kept_total",
    "specprefill_speculator_seconds",
    "specprefill_scoring_batch_size",
)
"""Names as they appear on ``/metrics`` (counters carry the ``_total`` suffix there)."""

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_BATCH = (1, 2, 4, 8, 16, 32, 64)

_metrics: dict[str, Any] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def _multiprocess_values() -> Iterator[None]:
    """Build metrics in multiprocess mode when vLLM set its folder after prometheus_client was imported.

    prometheus_client picks its value class once, at import; vLLM sets ``PROMETHEUS_MULTIPROC_DIR`` in its
    main process later. Unlabelled metrics take their value at construction, so the class is swapped for
    the construction only.
    """
    values: Any = importlib.import_module("prometheus_client.values")
    multiproc = "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ
    previous = values.ValueClass
    if multiproc and previous is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()
    try:
        yield
    finally:
        values.ValueClass = previous


def _registered() -> dict[str, Any]:
    with _lock, _multiprocess_values():
        if not _metrics:
            prom: Any = importlib.import_module("prometheus_client")
            _metrics["requests"] = prom.Counter(
                "specprefill_requests", "Requests seen by SpecPrefill, by outcome", ["outcome"]
            )
            _metrics["fallbacks"] = prom.Counter(
                "specprefill_fallbacks", "Requests served unpruned because scoring failed, by reason", ["reason"]
            )
            _metrics["tokens_in"] = prom.Counter("specprefill_prompt_tokens_in", "Prompt tokens before pruning")
            _metrics["tokens_kept"] = prom.Counter("specprefill_prompt_tokens_kept", "Prompt tokens after pruning")
            _metrics["seconds"] = prom.Histogram(
                "specprefill_speculator_seconds", "Speculator time per scored request", buckets=_BUCKETS
            )
            _metrics["batch"] = prom.Histogram(
                "specprefill_scoring_batch_size", "Requests the scoring worker took per wake-up", buckets=_BATCH
            )
        return _metrics


def observe(stats: Mapping[str, Any]) -> None:
    """Count one request from its stats object (see :func:`specprefill.wire.stats.stats_object`)."""
    metrics = _registered()
    reason = stats.get("fallback_reason")
    outcome = "fallback" if stats.get("fallback") else "pruned" if stats.get("pruned") else "passed_through"
    metrics["requests"].labels(outcome=outcome).inc()
    if reason:
        metrics["fallbacks"].labels(reason=str(reason).split(":", 1)[0]).inc()
    metrics["tokens_in"].inc(int(stats.get("tokens_in", 0)))
    metrics["tokens_kept"].inc(int(stats.get("tokens_kept", 0)))
    seconds = float(stats.get("speculator_seconds", 0.0))
    if seconds > 0:
        metrics["seconds"].observe(seconds)


def observe_batch(size: int) -> None:
    """Count one scoring-worker wake-up that took ``size`` requests."""
    _registered()["batch"].observe(size)


def log_fallback(reason: str, detail: str, *, tokens: int) -> None:
    """One WARNING line for one request served unpruned: the stable ``reason`` code and the details.

    The details (exception text, estimates) go to the log only; the response's stats carry the code.
    """
    logger.warning("request of %d prompt tokens served unpruned: %s (%s)", tokens, reason, detail)


def ensure_log_handler() -> None:
    """Give the ``specprefill`` logger a stderr handler when nothing would print its lines.

    vLLM configures its own ``vllm`` logger only, so in a server process specprefill's warnings (every
    fallback) would otherwise go nowhere. A handler the application configured is left alone.
    """
    root = logging.getLogger("specprefill")
    if root.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
