"""One configured peer: the trio task that drives its IKE sessions.

Theory of operation:

1. A :class:`Peer` owns every :class:`ike.session.IkeSession` with one
   configured peer (usually one; two while a duplicate or a restart is being
   resolved). Only this task calls into those sessions, so a session is never
   touched concurrently.
2. The dispatcher in :mod:`tunneld.daemon` routes each IKE datagram to the
   peer's inbox; the peer feeds it to the session whose SPI it names (or
   creates a responder session for a new IKE_SA_INIT), then flushes:
   datagrams out through the data path, events into the SA database.
3. The task sleeps until the earliest deadline of its sessions or its own
   retry timer (``trio.move_on_at``) and then calls ``handle_timer(now)``.
   Time is ``trio.current_time()`` only, so tests run it on a virtual clock.
4. Child SAs reach the data plane through :class:`tunneld.childsas.ChildSet`
   (make-before-break; see there). About once a second the peer task lets it
   look at the SA counters: authenticated inbound ESP is reported to the
   session (liveness), soft packet/byte/sequence limits start a Child SA
   rekey, hard limits delete the Child SA. Time limits are the session's.
6. A peer declared dead (liveness checks unanswered) is handled by
   ``dpd_action``: ``restart`` initiates again at once (if the peer's address
   is known), ``clear`` leaves the tunnel down until an operator or the peer
   brings it up. An IKE SA we chose to delete (operator ``down``, a stale or
   duplicate one, rule 5) whose DELETE goes unanswered says nothing about the
   peer: a restarted peer has forgotten the stale SA, while the new one works.
5. One IKE SA per peer. An IKE SA that was already established when a new
   one began is stale. With INITIAL_CONTACT (RFC 7296 §2.4: the peer
   restarted) its Child SAs leave the data plane at once and it is deleted.
   Without it, a new IKE SA the peer initiated is a make-before-break
   reauthentication (§2.8.3, strongSwan's ``make_before_break``): the peer
   deletes the old IKE SA itself once its new Child SA is installed, so the
   old one stays, and keeps carrying our traffic, until then (at most
   :data:`REAUTH_GRACE` seconds; then we delete it). The new Child SA's
   outbound SA waits meanwhile, like a rekey responder's (the peer installs
   its inbound SA only when our IKE_AUTH answer arrives): it takes over when
   the old Child SA goes or ESP arrives on the new one. IKE SAs negotiated
   at the same time (both sides initiated) resolve deterministically: the
   one with the larger (SPIi, SPIr) pair survives on both sides.
7. ``save_keys = true`` (a debugging aid, :mod:`tunneld.savekeys`): after
   each flush the keys of every IKE SA the session holds are appended to
   Wireshark's tables once (from IKE_SA_INIT on, so a failing IKE_AUTH can
   be decrypted too; after an IKE rekey, the new SA's), and both directions
   of every Child SA as it is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ike.events import (
    ChildSaDown,
    ChildSaOutboundActive,
    ChildSaUp,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    InitialContact,
)
from ike.session import IkeSession
from ike.sessionconfig import SessionConfig
from ike.states import IkeState
from ike.wire import IkeHeader
from tunneld.childsas import ChildSet, Limits
from tunneld.datapath import IkeDatagram
from tunneld.savekeys import KeyTables

if TYPE_CHECKING:
    from tunneld.daemon import Daemon

log = logging.getLogger("tunneld.peer")

INBOX_SIZE = 64  # IKE datagrams queued per peer; beyond this they are dropped (peer retransmits)
RETRY_INITIAL = 2.0  # seconds before re-initiating after a failed IKE SA (auto = start)
# Capped low on purpose: with IKE_SA_INIT retransmitted at most every 3 s
# (ike.policy.RetransmitPolicy.init_max_timeout), a gateway that wants its
# tunnel is never silent for more than ~7 s, so the tunnel is back within
# seconds of an outage ending, however long the outage was.
RETRY_MAX = 4.0
WATCH_INTERVAL = 1.0  # seconds between looks at the SA counters (rule 4)
REAUTH_GRACE = 10.0  # seconds a reauthenticating peer gets to delete its old IKE SA (rule 5)
NAT_KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §4: "a default of 20 seconds"


_Input = tuple[IkeDatagram, IkeHeader]


@dataclass
class PeerStatus:
    last_error: str | None = None
    established_at: float | None = None
    ike_sas_established: int = 0
    ike_rekeys: int = 0
    dead_peer_detections: int = 0


@dataclass(frozen=True)
class PeerPolicy:
    """What the daemon's configuration says about one peer beyond IKE."""

    auto: str  # "start" | "listen"
    dpd_action: str  # "restart" | "clear"
    limits: Limits


