"""One IKE SA inside a session: its negotiated context and its message window.

A session usually holds exactly one :class:`IkeSa`. Around an IKE SA rekey
(RFC 7296 §1.3.2, §2.18) it briefly holds more, each with its own SPIs, keys
and message IDs (a new IKE SA starts again at message ID 0):

- the *current* one, which carries every new exchange;
- a *successor*: the new SA we created answering the peer's rekey; it
  becomes current when the peer deletes the old SA (or starts using the new);
- *retiring* ones: an old SA being deleted, a redundant SA from a
  simultaneous rekey (§2.8.2) waiting for its creator's DELETE, or a deleted
  SA that lingers only to answer a retransmitted DELETE from its cache.

Also here: the framing helpers the daemon uses for routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.constants import NON_ESP_MARKER
from ike.events import Address
from ike.exchanges.context import SaContext
from ike.lifetimes import Lifetime
from ike.taskmanager import TaskManager
from ike.wire import IkeHeader, parse_header

Datagram = tuple[bytes, Address, Address]  # (IKE message, our address, peer's address)


def strip_non_esp_marker(data: bytes) -> bytes:
    """Remove the RFC 3948 §2.2 marker if present (an IKE SPIi is never zero, §3.1)."""
    return data[len(NON_ESP_MARKER) :] if data[: len(NON_ESP_MARKER)] == NON_ESP_MARKER else data


def peek_header(data: bytes) -> IkeHeader:
    """The IKE header of a datagram, for routing; ParseError if it is not IKE."""
    return parse_header(strip_non_esp_marker(bytes(data)))


@dataclass(eq=False)
class IkeSa:
    """An IKE SA's context and task manager, plus the session's timers for it.

    ``lifetime`` is set once the SA is the session's established, current SA.
    ``peer_rekey_nonces`` holds Ni, Nr of the peer's rekey of this SA that we
    answered: if our own rekey of it completes too, the four nonces decide
    which new SA survives (§2.8.2). ``linger_until``: deleted, answering only
    retransmissions from the cache. ``give_up_at``: a retiring SA is forgotten
    then even if the peer never deletes it.
    """

    ctx: SaContext
    tm: TaskManager
    lifetime: Lifetime | None = None
    rekey_retry_at: float | None = None
    peer_rekey_nonces: tuple[bytes, bytes] | None = field(default=None, repr=False)
    linger_until: float | None = None
    give_up_at: float | None = None

    @classmethod
    def of(cls, ctx: SaContext) -> IkeSa:
        return cls(ctx, TaskManager(ctx.config.retransmit))

    def matches(self, header: IkeHeader) -> bool:
        return self.ctx.matches(header)

    @property
    def local_spi(self) -> bytes:
        return self.ctx.local_spi

    @property
    def nonces(self) -> tuple[bytes, bytes]:
        """Ni, Nr of the exchange that created this SA (§2.8.2 compares them)."""
        return self.ctx.nonce_i, self.ctx.nonce_r

    def deadline(self) -> float | None:
        """The earliest timer of a retiring SA (retransmission, linger, give-up)."""
        times = (self.tm.deadline, self.linger_until, self.give_up_at)
        return min((t for t in times if t is not None), default=None)

    def __repr__(self) -> str:
        return f"<IkeSa {self.ctx.spi_i.hex()}/{self.ctx.spi_r.hex()}>"
