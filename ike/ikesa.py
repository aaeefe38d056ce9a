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

:class:`IkeSas` holds them (wireguard-go's previous/current/next keypairs,
the SADB's slots): one small type that answers "which SA is this datagram
for", moves SAs between the three roles, and reports their timers. The
session decides *when* they move; this type keeps the moves consistent:

1. ``current`` is always set and is never also the successor or retiring.
2. An SA is in at most one role; ``all()`` lists current, successor, then
   retiring, each once.
3. ``switch_to`` carries the exchanges queued on the old SA over to the new
   one (an exchange on the wire finishes where it started).
4. An SA that only lingers (deleted, answering retransmissions from its
   cache) is *shed* once the input that deleted it is done
   (:meth:`IkeSas.shed_lingering`): it keeps its SPIs, addresses and message
   window with the cached response, never its keys, nonces or messages.

Also here: the framing helpers the daemon uses for routing.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    shed: bool = False  # rule 4: only what answering from the cache needs is left

    @classmethod
    def of(cls, ctx: SaContext) -> IkeSa:
        return cls(ctx, TaskManager(ctx.config.retransmit))

    def lingering(self) -> IkeSa:
        """This SA as it lingers once deleted (rule 4): the task manager (message
        window, cached response; nothing queued or in flight by then) and a context
        without keys, nonces, IKE_SA_INIT messages or Child SAs (§2.1 needs none of
        them: a retransmitted request is compared with the cached one and answered
        with the cached bytes)."""
        return IkeSa(self.ctx.lingering(), self.tm, linger_until=self.linger_until, shed=True)

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


class IkeSas:
    """The IKE SAs of one session: current, successor, retiring (see the module docstring)."""

    def __init__(self, current: IkeSa) -> None:
        self.current = current
        self.successor: IkeSa | None = None
        self.retiring: list[IkeSa] = []

    def all(self) -> list[IkeSa]:
        """Current, successor, retiring: every SA whose SPIs the session answers to."""
        successor = [self.successor] if self.successor is not None else []
        return [self.current, *successor, *self.retiring]

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(self.all())

    def find(self, header: IkeHeader) -> IkeSa | None:
        """The SA a datagram with this header belongs to (by SPIs and role)."""
        return next((sa for sa in self.all() if sa.matches(header)), None)

    def sending(self) -> list[IkeSa]:
        """The SAs that start their queued exchanges: current and retiring (a
        successor carries nothing of ours until it becomes current)."""
        return [self.current, *self.retiring]

    def offer_successor(self, sa: IkeSa) -> None:
        """The new SA of a peer's rekey we answered: it waits for the old one to go."""
        self._check_new(sa)
        self.successor = sa

    def take_successor(self) -> IkeSa | None:
        successor, self.successor = self.successor, None
        return successor

    def switch_to(self, new: IkeSa, give_up_at: float) -> IkeSa:
        """Make ``new`` current; the old one retires (forgotten at ``give_up_at`` unless
        something else ends it first). Queued exchanges move along (rule 3)."""
        if new is self.successor:
            self.successor = None
        self._check_new(new)
        old = self.current
        for exchange in old.tm.take_queue():
            new.tm.enqueue(exchange)
        self.current = new
        old.give_up_at = give_up_at
        self.retiring.append(old)
        return old

    def keep_retiring(self, sa: IkeSa) -> None:
        """``sa`` (no longer current) stays in the session as a retiring SA."""
        if sa is self.current:
            raise ValueError("the current IKE SA cannot retire")
        if sa is self.successor:
            self.successor = None
        if sa not in self.retiring:
            self.retiring.append(sa)

    def remove(self, sa: IkeSa) -> None:
        """Forget a successor or retiring SA (the current one stays)."""
        if sa is self.successor:
            self.successor = None
        if sa in self.retiring:
            self.retiring.remove(sa)

    def drop_others(self) -> None:
        """The session ends: every SA but the current one is forgotten, its requests too."""
        for sa in self.all()[1:]:
            sa.tm.abandon()
        self.successor = None
        self.retiring.clear()

    def shed_lingering(self, *, closed: bool) -> bool:
        """Rule 4: every lingering retiring SA, and the current one if ``closed`` (the
        session ended and lingers), keep only what answering from the cache needs.
        True if the current SA was shed now."""
        for i, sa in enumerate(self.retiring):
            if sa.linger_until is not None and not sa.shed:
                self.retiring[i] = sa.lingering()
        if not closed or self.current.shed:
            return False
        self.current = self.current.lingering()
        return True

    def deadline(self) -> float | None:
        """The earliest timer of the retiring SAs (the current one's are the session's)."""
        times = (sa.deadline() for sa in self.retiring)
        return min((t for t in times if t is not None), default=None)

    def _check_new(self, sa: IkeSa) -> None:
        if sa is self.current or sa in self.retiring:
            raise ValueError(f"{sa!r} already has a role in this session")
