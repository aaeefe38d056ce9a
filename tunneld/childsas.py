"""The Child SAs of one peer as the data plane holds them.

Theory of operation:

1. One SA database tunnel per configured child of a peer (the implicit child
   of a peer without ``[[peer.child]]`` is named after the peer, and so is
   its tunnel; others are ``peer/child``); its selectors come from the
   child's first Child SA. Every Child SA of the child has a
   :class:`ChildRecord` here, keyed by its inbound SPI. :class:`ChildSets`
   holds one :class:`ChildSet` per configured child and sends each event to
   the one it names (``ChildSaUp.child``), so the rules below hold per
   child: the Child SAs of one child replace each other (rekeys,
   reauthentication, duplicates), those of different children coexist.
2. Make-before-break (DESIGN §4): ``install`` puts the inbound SA into the
   database first. If the event says the outbound SA is active it becomes the
   tunnel's current one at once (the previous current is kept as
   ``previous``); otherwise it waits, unused, until ``activate`` (the rekey
   responder's side: the peer may not have its inbound SA yet).
3. ``remove`` stops a Child SA's outbound use at once (the newest remaining
   active Child SA takes over, else the tunnel stops sending and its routes
   go), but keeps its inbound SA for ``delete_delay`` seconds so packets in
   flight still decrypt; ``expire`` drops it when that time has come.
   ``withdraw`` marks a Child SA whose IKE SA is being deleted: it is no
   outbound choice while a confirmed one exists (that one takes over at
   once); it keeps sending only while no confirmed Child SA is left (the
   survivor's may still wait for the peer, rule 6), until ``remove``.
4. ``watch`` is called about once a second with the peer's limits: it reports
   Child SAs whose soft packet/byte/sequence limits are reached (rekey), whose
   hard limits are reached (delete), and which received authenticated ESP
   since the last look (liveness).
5. Routes to the remote selectors exist while the tunnel has an active
   outbound SA, and also while a Child SA that rekeyed another waits for
   activation: a rekey responder sees the old Child SA go (the peer's
   DELETE) just before ``activate`` names the new one. Removing the routes
   in between and adding them back a moment later made the kernel drop the
   packets that arrived meanwhile (no route: ICMP unreachable).
6. A Child SA is *confirmed* once the peer must have its inbound SA: at once
   when the peer answered the exchange that made it (we initiated it), else
   from ``activate`` on (ESP arrived on it, the peer deleted what it
   replaces, the rekey completed). An unconfirmed Child SA may still send
   when nothing else can (``install`` with ``outbound_active``), but it
   never takes over from a confirmed one: sending on it could lose the
   packets that arrive before the peer has processed our answer.
7. ``traffic`` adds up what the Child SAs counted, also those gone: an
   outbound SA's counts are kept when ``remove`` ends its use, an inbound
   SA's when ``expire`` drops it (its packets in flight count until then).
   The totals only grow (Prometheus counters, :mod:`tunneld.metrics`), and
   are read on demand: nothing is added per packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ike.events import ChildSaUp
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.routes import RouteTable

if TYPE_CHECKING:
    from ike.session import IkeSession

log = logging.getLogger("tunneld.childsas")

SEQ32_MAX = (1 << 32) - 1
# Without ESN a Child SA is rekeyed when fewer than this many sequence numbers
# are left, whatever the packet limit says (the counter never wraps, RFC 4303 §3.3.3).
SEQ_HEADROOM = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-peer Child SA volume limits (soft: rekey; hard: delete)."""

    soft_packets: int
    soft_bytes: int
    hard_packets: int
    hard_bytes: int


@dataclass
class ChildRecord:
    """One Child SA in the data plane."""

    session: IkeSession
    inbound: InboundSA
    outbound: OutboundSA
    event: ChildSaUp
    installed_at: float
    generation: int = 0  # how many rekeys led to this Child SA
    active: bool = False  # its outbound SA is (or was) the tunnel's current one
    withdrawn: bool = False  # its IKE SA is being deleted (rule 3)
    confirmed: bool = True  # the peer has its inbound SA (rule 6)
    rekey_requested: bool = False
    seen_inbound: int = 0  # inbound packets at the last watch()


