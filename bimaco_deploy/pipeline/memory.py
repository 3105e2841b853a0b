"""Peak memory of a block of work: the process's resident set, sampled while the block runs.

``ru_maxrss`` only ever grows, so it cannot tell two pipelines of one process apart, or
say what one image cost after the models were loaded. :class:`PeakRSS` polls the
resident set size (``/proc/self/statm``) from a background thread and keeps the maximum
seen inside the ``with`` block; on CUDA it also records the allocator's peak.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident set size now (Linux: /proc/self/statm; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_mib() -> float:
    """The process's peak resident set since it started, MiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRSS:
    """``with PeakRSS() as m: work()`` -> ``m.peak_mib`` (max RSS during the block), ``m.start_mib``,
    ``m.cuda_peak_mib`` (None without CUDA). Sampled every ``interval_s`` (default 2 ms): a
    spike shorter than that can be missed, so :meth:`peak_mib` also reads ``ru_maxrss`` when
    it rose during the block."""

    def __init__(self, interval_s: float = 0.002, device: Optional[str] = None):
        self.interval_s = interval_s
        self.device = device
        self.start_mib = self.peak_mib = 0.0
        self.cuda_peak_mib: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._max = 0
        self._maxrss0 = 0.0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._maxrss0 = peak_rss_mib()
        self._max = rss_bytes()
        self.start_mib = self._max / 2**20
        if self.device and self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._max = max(self._max, rss_bytes())
        peak = self._max / 2**20
        maxrss = peak_rss_mib()
        if maxrss > self._maxrss0:  # the process set a new record inside the block: that is the peak
            peak = max(peak, maxrss)
        self.peak_mib = peak
        if self.device and self.device.startswith("cuda") and torch.cuda.is_available():
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20
