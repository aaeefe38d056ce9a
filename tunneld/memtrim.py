"""Freed heap goes back to the system: glibc's ``malloc_trim(0)`` at quiet moments.

Why (docs/performance.md, "Memory"): Python keeps its small objects in pymalloc
arenas, which go back to the system when empty; everything larger (big dicts
and lists, bytes over 512 bytes, what OpenSSL and cryptography allocate) comes
from glibc's heap, which by itself only returns the free space at its very top.
A burst of IKE sessions that come and go leaves free chunks all over the heap,
and start-up leaves the garbage of reading the configuration and certificates.
``malloc_trim(0)`` hands every free page inside the heap back (MADV_DONTNEED):
1.8 MB of a gateway's 46 MB once its first Child SA is up.

When, in :meth:`HeapTrimmer.run` (a task of the daemon's nursery):

1. once when the daemon is ready (what start-up freed), after a full garbage
   collection;
2. after churn (IKE sessions created or forgotten, :meth:`HeapTrimmer.churn`):
   once no churn came for :data:`QUIET` seconds, or :data:`MAX_DELAY` seconds
   after the first churn not trimmed yet, whichever is first (a hub under
   continuous churn still trims now and then);
3. never otherwise: an idle daemon does not wake up for it.

The call takes milliseconds (5 ms on the 35 MB heap of a responder after
10,000 handshakes, docs/performance.md) and runs in the trio thread: a worker
thread would get a malloc arena of its own, which is the opposite of the point.
Where glibc is not the C library (musl), or the symbol is missing, the trimmer
does nothing.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable

import trio

log = logging.getLogger("tunneld.memtrim")

QUIET = 1.0  # seconds without churn before trimming (a handshake takes ~10 ms)
MAX_DELAY = 10.0  # seconds from the first untrimmed churn to a trim, churn or not


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Trims the heap when the daemon is ready and after churn (see the module docstring)."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._churned = trio.Event()
        self._first_churn: float | None = None  # since the last trim
        self._last_churn = 0.0
        self.trims = 0  # how many times the heap was trimmed (status)
        self.seconds = 0.0  # time spent trimming, in all

    @property
    def available(self) -> bool:
        return self._trim is not None

    def churn(self) -> None:
        """An IKE session was created or forgotten: trim once things quiet down."""
        now = trio.current_time()
        self._last_churn = now
        if self._first_churn is None:
            self._first_churn = now
        self._churned.set()

    def trim_now(self) -> None:
        if self._trim is None:
            return
        started = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - started
        self.trims += 1

    async def run(self) -> None:
        if self._trim is None:
            log.debug("malloc_trim not available: freed heap stays with the process")
            return
        gc.collect()  # rule 1: start-up's cyclic garbage first (0.1 MB, ~10 ms, once)
        self.trim_now()
        while True:
            await self._churned.wait()  # rule 3
            while not self._due(trio.current_time()):
                await trio.sleep(QUIET)
            self._churned = trio.Event()
            self._first_churn = None
            self.trim_now()  # rule 2

    def _due(self, now: float) -> bool:
        first = self._first_churn
        return now - self._last_churn >= QUIET or (first is not None and now - first >= MAX_DELAY)