@dataclass
class Traffic:
    """Packets and bytes (of inner packets) the Child SAs counted, in and out."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0

    def received(self, sa: InboundSA) -> None:
        self.packets_in += sa.packets
        self.bytes_in += sa.bytes

    def sent(self, sa: OutboundSA) -> None:
        self.packets_out += sa.packets
        self.bytes_out += sa.bytes

    def add(self, other: Traffic) -> None:
        self.packets_in += other.packets_in
        self.bytes_in += other.bytes_in
        self.packets_out += other.packets_out
        self.bytes_out += other.bytes_out


@dataclass
class WatchResult:
    rekey: list[ChildRecord] = field(default_factory=list)
    expire: list[ChildRecord] = field(default_factory=list)
    inbound_seen: list[ChildRecord] = field(default_factory=list)


def data_plane_sas(event: ChildSaUp, replay_window: int) -> tuple[InboundSA, OutboundSA]:
    """The ESP SAs of a new Child SA, with the cipher it negotiated (``event.encr``).

    Never a default cipher: an SA that sealed with AES-GCM under a
    ChaCha20-Poly1305 agreement worked against tunneld and failed against
    strongSwan (tests/unit/test_interop_regressions.py).
    """
    keys = event.keys
    inbound = InboundSA(
        event.inbound_spi,
        keys.inbound_key,
        keys.inbound_salt,
        esn=event.esn,
        replay_window=replay_window,
        encr=event.encr,
    )
    outbound = OutboundSA(
        event.outbound_spi, keys.outbound_key, keys.outbound_salt, esn=event.esn, encr=event.encr
    )
    return inbound, outbound


SaFactory = Callable[[ChildSaUp, int], tuple[InboundSA, OutboundSA]]


class ChildSet:
    """The Child SAs of one peer (see the module docstring)."""

    def __init__(
        self,
        name: str,
        sadb: SADatabase,
        routes: RouteTable,
        *,
        delete_delay: float,
        replay_window: int,
        limits: Limits,
        sa_factory: SaFactory = data_plane_sas,
    ) -> None:
        self.name = name
        self.limits = limits  # this child's soft and hard limits (rule 4)
        self._sadb = sadb
        self._routes = routes
        self.delete_delay = delete_delay
        self.replay_window = replay_window
        self.records: dict[int, ChildRecord] = {}
        self._retiring: dict[int, float] = {}  # inbound SPI -> when to drop it
        self._routed: set[Any] = set()
        self.installed_total = 0
        self.rekeys_total = 0
        self._retired = Traffic()  # rule 7: what the Child SAs gone counted
        self._sa_factory = sa_factory

    # -- rule 2: install, activate ---------------------------------------------------

    def install(
        self, session: IkeSession, event: ChildSaUp, now: float, *, confirmed: bool = True
    ) -> ChildRecord:
        inbound, outbound = self._sa_factory(event, self.replay_window)
        if not self._sadb.has_tunnel(self.name):
            self._sadb.add_tunnel(self.name, event.remote_addr, event.local_ts, event.remote_ts)
        elif self._sadb.tunnel(self.name).peer != event.remote_addr:
            self._sadb.set_peer(self.name, event.remote_addr)
        self._sadb.add_inbound(self.name, inbound)
        old = self.records.get(event.rekey_of) if event.rekey_of is not None else None
        record = ChildRecord(session, inbound, outbound, event, now, confirmed=confirmed)
        record.seen_inbound = 0
        if old is not None:
            record.generation = old.generation + 1
            self.rekeys_total += 1
        self.records[event.inbound_spi] = record
        self.installed_total += 1
        if event.outbound_active:
            self._make_current(record)
        return record

    def activate(self, inbound_spi: int) -> None:
        """The peer has the Child SA's inbound SA (rule 6): it sends from now on,
        unless it is withdrawn, or already active and a confirmed one is current."""
        record = self.records.get(inbound_spi)
        if record is None:
            return
        record.confirmed = True
        current = self._current()
        if current is record:
            return
        if record.withdrawn:  # rule 3: only if nothing else sends
            if current is None:
                self._make_current(record)
            return
        if not record.active or current is None or current.withdrawn or not current.confirmed:
            self._make_current(record)

    def withdraw(self, inbound_spi: int) -> None:
        """Rule 3: the Child SA's IKE SA is being deleted; a confirmed one takes over."""
        record = self.records.get(inbound_spi)
        if record is None or record.withdrawn:
            return
        record.withdrawn = True
        successor = self.successor(record)
        if self._current() is record and successor is not None:
            self._make_current(successor)

    def successor(self, record: ChildRecord) -> ChildRecord | None:
        """The newest other active, confirmed Child SA that is not withdrawn."""
        usable = [
            r
            for r in self.records.values()
            if r is not record and r.active and r.confirmed and not r.withdrawn
        ]
        return max(usable, key=lambda r: r.installed_at) if usable else None

    def carrying(self) -> bool:
        """Whether a Child SA sends the tunnel's traffic now."""
        return self._current() is not None

    def _current(self) -> ChildRecord | None:
        if not self._sadb.has_tunnel(self.name):
            return None
        outbound = self._sadb.tunnel(self.name).current
        return next((r for r in self.records.values() if r.outbound is outbound), None)

    def _make_current(self, record: ChildRecord) -> None:
        tunnel = self._sadb.tunnel(self.name)
        if tunnel.current is not record.outbound:
            self._sadb.install_next(self.name, record.outbound)
            self._sadb.promote(self.name)
        record.active = True
        for net in record.event.remote_ts:
            if net not in self._routed:
                self._routes.add(net)
                self._routed.add(net)

    def owns(self, tunnel: str) -> bool:
        """Whether the SA database tunnel named ``tunnel`` holds this peer's Child SAs."""
        return tunnel == self.name

    def move(self, peer: tuple[str, int]) -> tuple[str, int] | None:
        """Every Child SA of the peer sends to ``peer`` from now on (the peer's
        address changed, as an authenticated packet showed: peer.py rule 10).
        Returns the address it replaced, None if there was none or it is the same."""
        if not self._sadb.has_tunnel(self.name):
            return None
        old = self._sadb.tunnel(self.name).peer
        self._sadb.set_peer(self.name, peer)  # also when equal: a new report may come
        return None if old == peer else old

    # -- rule 3: remove, expire ---------------------------------------------------------

    def remove(self, inbound_spi: int, now: float) -> ChildRecord | None:
        record = self.records.pop(inbound_spi, None)
        if record is None:
            return None
        tunnel = self._sadb.tunnel(self.name)
        if tunnel.current is record.outbound:
            successor = self._newest_active()
            if successor is not None:
                self._sadb.install_next(self.name, successor.outbound)
                self._sadb.promote(self.name)
            else:
                self._sadb.demote(self.name)
        if tunnel.previous is record.outbound:
            self._sadb.retire_previous(self.name)
        if tunnel.current is None and not self._awaiting_activation():
            self._unroute()  # rule 5
        self._retiring[inbound_spi] = now + self.delete_delay
        self._retired.sent(record.outbound)  # rule 7: it seals no more
        return record

    def _newest_active(self) -> ChildRecord | None:
        """The newest active Child SA, preferring confirmed ones not withdrawn (rules 3, 6)."""
        active = [r for r in self.records.values() if r.active]
        key = lambda r: (not r.withdrawn, r.confirmed, r.installed_at)  # noqa: E731
        return max(active, key=key) if active else None

    def _awaiting_activation(self) -> bool:
        """Whether a rekeyed Child SA's successor has not been activated yet (rule 5)."""
        return any(not r.active and r.event.rekey_of is not None for r in self.records.values())

    def _unroute(self) -> None:
        for net in self._routed:
            self._routes.remove(net)
        self._routed.clear()

    def next_expiry(self) -> float | None:
        return min(self._retiring.values(), default=None)

    def expire(self, now: float, *, everything: bool = False) -> None:
        """Drop inbound SAs whose delete delay is over (all of them with ``everything``)."""
        for spi, at in list(self._retiring.items()):
            if everything or at <= now:
                del self._retiring[spi]
                if self._sadb.inbound(spi) is not None:
                    self._retired.received(self._sadb.remove_inbound(spi))  # rule 7
        self._drop_idle_tunnel()

    def _drop_idle_tunnel(self) -> None:
        try:  # not a set of every tunnel's name: this runs for each peer every second
            tunnel = self._sadb.tunnel(self.name)
        except KeyError:
            return
        if not tunnel.inbound_spis and tunnel.current is None and not self.records:
            self._sadb.remove_tunnel(self.name)

    def retiring_spis(self) -> list[int]:
        return list(self._retiring)

    # -- rule 4: limits and liveness ------------------------------------------------------

    def watch(self) -> WatchResult:
        result = WatchResult()
        for record in self.records.values():
            if record.inbound.packets != record.seen_inbound:
                record.seen_inbound = record.inbound.packets
                result.inbound_seen.append(record)
            verdict = self._limit_reached(record)
            if verdict == "expire":
                result.expire.append(record)
            elif verdict == "rekey":
                record.rekey_requested = True
                result.rekey.append(record)
        return result

    def watch_wanted(self) -> bool:
        """Whether :meth:`watch` would report anything (it changes nothing here)."""
        return any(
            record.inbound.packets != record.seen_inbound or self._limit_reached(record)
            for record in self.records.values()
        )

    def _limit_reached(self, record: ChildRecord) -> str | None:
        """ "expire" (a hard limit), "rekey" (a soft one, not requested yet) or None."""
        limits = self.limits
        out, inb = record.outbound, record.inbound
        packets = max(out.packets, inb.packets)
        octets = max(out.bytes, inb.bytes)
        if packets >= limits.hard_packets or octets >= limits.hard_bytes or out.exhausted:
            return "expire"
        if not record.rekey_requested and (
            packets >= limits.soft_packets
            or octets >= limits.soft_bytes
            or (not record.event.esn and out.seq >= SEQ32_MAX - SEQ_HEADROOM)
        ):
            return "rekey"
        return None

    # -- status ------------------------------------------------------------------------

    def traffic(self) -> Traffic:
        """Rule 7: everything the child's Child SAs counted so far, also those gone."""
        total = Traffic()
        total.add(self._retired)
        for record in self.records.values():
            total.received(record.inbound)
            total.sent(record.outbound)
        for spi in self._retiring:  # removed, still opening packets in flight (rule 3)
            inbound = self._sadb.inbound(spi)
            if inbound is not None:
                total.received(inbound)
        return total

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return [self._snapshot(r, now) for r in self.records.values()]

    @staticmethod
    def _snapshot(r: ChildRecord, now: float) -> dict[str, Any]:
        return {
            "child": r.event.child,
            "spi_in": f"{r.inbound.spi:08x}",
            "spi_out": f"{r.outbound.spi:08x}",
            "algorithms": r.event.algorithms,
            "esn": r.event.esn,
            "local_ts": [str(n) for n in r.event.local_ts],
            "remote_ts": [str(n) for n in r.event.remote_ts],
            "age": round(now - r.installed_at, 3),
            "generation": r.generation,
            "outbound_active": r.active,
            "withdrawn": r.withdrawn,
            "confirmed": r.confirmed,
            "in": {"packets": r.inbound.packets, "bytes": r.inbound.bytes},
            "out": {
                "packets": r.outbound.packets,
                "bytes": r.outbound.bytes,
                "seq": r.outbound.seq,
            },
            "drops": {k.value: v for k, v in r.inbound.drops.items() if v},
        }


