"""The IKE port's share of the pumps' thread while the tunnels carry traffic.

Every datagram read from the IKE port (UDP 500) is handed to the dispatcher as
it is read, in the pumps' own thread (tunneld.datapath): under a spoofed
IKE_SA_INIT flood that is a cookie each (read, header, HMAC, reply, sendto:
~10-15 us here, the kernel's share of the sendto included), and one sender
flat out reaches ~20k/s, more than half of the one thread that also carries
every ESP packet. The data plane must win that thread; a new gateway must
still get its cookie. Rules (the pump asks :meth:`IkeShare.delay` before each
batch from the IKE port and reports the batch's time with :meth:`charge`):

1. While no ESP packet moved for :data:`IDLE_AFTER` seconds the IKE port is
   not limited: there is no traffic to protect, and every request read is one
   the kernel did not drop (a restarted peer's IKE_SA_INIT and its retry with
   the cookie among them).
2. While ESP moves, the IKE port may take :data:`SHARE` of the thread's time:
   a token bucket in seconds of thread time, refilled at ``share`` per second
   up to :data:`BURST` and charged with each batch's time after it ran. Below
   zero, the pump waits until the bucket is back at zero. Meanwhile datagrams
   wait in the socket's receive buffer (4 MiB), and what overflows it the
   kernel drops: counted there (``kernel_drops`` of the socket in
   ``tunneld status --json``, SO_MEMINFO), never read, never answered. ESP on
   the NAT-T port is never limited (nor IKE there: after IKE_SA_INIT every
   exchange of an IKE SA runs on it, and a flood of it is dropped unanswered
   by SPI).
3. Pure: times come in as arguments (the pump passes ``trio.current_time()``,
   so a virtual clock drives it in tests). Counters: ``waits`` (times the pump
   waited), ``waited`` (seconds in all).

What it trades (docs/operations.md, "Under attack"): while a tunnel carries
traffic, a flood faster than ``share`` of the thread can answer overflows the
socket buffer, and a new gateway's IKE_SA_INIT may be among the datagrams the
kernel drops (it retransmits after 1, 2.8, 5.8 s); an idle gateway answers
all it can.
"""

from __future__ import annotations

import math

# What we chose. SHARE: the data plane keeps at least 80% of the thread's time
# (the 80% goal of a tunnel's throughput under a flood, issue 9); at ~12 us a
# request that still answers ~16k requests/s while the tunnels are busy.
SHARE = 0.2
BURST = 0.01  # seconds of thread time the IKE port may take at once after a quiet spell
IDLE_AFTER = 0.1  # seconds without ESP after which the tunnels count as idle (rule 1)
_EPSILON = 1e-6  # seconds of thread: a debt this small is none


class IkeShare:
    """A token bucket of thread time for the IKE port (see the module docstring)."""

    def __init__(
        self, share: float = SHARE, burst: float = BURST, idle_after: float = IDLE_AFTER
    ) -> None:
        if not 0 < share <= 1 or burst <= 0 or idle_after < 0:
            raise ValueError("IkeShare: 0 < share <= 1, burst > 0, idle_after >= 0")
        self.share = share
        self.burst = burst
        self.idle_after = idle_after
        self.tokens = burst
        self._filled_at: float | None = None
        self._esp_count = -1
        self._esp_at = -math.inf
        self.waits = 0
        self.waited = 0.0

    def delay(self, now: float, esp_packets: int) -> float:
        """Seconds the IKE pump waits before its next batch (0: go); ``esp_packets``: the
        data plane's running count of ESP packets (rule 1 watches it move)."""
        if esp_packets != self._esp_count:
            if self._esp_count >= 0:  # (the first look is no movement)
                self._esp_at = now
            self._esp_count = esp_packets
        self._refill(now)
        if now - self._esp_at > self.idle_after:  # rule 1; no debt carried into traffic
            self.tokens = max(self.tokens, 0.0)
            return 0.0
        if self.tokens >= -_EPSILON:  # (back at zero after a wait, but for rounding)
            return 0.0
        wait = -self.tokens / self.share
        self.waits += 1
        self.waited += wait
        return wait

    def charge(self, seconds: float, now: float) -> None:
        """A batch from the IKE port took ``seconds`` of the thread, ending at ``now``."""
        self._refill(now)
        self.tokens -= seconds

    def _refill(self, now: float) -> None:
        if self._filled_at is not None and now > self._filled_at:
            self.tokens = min(self.burst, self.tokens + (now - self._filled_at) * self.share)
        self._filled_at = now if self._filled_at is None else max(now, self._filled_at)

    def status(self) -> dict[str, float | int]:
        return {"share": self.share, "waits": self.waits, "waited_s": round(self.waited, 3)}
