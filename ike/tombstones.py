"""Deleted IKE SAs as tombstones: the cached answer, without the session.

When an IKE SA is deleted, its last response may be lost; the peer then
retransmits the request (a DELETE, or an IKE_AUTH we refused) and must get
the identical response again (RFC 7296 §2.1). So a closed session answered
retransmissions for the retransmission window (41 s by default) before it
was forgotten: a hub whose spokes come and go held thousands of closed
session objects, each a few KB, for nothing but one cached datagram.

A :class:`Tombstone` is what that answer needs, and nothing else: the SA's
SPIs, the message ID and bytes of the request it answered, the response's
bytes, and who may ask again. The daemon keeps one :class:`Tombstones`
table for the whole gateway (``IkeSession.bury`` makes the stones when the
session closes; the session object goes at once).

Rules:

1. Only a request with the tombstone's message ID and the identical bytes
   is answered, with the identical response, and only to the address the
   request came from or the SA's last authenticated peer address (no
   reflection to a third party): the rules of ``ike.dispatch`` for a
   retransmission, unchanged. Anything else for a buried SPI is dropped and
   counted; it is never processed (there are no keys left to process it).
2. Memory is bounded: at most ``capacity`` stones; a new one evicts the
   oldest (that SA's late retransmission then goes unanswered, as it would
   after the window). A stone holds no key, nonce or other secret.
3. Cost is O(1) per datagram and per burial; expired stones are swept in
   order of burial (stones of one gateway share its retransmission window
   closely enough that the oldest expire first; a stone found expired on
   lookup is dropped there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from ike.events import Address
from ike.wire import IkeHeader

CAPACITY = 8192  # stones; ~0.4 KB each with a DELETE's request and response


@dataclass(frozen=True, slots=True)
class Tombstone:
    """One deleted IKE SA's cached answer (rule 1). ``local_spi`` is ours (the
    routing key); ``spi_i``/``spi_r`` must both match the request's header."""

    local_spi: bytes
    spi_i: bytes
    spi_r: bytes
    message_id: int
    request: bytes = field(repr=False)
    response: bytes = field(repr=False)
    peer: Address | None  # where the answered request came from
    remote: Address  # the SA's peer address when it was deleted
    until: float

    def __repr__(self) -> str:
        return f"<Tombstone {self.spi_i.hex()}/{self.spi_r.hex()} id {self.message_id}>"


class Verdict(Enum):
    ANSWER = "answer"  # a retransmission: send the cached response back
    DROP = "drop"  # a buried SA, but not a retransmission it may answer
    UNKNOWN = "unknown"  # no stone for this SPI


class Tombstones:
    """The gateway's tombstones by our SPI (see the module docstring)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._by_spi: dict[bytes, Tombstone] = {}  # in order of burial (rule 3)
        self.answered = 0
        self.dropped = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._by_spi)

    def __contains__(self, spi: bytes) -> bool:
        return spi in self._by_spi

    def bury(self, stones: Iterable[Tombstone], now: float) -> None:
        self.expire(now)
        by_spi = self._by_spi
        for stone in stones:
            by_spi.pop(stone.local_spi, None)  # re-buried: it goes to the end
            if len(by_spi) >= self.capacity:
                del by_spi[next(iter(by_spi))]
                self.evicted += 1
            by_spi[stone.local_spi] = stone

    def lookup(
        self, own_spi: bytes, header: IkeHeader, data: bytes, src: Address, now: float
    ) -> tuple[Verdict, bytes | None]:
        """What to do with a datagram whose SPI of ours routes nowhere: rule 1.
        ``data`` is the IKE message (marker stripped)."""
        stone = self._by_spi.get(own_spi)
        if stone is None:
            return Verdict.UNKNOWN, None
        if now >= stone.until:
            del self._by_spi[own_spi]
            return Verdict.UNKNOWN, None
        if (
            header.is_response
            or header.spi_i != stone.spi_i
            or header.spi_r != stone.spi_r
            or header.message_id != stone.message_id
            or data != stone.request
            or (src != stone.peer and src != stone.remote and stone.peer is not None)
        ):
            self.dropped += 1
            return Verdict.DROP, None
        self.answered += 1
        return Verdict.ANSWER, stone.response

    def expire(self, now: float) -> None:
        """Rule 3: drop the expired stones at the front (the oldest burials)."""
        by_spi = self._by_spi
        while by_spi:
            spi = next(iter(by_spi))
            if by_spi[spi].until > now:
                return
            del by_spi[spi]

    def status(self) -> dict[str, int]:
        return {
            "held": len(self._by_spi),
            "answered": self.answered,
            "dropped": self.dropped,
            "evicted": self.evicted,
        }
