"""Why a packet was dropped: the one exception family of the data plane.

Every decoder and lookup in :mod:`tunneld.dataplane` signals a packet it will
not pass on by raising :class:`EspDrop` with a :class:`DropReason`; the packet
pumps catch it and count it. Any other exception out of the data plane is a
bug. :mod:`tunneld.dataplane.sa` re-exports both names (the contract in
``docs/architecture.md`` calls them ``sa.DropReason`` and ``sa.EspDrop``); they
live here so that the codec, the replay window and the SA objects can all
raise them without importing each other.
"""

from __future__ import annotations

from enum import Enum


class DropReason(Enum):
    """The drop counters kept per SA and per SA database."""

    AUTH_FAILED = "auth_failed"  # ICV did not verify (RFC 4303 §3.4.4.1)
    REPLAY = "replay"  # duplicate or left of the window (RFC 4303 §3.4.3)
    UNKNOWN_SPI = "unknown_spi"  # no inbound SA for the SPI (RFC 4303 §3.4.2)
    MALFORMED = "malformed"  # too short, bad trailer, bad inner packet
    NO_POLICY = "no_policy"  # inner addresses outside the tunnel's selectors
    DUMMY = "dummy"  # next header 59: TFC dummy packet (RFC 4303 §2.6)
    SEQ_EXHAUSTED = "seq_exhausted"  # outbound counter would wrap (RFC 4303 §3.3.3)


class EspDrop(Exception):
    """A packet is dropped; ``reason`` says why. Never carries packet or key bytes."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


_REASONS = tuple(DropReason)  # iterating the enum class is slow; one dict per SA


def zero_counters() -> dict[DropReason, int]:
    """A fresh drop-counter dict with every reason present (stable status output)."""
    return dict.fromkeys(_REASONS, 0)
