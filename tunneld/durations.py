"""Cumulative bucket counts of durations (handshake times), read by :mod:`tunneld.metrics`.

Pure and tiny on purpose: a peer records one value per established IKE SA
(never per packet), and the metrics endpoint turns the counts into a
Prometheus histogram at scrape time. Memory is fixed (one int per bucket),
whatever how many values were observed.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# Upper bounds in seconds (our choice): an IKE_SA_INIT + IKE_AUTH between two
# tunneld on a LAN takes tens of milliseconds, across continents a few hundred,
# and a lost message adds IKE's retransmission timeouts (1 s, 2 s, 4 s, ...).
HANDSHAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Durations:
    """How many durations fell at or below each bound (not cumulative here), their sum
    and count. ``counts[-1]`` is the overflow bucket (above the largest bound)."""

    bounds: tuple[float, ...] = HANDSHAKE_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)) or not all(
            math.isfinite(b) for b in self.bounds
        ):
            raise ValueError("bounds must be finite and strictly increasing")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        elif len(self.counts) != len(self.bounds) + 1:
            raise ValueError("one count per bound, plus the overflow bucket")

    def observe(self, seconds: float) -> None:
        """Record one duration (a negative or non-finite one is a bug: clamped, not raised)."""
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def add(self, other: Durations) -> None:
        """Fold ``other`` (same bounds) into this one."""
        if other.bounds != self.bounds:
            raise ValueError("different bounds")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.count += other.count

    def copy(self) -> Durations:
        return Durations(self.bounds, list(self.counts), self.total, self.count)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, how many at or below it)``, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