class Peer:
    """Drives the IKE sessions with one configured peer (see the module docstring)."""

    def __init__(
        self,
        daemon: Daemon,
        name: str,
        session_config: SessionConfig,
        *,
        remote: tuple[str, int] | None,
        policy: PeerPolicy,
        children: ChildSet,
        local_addr: Callable[[], tuple[str, int]],
        key_tables: KeyTables | None = None,
    ) -> None:
        self.daemon = daemon
        self.name = name
        self.session_config = session_config
        self.remote = remote
        self.policy = policy
        self.auto = policy.auto
        self.children = children
        self._local_addr = local_addr
        self.key_tables = key_tables  # save_keys = true (rule 7)
        self.sessions: list[IkeSession] = []
        self.status = PeerStatus()
        self._watch_at = math.inf
        self._keepalive_at = math.inf
        self.keepalives_sent = 0
        self._last_heard: float | None = None
        self._declared_dead = False
        # sessions that reported IkeSaUp: a session is CLOSED by the time its
        # IkeSaDown is applied, so it can no longer say whether it ever was up
        self._were_up: set[IkeSession] = set()
        # rule 5: when each session's negotiation began and when it came up
        self._begun: dict[IkeSession, float] = {}
        self._up_at: dict[IkeSession, float] = {}
        # rule 6: sessions we are deleting on purpose; their DELETE may time out
        self._deleting: set[IkeSession] = set()
        # rule 5: old IKE SAs a reauthenticating peer should delete (until when), and
        # the new Child SAs (inbound SPIs) whose outbound SA waits for that
        self._superseded: dict[IkeSession, float] = {}
        self._deferred: set[int] = set()
        self._send, self._recv = trio.open_memory_channel[_Input | None](INBOX_SIZE)
        self._want_up = policy.auto == "start"
        self._retry_at = math.inf
        self._retry_delay = RETRY_INITIAL
        self.inbox_drops = 0

    # -- called by the daemon (same trio thread, never concurrently with run) -------

    def deliver(self, dgram: IkeDatagram, header: IkeHeader) -> None:
        try:
            self._send.send_nowait((dgram, header))
        except trio.WouldBlock:
            self.inbox_drops += 1

    def rekey(self, *, ike: bool) -> bool:
        """Operator asked for a rekey of the IKE SA or of every Child SA; False if none is up."""
        now = trio.current_time()
        started = False
        for session in self.sessions:
            if session.state is not IkeState.ESTABLISHED:
                continue
            if ike:
                started = session.rekey_ike(now) or started
            else:
                for record in list(self.children.records.values()):
                    if record.session is session and record.active:
                        started = session.rekey_child(record.inbound.spi, now) or started
        self._poke()
        return started

    def up(self) -> None:
        """Operator asked for the tunnel: initiate now if no IKE SA is in progress."""
        self._want_up = True
        self._retry_at = trio.current_time()
        self._poke()

    def down(self) -> None:
        """Operator asked to take the tunnel down: DELETE every IKE SA, stay down."""
        self._want_up = False
        self._retry_at = math.inf
        now = trio.current_time()
        for session in self.sessions:
            self._delete(session, now)
        self._poke()

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        if self._want_up and self.remote is not None:
            self._retry_at = trio.current_time()
        self._watch_at = trio.current_time() + WATCH_INTERVAL
        while True:
            deadline = self._next_deadline()
            with trio.move_on_at(deadline):
                item = await self._next_input()
                if item is not None:
                    self._receive(*item)
                self._after_io()
                continue
            self._on_timer(trio.current_time())
            self._after_io()

    async def _next_input(self) -> _Input | None:
        """The next datagram, or None when woken by ``up``/``down``."""
        item: _Input | None = await self._recv.receive()
        return item

    def _poke(self) -> None:
        with contextlib.suppress(trio.WouldBlock):  # a full inbox wakes the task anyway
            self._send.send_nowait(None)

    def _next_deadline(self) -> float:
        deadlines = [self._retry_at, self._watch_at, self._keepalive_at]
        deadlines += self._superseded.values()
        expiry = self.children.next_expiry()
        if expiry is not None:
            deadlines.append(expiry)
        for session in self.sessions:
            d = session.next_deadline()
            if d is not None:
                deadlines.append(d)
        return min(deadlines)

    def _on_timer(self, now: float) -> None:
        for session in list(self.sessions):
            d = session.next_deadline()
            if d is not None and d <= now:
                session.handle_timer(now)
        self.children.expire(now)
        if self._watch_at <= now:
            self._watch_at = now + WATCH_INTERVAL
            self._watch(now)
        if self._keepalive_at <= now:
            self._send_keepalives(now)
        for stale, deadline in list(self._superseded.items()):  # rule 5
            if deadline <= now:
                del self._superseded[stale]
                if stale.state is IkeState.ESTABLISHED:
                    log.info("old IKE SA outlived the reauthentication", extra={"peer": self.name})
                    self._replace_stale(stale, now)
        if self._retry_at <= now:
            self._retry_at = math.inf
            if self._want_up and not self._live_sessions():
                self._initiate(now)

    def _live_sessions(self) -> list[IkeSession]:
        return [s for s in self.sessions if s.state is not IkeState.CLOSED]

    @property
    def state(self) -> str:
        """established | connecting | deleting | down, from the sessions' states."""
        states = {s.state for s in self.sessions}
        if IkeState.ESTABLISHED in states:
            return "established"
        if states - {IkeState.DELETING, IkeState.CLOSED}:
            return "connecting"
        return "deleting" if IkeState.DELETING in states else "down"

    def _initiate(self, now: float) -> None:
        assert self.remote is not None
        session = IkeSession.initiator(
            self.session_config,
            self.daemon.entropy,
            now,
            local_addr=self._local_addr(),
            remote_addr=self.remote,
        )
        session.initiate(now)  # picks our SPI
        self._adopt(session, now)
        log.info("initiating IKE SA", extra={"peer": self.name, "remote": self.remote[0]})

    def _receive(self, dgram: IkeDatagram, header: IkeHeader) -> None:
        now = trio.current_time()
        session = self._session_for(header, dgram, now)
        if session is None:
            return
        session.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
        if session.established:
            self._last_heard = now

    def _session_for(self, header: IkeHeader, dgram: IkeDatagram, now: float) -> IkeSession | None:
        for session in self.sessions:
            if session.matches(header):
                return session
        if not any(header.spi_r) and not header.is_response and header.is_initiator:
            session = IkeSession.responder(
                self.session_config, self.daemon.entropy, now, dgram.local, dgram.remote
            )
            self._adopt(session, now)
            return session
        return None

    def _adopt(self, session: IkeSession, now: float) -> None:
        self.sessions.append(session)
        self._begun[session] = now
        self.daemon.register_session(session, self)

    # -- after every input: send, apply events, forget dead sessions --------------

    def _after_io(self) -> None:
        came_up = [session for session in list(self.sessions) if self._flush(session)]
        for session in came_up:  # rule 5, once the new IKE SA's Child SA is installed
            self._resolve_duplicates(session, trio.current_time())
        for session in list(self.sessions) if came_up else ():
            self._flush(session)  # the DELETEs rule 5 queued leave now
        for session in [s for s in self.sessions if s.finished]:
            self.sessions.remove(session)
            self._begun.pop(session, None)
            self._up_at.pop(session, None)
            self._deleting.discard(session)
            self._superseded.pop(session, None)
            self.daemon.unregister_session(session)
        for session in self.sessions:  # IKE SPIs come and go with IKE rekeys (rule 2)
            self.daemon.register_session(session, self)
        if (
            not self._live_sessions()
            and self._want_up
            and self.remote is not None
            and self._retry_at == math.inf
        ):
            self._retry_at = trio.current_time() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _flush(self, session: IkeSession) -> bool:
        """Send the session's datagrams and apply its events; True if it came up."""
        for data, src, dst in session.datagrams_to_send():
            self.daemon.send_ike(data, src, dst)
        came_up = False
        while (event := session.next_event()) is not None:
            self._apply(session, event)
            came_up = came_up or isinstance(event, IkeSaUp)
        if self.key_tables is not None:  # rule 7: keys exist from IKE_SA_INIT on
            self.key_tables.save_ike(self.name, session.ike_sa_keys())
        return came_up

    def _apply(self, session: IkeSession, event: object) -> None:
        now = trio.current_time()
        if isinstance(event, IkeSaUp):
            self.status.established_at = now
            self._last_heard = now
            self._declared_dead = False
            if session.behind_nat and self._keepalive_at == math.inf:
                self._keepalive_at = now + NAT_KEEPALIVE_INTERVAL
            self.status.ike_sas_established += 1
            self.status.last_error = None
            self._retry_delay = RETRY_INITIAL
            self._were_up.add(session)
            self._up_at[session] = now
            log.info(
                "IKE SA established",
                extra={"peer": self.name, "remote_id": event.remote_id, "alg": event.algorithms},
            )
        elif isinstance(event, ChildSaUp):
            self._install_child(session, event, now)
        elif isinstance(event, ChildSaOutboundActive):
            self.children.activate(event.inbound_spi)
            log.info(
                "Child SA outbound active",
                extra={"peer": self.name, "spi_out": f"{event.outbound_spi:08x}"},
            )
        elif isinstance(event, ChildSaDown):
            self._remove_child(event.inbound_spi, now, event.reason)
        elif isinstance(event, IkeSaRekeyed):
            self.status.ike_rekeys += 1
            self.daemon.register_session(session, self)
            log.info(
                "IKE SA rekeyed",
                extra={
                    "peer": self.name,
                    "old_spi": event.old_local_spi.hex(),
                    "new_spi": event.new_local_spi.hex(),
                },
            )
        elif isinstance(event, InitialContact):
            self._initial_contact(session, now)
        elif isinstance(event, IkeSaDown):
            self._ike_down(session, event, now)

    def _resolve_duplicates(self, fresh: IkeSession, now: float) -> None:
        """Rule 5, when ``fresh`` came up: stale IKE SAs go, simultaneous ones by SPI pair.

        Only ESTABLISHED sessions count: one being deleted is already going.
        """
        up = [s for s in self.sessions if s.state is IkeState.ESTABLISHED]
        begun = self._begun.get(fresh, now)
        for stale in [s for s in up if s is not fresh and self._up_at.get(s, now) <= begun]:
            if fresh.is_initiator:
                self._replace_stale(stale, now)
            else:  # the peer reauthenticates and deletes ``stale`` itself
                self._superseded.setdefault(stale, now + REAUTH_GRACE)
            up.remove(stale)
        if len(up) < 2:
            return
        keep = max(up, key=lambda s: (s.spi_i, s.spi_r))
        for session in up:
            if session is not keep:
                log.info("deleting duplicate IKE SA", extra={"peer": self.name})
                self._delete(session, now)

    def _delete(self, session: IkeSession, now: float) -> None:
        """Delete an IKE SA on purpose (rule 6: its DELETE timing out is no dead peer)."""
        self._deleting.add(session)
        session.close(now)

    def _replace_stale(self, stale: IkeSession, now: float) -> None:
        """An IKE SA the peer has most likely forgotten: its Child SAs leave the data
        plane now; the DELETE we still send may go unanswered (it then times out)."""
        log.info("replacing stale IKE SA", extra={"peer": self.name, "spi_i": stale.spi_i.hex()})
        for spi, record in list(self.children.records.items()):
            if record.session is stale:
                self._remove_child(spi, now, "replaced by a newer IKE SA")
        self._delete(stale, now)

    def _initial_contact(self, fresh: IkeSession, now: float) -> None:
        """The peer holds no other IKE SA with us (RFC 7296 §2.4): older ones are
        forgotten on the spot, without a DELETE nobody could answer."""
        for session in list(self.sessions):
            if session is not fresh and session.state in (IkeState.ESTABLISHED, IkeState.DELETING):
                log.info(
                    "replacing stale IKE SA",
                    extra={
                        "peer": self.name,
                        "spi_i": session.spi_i.hex(),
                        "how": "initial_contact_no_delete",
                    },
                )
                session.forget(now)
                self._flush(session)

    def _ike_down(self, session: IkeSession, event: IkeSaDown, now: float) -> None:
        self._superseded.pop(session, None)
        for spi, record in list(self.children.records.items()):
            if record.session is session:
                self._remove_child(spi, now, event.reason)
        reason = event.reason + (f" ({event.notify.name})" if event.notify is not None else "")
        was_up = session in self._were_up
        self._were_up.discard(session)
        peer_dead = event.peer_dead and session not in self._deleting  # rule 6
        if event.notify is not None or not was_up or peer_dead:  # a clean DELETE is no error
            self.status.last_error = reason
        log.info("IKE SA down", extra={"peer": self.name, "reason": reason})
        if peer_dead:
            self._dead_peer(now)

    def _dead_peer(self, now: float) -> None:
        """Rule 6: apply dpd_action."""
        self.status.dead_peer_detections += 1
        self._declared_dead = True
        action = self.policy.dpd_action
        log.warning("peer dead", extra={"peer": self.name, "action": action})
        if action == "restart" and self.remote is not None:
            self._want_up = True
            self._retry_delay = RETRY_INITIAL
            self._retry_at = now  # initiate again at once
        elif action == "clear":
            self._want_up = False
            self._retry_at = math.inf

    # -- the data plane side (rule 4) ---------------------------------------------

    def _install_child(self, session: IkeSession, event: ChildSaUp, now: float) -> None:
        if event.outbound_active and self._defers_outbound(session, event):
            event = dataclasses.replace(event, outbound_active=False)
            self._deferred.add(event.inbound_spi)
        record = self.children.install(session, event, now)
        if self.key_tables is not None:
            self.key_tables.save_child(self.name, event, session.local_addr[0])
        log.info(
            "Child SA installed",
            extra={
                "peer": self.name,
                "spi_in": f"{event.inbound_spi:08x}",
                "spi_out": f"{event.outbound_spi:08x}",
                "alg": event.algorithms,
                "generation": record.generation,
                "outbound_active": event.outbound_active,
                "local_ts": ",".join(map(str, event.local_ts)),
                "remote_ts": ",".join(map(str, event.remote_ts)),
            },
        )

    def _defers_outbound(self, session: IkeSession, event: ChildSaUp) -> bool:
        """Rule 5: the first Child SA of an IKE SA the peer set up while another IKE SA
        of ours still carries traffic (a reauthentication): the peer may not have it yet."""
        if session.is_initiator or event.rekey_of is not None:
            return False
        return any(
            r.active and r.session is not session and r.session.state is IkeState.ESTABLISHED
            for r in self.children.records.values()
        )

    def _activate_deferred(self, but_not: IkeSession | None = None) -> None:
        """Rule 5: deferred Child SAs (of IKE SAs other than ``but_not``) start sending."""
        for spi in list(self._deferred):
            record = self.children.records.get(spi)
            if record is None or record.session is but_not:
                continue
            self._deferred.discard(spi)
            self.children.activate(spi)
            log.info(
                "Child SA outbound active",
                extra={"peer": self.name, "spi_out": f"{record.outbound.spi:08x}"},
            )

    def _remove_child(self, inbound_spi: int, now: float, reason: str) -> None:
        record = self.children.records.get(inbound_spi)
        if record is not None and record.active:  # hand over before the tunnel goes idle
            self._activate_deferred(but_not=record.session)
        self._deferred.discard(inbound_spi)
        if self.children.remove(inbound_spi, now) is not None:
            log.info(
                "Child SA removed",
                extra={"peer": self.name, "spi_in": f"{inbound_spi:08x}", "reason": reason},
            )

    def _watch(self, now: float) -> None:
        """Rule 4: liveness notices, soft limits (rekey), hard limits (delete)."""
        result = self.children.watch(self.policy.limits)
        for record in result.inbound_seen:
            self._last_heard = now
            record.session.notice_inbound(now, record.inbound.spi)
            if record.inbound.spi in self._deferred:  # rule 5: the peer installed it
                self._deferred.discard(record.inbound.spi)
                self.children.activate(record.inbound.spi)
        for record in result.rekey:
            log.info(
                "Child SA soft limit reached, rekeying",
                extra={"peer": self.name, "spi_in": f"{record.inbound.spi:08x}"},
            )
            record.session.rekey_child(record.inbound.spi, now)
        for record in result.expire:
            log.warning(
                "Child SA hard limit reached, deleting",
                extra={"peer": self.name, "spi_in": f"{record.inbound.spi:08x}"},
            )
            record.session.delete_child(record.inbound.spi, now)

    def _send_keepalives(self, now: float) -> None:
        """RFC 3948 §2.3: one 0xFF datagram on the NAT-T port keeps our NAT mapping open."""
        targets = {s.remote_addr for s in self.sessions if s.established and s.behind_nat}
        for addr in targets:
            self.daemon.send_keepalive(addr)
            self.keepalives_sent += 1
        self._keepalive_at = now + NAT_KEEPALIVE_INTERVAL if targets else math.inf

    def shutdown_now(self) -> None:
        """At daemon exit: drop every inbound SA at once (no delete delay)."""
        self.children.expire(trio.current_time(), everything=True)

    # -- status ----------------------------------------------------------------

    def _liveness(self, now: float) -> dict[str, Any]:
        """alive: heard from within dpd_delay; checking: silent longer (a liveness
        check is due or in flight); dead: the last IKE SA ended unanswered; down."""
        delay = self.session_config.dpd_delay
        heard = None if self._last_heard is None else round(now - self._last_heard, 3)
        if self.state != "established":
            state = "dead" if self._declared_dead else "down"
        elif heard is not None and (delay <= 0 or heard <= delay + WATCH_INTERVAL):
            state = "alive"
        else:
            state = "checking"
        return {"state": state, "last_heard": heard, "dpd_delay": delay}

    def snapshot(self, now: float) -> dict[str, Any]:
        ike_sas = [s.status(now) for s in self.sessions]
        timers = {c["spi_in"]: c for ike in ike_sas for c in ike.get("child_sas", [])}
        children = self.children.snapshot(now)
        for child in children:  # the session owns the time limits (rekey_in, expires_in)
            session_view = timers.get(child["spi_in"], {})
            child["rekey_in"] = session_view.get("rekey_in")
            child["expires_in"] = session_view.get("expires_in")
        return {
            "name": self.name,
            "remote": None if self.remote is None else f"{self.remote[0]}:{self.remote[1]}",
            "auto": self.auto,
            "state": self.state,
            "last_error": self.status.last_error,
            "liveness": self._liveness(now),
            "ike_sas": ike_sas,
            "child_sas": children,
            "retiring_spis": [f"{spi:08x}" for spi in self.children.retiring_spis()],
            "counters": {
                "ike_sas_established": self.status.ike_sas_established,
                "ike_rekeys": self.status.ike_rekeys,
                "child_sas_installed": self.children.installed_total,
                "child_rekeys": self.children.rekeys_total,
                "dead_peer_detections": self.status.dead_peer_detections,
                "inbox_drops": self.inbox_drops,
                "nat_keepalives_sent": self.keepalives_sent,
            },
        }
