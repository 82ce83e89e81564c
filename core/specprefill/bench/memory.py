"""Peak resident memory of a block of code, sampled from /proc (works for torch's CPU allocations)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["PeakMemory", "rss_bytes", "track_peak_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


@dataclass
class PeakMemory:
    """Resident memory before a block and the highest value seen while it ran."""

    start_bytes: int = 0
    peak_bytes: int = 0

    @property
    def extra_mib(self) -> float:
        """Peak growth over the starting point, in MiB."""
        return max(self.peak_bytes - self.start_bytes, 0) / 2**20


@contextmanager
def track_peak_rss(interval_s: float = 0.002) -> Iterator[PeakMemory]:
    """Sample RSS in a background thread while the block runs."""
    result = PeakMemory(start_bytes=rss_bytes())
    result.peak_bytes = result.start_bytes
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result.peak_bytes = max(result.peak_bytes, rss_bytes())
            time.sleep(interval_s)

    worker = threading.Thread(target=sample, daemon=True)
    worker.start()
    try:
        yield result
    finally:
        done.set()
        worker.join()
        result.peak_bytes = max(result.peak_bytes, rss_bytes())