class ChildSets:
    """The Child SAs of one peer, one :class:`ChildSet` per configured child (rule 1).

    Events go to the set their child names (an unknown name: the first set);
    everything keyed by inbound SPI goes to the set holding that SPI. The
    first set is the child of IKE_AUTH.
    """

    def __init__(self, sets: list[ChildSet], names: list[str]) -> None:
        if not sets or len(sets) != len(names):
            raise ValueError("one ChildSet per child name, at least one")
        self.by_child: dict[str, ChildSet] = dict(zip(names, sets, strict=True))
        self.name = sets[0].name

    def child(self, name: str) -> ChildSet:
        return self.by_child.get(name) or next(iter(self.by_child.values()))

    def _holding(self, inbound_spi: int) -> ChildSet | None:
        return next((s for s in self.by_child.values() if inbound_spi in s.records), None)

    @property
    def records(self) -> dict[int, ChildRecord]:
        """Every Child SA of the peer by inbound SPI (a fresh dict: read it, do not change it)."""
        out: dict[int, ChildRecord] = {}
        for child_set in self.by_child.values():
            out.update(child_set.records)
        return out

    @property
    def installed_total(self) -> int:
        return sum(s.installed_total for s in self.by_child.values())

    @property
    def rekeys_total(self) -> int:
        return sum(s.rekeys_total for s in self.by_child.values())

    def install(
        self, session: IkeSession, event: ChildSaUp, now: float, *, confirmed: bool = True
    ) -> ChildRecord:
        return self.child(event.child).install(session, event, now, confirmed=confirmed)

    def activate(self, inbound_spi: int) -> None:
        child_set = self._holding(inbound_spi)
        if child_set is not None:
            child_set.activate(inbound_spi)

    def withdraw(self, inbound_spi: int) -> None:
        child_set = self._holding(inbound_spi)
        if child_set is not None:
            child_set.withdraw(inbound_spi)

    def successor(self, record: ChildRecord) -> ChildRecord | None:
        return self.child(record.event.child).successor(record)

    def carrying(self, child: str | None = None) -> bool:
        """Whether a Child SA of ``child`` (None: of any child) sends traffic now."""
        if child is not None:
            return self.child(child).carrying()
        return any(s.carrying() for s in self.by_child.values())

    def owns(self, tunnel: str) -> bool:
        """Whether the SA database tunnel named ``tunnel`` is one of this peer's children's."""
        return any(s.owns(tunnel) for s in self.by_child.values())

    def move(self, peer: tuple[str, int]) -> tuple[str, int] | None:
        """Every child's Child SAs send to ``peer`` from now on (ChildSet.move); the
        address replaced, None if none was or it is the same for all."""
        moved = [s.move(peer) for s in self.by_child.values()]
        return next((old for old in moved if old is not None), None)

    def remove(self, inbound_spi: int, now: float) -> ChildRecord | None:
        child_set = self._holding(inbound_spi)
        return None if child_set is None else child_set.remove(inbound_spi, now)

    def next_expiry(self) -> float | None:
        times = [s.next_expiry() for s in self.by_child.values()]
        return min((t for t in times if t is not None), default=None)

    def expire(self, now: float, *, everything: bool = False) -> None:
        for child_set in self.by_child.values():
            child_set.expire(now, everything=everything)

    def retiring_spis(self) -> list[int]:
        return [spi for s in self.by_child.values() for spi in s.retiring_spis()]

    def watch_wanted(self) -> bool:
        """Whether a child's counters moved or crossed a limit (rule 4)."""
        return any(child_set.watch_wanted() for child_set in self.by_child.values())

    def watch(self) -> WatchResult:
        """Rule 4 for every child, each with its own limits."""
        result = WatchResult()
        for child_set in self.by_child.values():
            one = child_set.watch()
            result.rekey += one.rekey
            result.expire += one.expire
            result.inbound_seen += one.inbound_seen
        return result

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return [c for s in self.by_child.values() for c in s.snapshot(now)]

    def traffic(self) -> Traffic:
        """Rule 7, for every child of the peer."""
        total = Traffic()
        for child_set in self.by_child.values():
            total.add(child_set.traffic())
        return total
