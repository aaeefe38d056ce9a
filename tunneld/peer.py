"""One configured peer: the trio task that drives its IKE sessions.

Theory of operation:

1. A :class:`Peer` owns every :class:`ike.session.IkeSession` with one
   configured peer (usually one; two while a duplicate or a restart is being
   resolved), each with one :class:`SessionRecord`: what the peer knows about
   it beyond the session's own state (when it began and came up, whether we
   delete it on purpose, whether a reauthentication supersedes it, which of
   its Child SAs wait to send). Records are dropped in one place, when their
   session is finished. Only this task calls into those sessions, so a
   session is never touched concurrently. The peer talks to the daemon only
   through :class:`PeerHost`.
2. The dispatcher in :mod:`tunneld.daemon` routes each IKE datagram to the
   peer's inbox; the peer feeds it to the session whose SPI it names (or
   creates a responder session for a new IKE_SA_INIT), then flushes:
   datagrams out through the data path, events into the SA database.
3. The task waits on its inbox only; the earliest deadline of its sessions
   or its own timers is handed to the daemon's :class:`tunneld.alarms.Alarms`,
   which pokes the inbox when it has come (one trio task for every peer's
   timers: a cancel-scope timeout per peer and wait was 13% of a 1,000-spoke
   hub's profile samples), and the task then calls ``handle_timer(now)``.
   Time is ``trio.current_time()`` only, so tests run it on a virtual clock.
4. Child SAs reach the data plane through :class:`tunneld.childsas.ChildSet`
   (make-before-break; see there). Once a second the daemon's watcher asks
   every peer whether its Child SA counters moved or crossed a limit
   (:meth:`Peer.watch_if_wanted`, reading only); those that did are woken
   and the peer task lets the ChildSet look at them (a hub's thousand idle
   spokes are not woken every second): authenticated inbound ESP is reported to the
   session (liveness), soft packet/byte/sequence limits start a Child SA
   rekey, hard limits delete the Child SA. Time limits are the session's.
5. One IKE SA per peer (RFC 7296 §2.4), by three rules:

   a. INITIAL_CONTACT goes out in our IKE_AUTH only when, as it is built, we
      hold no other IKE SA with the peer, established or being set up (in
      either role). Received, it makes *stale* only the IKE SAs that were
      established before the fresh one's negotiation began here: the peer
      restarted and forgot them, so they are forgotten on the spot (Child
      SAs out of the data plane, no DELETE nobody could answer). An IKE SA
      negotiated concurrently is not stale (the peer may have sent
      INITIAL_CONTACT before it learned of it); rule c decides.
   b. Without INITIAL_CONTACT, an IKE SA established before a fresh one the
      peer initiated began is being reauthenticated make-before-break
      (§2.8.3, strongSwan's ``make_before_break``): the peer deletes it
      itself once its new Child SA is installed, so it stays, and keeps
      carrying our traffic, until then (at most :data:`REAUTH_GRACE`
      seconds; then we delete it; if the fresh IKE SA goes first, it is ours
      again). The new Child SA's outbound SA waits meanwhile, like a rekey
      responder's (the peer installs its inbound SA only when our IKE_AUTH
      answer arrives): it takes over when the old Child SA goes or ESP
      arrives on the new one. A peer that initiates yet again while such a
      reauthentication is pending cannot be reauthenticating the IKE SA that
      was superseded first: it has forgotten it (a peer that drops its IKE
      SAs silently), so that one is replaced as stale at once. At most one
      established IKE SA and one superseded one (``superseded`` in status)
      are ever held.
   c. Duplicates, IKE SAs negotiated concurrently (both sides initiated):
      the one with the larger (SPIi, SPIr) pair survives; both gateways see
      both pairs, so both pick the same one, and each deletes the other with
      a DELETE (both may: a DELETE collision, which both answer). The
      loser's Child SAs stop being the outbound choice at once if the
      survivor has an active Child SA here (``ChildSet.withdraw``); a
      survivor's Child SA still waiting as in rule b takes over when the
      loser's Child SAs go (the DELETE was answered, so the peer has
      processed our IKE_AUTH answer before it) or ESP arrives on it.
6. A peer declared dead (liveness checks unanswered) is handled by
   ``dpd_action``: ``restart`` initiates again at once (if the peer's address
   is known), ``clear`` leaves the tunnel down until an operator or the peer
   brings it up. An IKE SA we chose to delete (operator ``down``, a stale or
   duplicate one, rule 5) whose DELETE goes unanswered says nothing about the
   peer: a restarted peer has forgotten the stale SA, while the new one works.
7. ``save_keys = true`` (a debugging aid, :mod:`tunneld.savekeys`): after
   each flush the keys of every IKE SA the session holds are appended to
   Wireshark's tables once (from IKE_SA_INIT on, so a failing IKE_AUTH can
   be decrypted too; after an IKE rekey, the new SA's), and both directions
   of every Child SA as it is installed.
9. Cost per input is independent of how many sessions exist: the session a
   datagram names is found by SPI in O(1) (our SPIs, or the initiator's SPI
   and address for a retransmitted IKE_SA_INIT), timers sit in a heap, and
   after an input only the sessions it touched are flushed. Half-open
   responder sessions (IKE_SA_INIT answered, no authenticated IKE_AUTH yet)
   are anyone's to create: they are reported to the daemon's front door, do
   not count as "live" (they never stop ``auto = start`` from initiating),
   never set liveness, nor ``last_error`` while an IKE SA with the peer is up
   or being set up (rule 13), and are logged through a throttle. Otherwise
   only authenticated messages (or our own timeouts) change what status says.
10. The peer's address follows its authenticated packets (RFC 7296 §2.23,
   RFC 3948; NAT rebinding, roaming): an IKE message the session
   authenticated, or ESP whose ICV verified and that was the newest on its
   SA (reported by the data plane, sadb rule 7, through
   :meth:`Peer.heard_from`), from a new address or port moves every IKE SA
   and every Child SA of the peer there, in one place (:meth:`Peer._follow`),
   logged once. A packet failing authentication, or a replayed one, never
   gets this far. NAT keepalives and liveness checks go where the IKE SA
   goes, so a liveness answer proves the path the ESP takes too.
11. A peer's configured address may be a DNS name: it is resolved when the
   task starts (so that the dispatcher can match the peer's IKE_SA_INIT by
   address) and again before every initiation (``auto = start``, a retry,
   ``dpd_action = restart``, ``tunneld up``), through the daemon
   (:meth:`PeerHost.resolve`, at most :data:`RESOLVE_TIMEOUT` seconds, the
   task waits meanwhile). A failure is logged once per run of failures, with
   the peer's name, sets ``last_error`` and is retried as a failed initiation
   is (also for a listening peer, whose IKE_SA_INIT the dispatcher can match
   only by the resolved address); it never ends the task.
8. Operator ``down`` (``tunneld down PEER [--for SECONDS]``): every Child SA
   leaves the data plane at once (outbound and routes; inbound SAs stay for
   the delete delay), every IKE SA is deleted, and the peer is *held*: a
   new IKE_SA_INIT from it is dropped and counted (``refused_initiations``,
   logged once per hold) until ``tunneld up PEER``, or until the hold's
   time has passed; then ``auto`` applies again (``start`` initiates).
12. The daemon's *reception* (``reception`` given) is a Peer with no peer of
    its own: it holds the half-open responder sessions whose peer entry is not
    known before IKE_AUTH (several entries could serve the source address, or
    an identity pattern does; :mod:`tunneld.peermatch`). Its sessions come from
    :meth:`Reception.responder` (every candidate's proposals, and a lookup by
    identity); once one is established, :meth:`Reception.owner` names the peer
    it belongs to and the session, with its record's start time, moves there
    (:meth:`Peer.take_over`) *before* any of its events is applied, so its
    Child SAs reach the data plane through the owner's ChildSet. A session that
    fails IKE_AUTH ends here, unauthenticated, as rule 9 says.
13. Failures an operator must act on (:mod:`tunneld.failures`): authentication,
    proposal and selector mismatches, an unreachable peer, and (rule 6) a dead
    peer are logged at WARNING with ``peer`` and ``remote``, once per run of
    the same failure (repeats at INFO); each retransmission of ours at INFO
    with its count (``Retransmitted``). ``last_error`` names the cause on both
    sides: the error notify we received, the refusal we sent to an
    authenticated peer (``RequestRefused``: offered vs configured), and, while
    nothing authenticated is up or being set up with the peer, a refusal of an
    unauthenticated one (marked as such; never over an authenticated error).
    After AUTHENTICATION_FAILED of our own attempt, the next one waits
    ``auth_failure_backoff`` seconds, doubling up to :data:`AUTH_BACKOFF_FACTOR`
    times that (the line says when); the tunnel coming up, or ``tunneld up``,
    ends the wait. The peer task sets :func:`tunneld.log.log_context`, so the
    sans-I/O core's lines (``tunneld.ike``, its message trace at DEBUG) name
    the peer and the remote address too.
14. A reload (:mod:`tunneld.reload`) hands a peer its new configuration
    (:meth:`Peer.reconfigure`): new sessions use it, established ones take it
    for the SAs they make from now on. When the peer must be re-established
    (:meth:`Peer.reauthenticate`), its established IKE SAs are marked
    ``replaced`` and, if we can initiate to the peer, a new IKE SA is
    initiated at once, without INITIAL_CONTACT (we hold another one, rule 5a),
    so a tunneld peer treats it as a make-before-break reauthentication (rule
    5b). Once its Child SA is installed (or it failed) the replaced IKE SAs are
    deleted (rule 5c's withdraw: the new Child SA carries at once). A peer we
    cannot initiate to (no address) gets the DELETE at once and reconnects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ike.entropy import Entropy
from ike.events import (
    Address,
    ChildSaDown,
    ChildSaOutboundActive,
    ChildSaUp,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    InitialContact,
    RequestRefused,
    Retransmitted,
)
from ike.policy import MAX_HALF_OPEN
from ike.session import IkeSession
from ike.sessionconfig import SessionConfig
from ike.states import IkeState
from ike.wire import IkeHeader
from tunneld.alarms import Alarms, Deadlines
from tunneld.childsas import ChildSets
from tunneld.datapath import IkeDatagram
from tunneld.durations import Durations
from tunneld.failures import Failure, FailureLog, classify
from tunneld.log import LogThrottle, log_context, networks_text, set_log_context
from tunneld.savekeys import KeyTables

log = logging.getLogger("tunneld.peer")

INBOX_SIZE = 64  # IKE datagrams queued per peer; beyond this they are dropped (peer retransmits)
# The reception (rule 12) takes every new initiator's IKE_SA_INIT and IKE_AUTH: a hub's
# burst of spokes would overflow 64 and wait for retransmissions (charon: 4 s); its inbox
# holds as many datagrams as the front door admits half-open IKE SAs.
RECEPTION_INBOX_SIZE = MAX_HALF_OPEN
RETRY_INITIAL = 2.0  # seconds before re-initiating after a failed IKE SA (auto = start)
# Capped low on purpose: with IKE_SA_INIT retransmitted at most every 3 s
# (ike.policy.RetransmitPolicy.init_max_timeout), a gateway that wants its
# tunnel is never silent for more than ~7 s, so the tunnel is back within
# seconds of an outage ending, however long the outage was.
RETRY_MAX = 4.0
WATCH_INTERVAL = 1.0  # seconds between looks at the SA counters (rule 4)
REAUTH_GRACE = 10.0  # seconds a reauthenticating peer gets to delete its old IKE SA (rule 5b)
NAT_KEEPALIVE_INTERVAL = 20.0  # RFC 3948 §4: "a default of 20 seconds"
RESOLVE_TIMEOUT = 5.0  # seconds a DNS lookup of the peer's name may take (rule 11)
AUTH_BACKOFF_FACTOR = 16  # rule 13: the auth failure back-off doubles up to 16x its start


_Input = tuple[IkeDatagram, IkeHeader]
# Unauthenticated endings (a half-open responder session refused or timed out):
# anyone can cause them, so they are logged once per interval, never per datagram.
HALF_OPEN_LOG = ("half-open IKE SA ended",)


class PeerHost(Protocol):
    """What a :class:`Peer` uses of the daemon (:class:`tunneld.daemon.Daemon` is one)."""

    @property
    def entropy(self) -> Entropy: ...

    def send_ike(self, data: bytes, src: Address, dst: Address) -> None: ...

    def send_keepalive(self, dst: Address) -> None: ...

    def esp_source(self, dst: Address, src: Address) -> None: ...

    async def resolve(self, name: str) -> str: ...

    def peer_resolved(self, peer: Peer) -> None: ...

    def register_session(self, session: IkeSession, peer: Peer) -> None: ...

    def unregister_session(self, session: IkeSession) -> None: ...

    def bury(self, session: IkeSession) -> None: ...

    def half_open_changed(
        self, peer: Peer, spi_i: bytes, remote: Address, *, opened: bool
    ) -> None: ...

    def half_open_declined(self, peer: Peer, spi_i: bytes, remote: Address) -> None: ...


class Reception(Protocol):
    """Rule 12: where the daemon's reception gets its sessions and gives them away."""

    def responder(self, dgram: IkeDatagram, now: float) -> IkeSession: ...

    def owner(self, session: IkeSession) -> Peer: ...


@dataclass
class PeerStatus:
    last_error: str | None = None
    established_at: float | None = None
    ike_sas_established: int = 0
    ike_rekeys: int = 0
    dead_peer_detections: int = 0
    refused_initiations: int = 0  # IKE_SA_INIT from the peer while held down (rule 8)
    half_open_ended: int = 0  # responder sessions that ended unauthenticated (rule 9)
    # rule 9: the last unauthenticated failure (it may be anyone's), kept apart
    last_unauthenticated: str | None = None
    # from the negotiation's start to IkeSaUp, per IKE SA (tunneld.metrics)
    handshakes: Durations = dataclasses.field(default_factory=Durations)


@dataclass(frozen=True)
class PeerPolicy:
    """What the daemon's configuration says about one peer beyond IKE."""

    auto: str  # "start" | "listen"
    dpd_action: str  # "restart" | "clear"
    # rule 13: seconds before initiating again after AUTHENTICATION_FAILED (doubling)
    auth_failure_backoff: float = 30.0


@dataclass(eq=False)
class SessionRecord:
    """What the peer knows about one of its IKE sessions (rule 1)."""

    session: IkeSession
    begun: float  # its negotiation began here (IKE_SA_INIT sent or received)
    # IkeSaUp was applied (a session is CLOSED by the time its IkeSaDown is
    # applied, so it can no longer say whether it ever was up)
    up_at: float | None = None
    deleting: bool = False  # we delete it on purpose: its DELETE may time out (rule 6)
    # rule 5b: a reauthentication by the peer supersedes it until then
    superseded_until: float | None = None
    superseded_by: SessionRecord | None = None
    # rule 9: a responder session still half-open: (the initiator's SPI, the address
    # its IKE_SA_INIT came from), its key here and in the daemon's front door
    half_open: tuple[bytes, Address] | None = None
    spis: tuple[bytes, ...] = ()  # our SPIs it is indexed under (rule 9)
    replaced: bool = False  # rule 14: deleted once the reload's new IKE SA is up

    def established_before(self, other: SessionRecord) -> bool:
        """Whether this IKE SA was up before ``other``'s negotiation began (rule 5a/b)."""
        return self.up_at is not None and self.up_at < other.begun


class Peer:
    """Drives the IKE sessions with one configured peer (see the module docstring)."""

    def __init__(
        self,
        host: PeerHost,
        name: str,
        session_config: SessionConfig,
        *,
        remote: tuple[str, int] | None,
        policy: PeerPolicy,
        children: ChildSets,
        local_addr: Callable[[], tuple[str, int]],
        alarms: Alarms[Peer],
        key_tables: KeyTables | None = None,
        reception: Reception | None = None,
    ) -> None:
        self.host = host
        self._alarms = alarms  # rule 3: what wakes the task at its next deadline
        self.reception = reception  # rule 12
        self.name = name
        self.session_config = session_config
        self.remote = remote
        self.policy = policy
        self.auto = policy.auto
        self.children = children
        self._local_addr = local_addr
        self.key_tables = key_tables  # save_keys = true (rule 7)
        self._records: dict[IkeSession, SessionRecord] = {}
        # rule 9: O(1) routing and timers, and the sessions the current input touched
        self._by_spi: dict[bytes, IkeSession] = {}
        self._by_init: dict[tuple[bytes, Address], IkeSession] = {}
        self._timers: Deadlines[IkeSession] = Deadlines()
        self._supersede_timers: Deadlines[SessionRecord] = Deadlines()
        self._dirty: set[IkeSession] = set()
        self._half_open_log = LogThrottle(log, HALF_OPEN_LOG)
        self._failures = FailureLog(log, name)  # rule 13
        self._auth_backoff = policy.auth_failure_backoff
        self._unauthenticated_error = False  # last_error came from an unauthenticated refusal
        self.status = PeerStatus()
        self._watch_at = math.inf
        self._keepalive_at = math.inf
        self.keepalives_sent = 0
        self._last_heard: float | None = None
        self._declared_dead = False
        inbox = INBOX_SIZE if reception is None else RECEPTION_INBOX_SIZE
        self._send, self._recv = trio.open_memory_channel[_Input | None](inbox)
        self._want_up = policy.auto == "start"
        self._retry_at = math.inf
        self._retry_delay = RETRY_INITIAL
        # rule 8: the operator's hold (math.inf: until `up`); None: not held
        self._held_until: float | None = None
        self._refusal_logged = False
        self.inbox_drops = 0
        self._heard_from: Address | None = None  # rule 10: ESP from a new address
        # rule 11: the configured address as an IP (None: a DNS name not resolved yet)
        self.resolved: str | None = None if remote is None or _is_name(remote[0]) else remote[0]
        self._initiate_wanted = False
        self._resolve_wanted = False  # a listening peer's name failed to resolve: again
        self._resolve_failing = False
        self.moves = 0  # rule 10: address changes followed
        self._reauth: IkeSession | None = None  # rule 14: the reload's new IKE SA

    @property
    def sessions(self) -> list[IkeSession]:
        return list(self._records)

    # -- called by the daemon (same trio thread, never concurrently with run) -------

    def deliver(self, dgram: IkeDatagram, header: IkeHeader) -> None:
        try:
            self._send.send_nowait((dgram, header))
        except trio.WouldBlock:
            self.inbox_drops += 1
            if header.starts_ike_sa:  # admitted by the front door: no session comes
                self.host.half_open_declined(self, header.spi_i, dgram.remote)

    def heard_from(self, remote: Address) -> None:
        """Rule 10: authenticated ESP of this peer arrived from ``remote``, a new
        address (called by the data plane's hook, once per new address)."""
        self._heard_from = remote
        self._poke()

    def rekey(self, *, ike: bool, child: str | None = None) -> bool:
        """Operator asked for a rekey of the IKE SA, or of every Child SA (of ``child``
        only, if given); False if none is up."""
        now = trio.current_time()
        started = False
        for session in self.sessions:
            if session.state is not IkeState.ESTABLISHED:
                continue
            self._dirty.add(session)
            if ike:
                started = session.rekey_ike(now) or started
            else:
                for record in list(self.children.records.values()):
                    wanted = child is None or record.event.child == child
                    if record.session is session and record.active and wanted:
                        started = session.rekey_child(record.inbound.spi, now) or started
        self._poke()
        return started

    def delete_child(self, inbound_spi: int) -> bool:
        """Delete one Child SA (INFORMATIONAL DELETE); False if no established one has
        that inbound SPI. With auto = "start" the session creates it again."""
        record = self.children.records.get(inbound_spi)
        if record is None or record.session.state is not IkeState.ESTABLISHED:
            return False
        record.session.delete_child(inbound_spi, trio.current_time())
        self._dirty.add(record.session)
        self._poke()
        return True

    def up(self) -> None:
        """Operator asked for the tunnel: end a hold, initiate now if no IKE SA is in progress."""
        if self._held_until is not None:
            log.info("hold lifted by the operator", extra={"peer": self.name})
        self._held_until = None
        self.status.last_error = None  # a new attempt: `tunneld up` waits for its outcome
        self._want_up = True
        self._retry_at = trio.current_time()
        self._poke()

    def down(self, hold: float | None = None) -> None:
        """Operator asked to take the tunnel down (rule 8): Child SAs out of the data
        plane, DELETE every IKE SA, refuse the peer's new ones for ``hold`` seconds
        (None: until ``up``)."""
        now = trio.current_time()
        self._want_up = False
        self._retry_at = math.inf
        self._held_until = math.inf if hold is None else now + hold
        self._refusal_logged = False
        records = list(self._records.values())
        for record in records:  # none of them takes over from another (_hand_over)
            record.deleting = True
        for record in records:
            self._remove_children(record, now, "taken down by the operator")
            self._delete(record, now)
        self._poke()

    def reconfigure(
        self, config: SessionConfig, policy: PeerPolicy, remote: tuple[str, int] | None
    ) -> None:
        """Rule 14: a reload changed this peer. New sessions use ``config``; the
        established ones take it for the SAs they make from now on (lifetimes at the
        next rekey, credentials at the next authentication) unless ``reauthenticate``
        replaces them."""
        now = trio.current_time()
        self.session_config = config
        self.policy = policy
        if remote != self.remote:
            self.remote = remote
            self.resolved = None if remote is None or _is_name(remote[0]) else remote[0]
            self.host.peer_resolved(self)
        if policy.auto != self.auto:
            self.auto = policy.auto
            self._want_up = self.auto == "start" and not self._held(now)
            self._retry_at = now if self._want_up else math.inf
        for session in self._records:
            session.reconfigure(config)
        self._poke()

    def reauthenticate(self) -> None:
        """Rule 14: replace the established IKE SAs by one made with the (reloaded)
        configuration: make-before-break if we can initiate to the peer, else DELETE
        (the peer reconnects)."""
        now = trio.current_time()
        old = [r for r in self._records.values() if r.up_at is not None and not r.deleting]
        if not old:
            return  # the next IKE SA is made with the new configuration anyway
        if self.remote is None:
            for record in old:
                self._delete(record, now)
            self._poke()
            return
        for record in old:
            record.replaced = True
        self._reauth = None
        self._initiate_wanted = True  # run() resolves the name first (rule 11)
        self._retry_at = now
        self._poke()

    def _retire_replaced(self, fresh: IkeSession | None, now: float, *, failed: bool) -> None:
        """Rule 14: the reload's new IKE SA is up (its Child SA installed) or failed:
        the IKE SAs it replaces are deleted either way."""
        self._reauth = None
        for record in [r for r in self._records.values() if r.replaced]:
            if record.session is fresh:
                continue
            record.replaced = False
            log.info(
                "reload: deleting the IKE SA the new configuration replaces"
                + (" (its replacement failed)" if failed else ""),
                extra={"peer": self.name, "spi_i": record.session.spi_i.hex()},
            )
            self._delete(record, now)

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        set_log_context(peer=self.name)  # rule 13: every line of this task names the peer
        try:
            await self._run()
        finally:
            self._alarms.set(self, None)

    async def _run(self) -> None:
        await self._resolve()  # rule 11: also for a listening peer (the dispatcher matches it)
        if self._want_up and self.remote is not None:
            self._retry_at = trio.current_time()
        while True:
            deadline = self._next_deadline()
            if trio.current_time() < deadline:  # rule 3: the alarms wake us then
                self._alarms.set(self, deadline)
                item = await self._next_input()
                if item is not None:
                    self._receive(*item)
                self._after_io()
                continue
            self._on_timer(trio.current_time())
            if self._initiate_wanted or self._resolve_wanted:
                initiate, self._initiate_wanted, self._resolve_wanted = (
                    self._initiate_wanted,
                    False,
                    False,
                )
                if await self._resolve() and initiate:  # rule 11: before every initiation
                    self._initiate(trio.current_time())
            self._after_io()

    async def _resolve(self) -> bool:
        """Rule 11: resolve a DNS name (an IP needs nothing); False if that failed."""
        if self.remote is None or not _is_name(self.remote[0]):
            return True
        name = self.remote[0]
        try:
            with trio.fail_after(RESOLVE_TIMEOUT):
                address = await self.host.resolve(name)
        except (OSError, trio.TooSlowError) as exc:
            why = str(exc) or f"no answer within {RESOLVE_TIMEOUT:g}s"
            self.status.last_error = f"cannot resolve {name}: {why}"
            self._unauthenticated_error = False
            if not self._resolve_failing:  # once per run of failures
                self._resolve_failing = True
                log.warning(
                    "cannot resolve the peer's address, retrying",
                    extra={"peer": self.name, "address": name, "error": why},
                )
            return False
        if self._resolve_failing or address != self.resolved:
            log.info(
                "peer address resolved",
                extra={"peer": self.name, "address": name, "resolved": address},
            )
        self._resolve_failing = False
        if address != self.resolved:
            self.resolved = address
            self.host.peer_resolved(self)  # its IKE_SA_INIT are matched by this address
        return True

    async def _next_input(self) -> _Input | None:
        """The next datagram, or None when woken by ``up``/``down``."""
        item: _Input | None = await self._recv.receive()
        return item

    def _poke(self) -> None:
        with contextlib.suppress(trio.WouldBlock):  # a full inbox wakes the task anyway
            self._send.send_nowait(None)

    def watch_if_wanted(self, now: float) -> None:
        """Rule 4, called by the daemon's watcher once a second: the task looks at the
        Child SA counters if they moved or crossed a limit (else it sleeps on)."""
        if self.children.watch_wanted():
            self._watch_at = now
            self._poke()

    def wake(self) -> None:
        """Rule 3: the alarms say the task's deadline has come."""
        self._poke()

    def _next_deadline(self) -> float:
        deadlines = [self._retry_at, self._watch_at, self._keepalive_at]
        deadlines += [self._timers.earliest(), self._supersede_timers.earliest()]
        if self._held_until is not None:
            deadlines.append(self._held_until)
        expiry = self.children.next_expiry()
        if expiry is not None:
            deadlines.append(expiry)
        return min(deadlines)

    def _on_timer(self, now: float) -> None:
        for session in self._timers.pop_due(now):  # rule 9: no walk over sessions
            if session in self._records:
                with log_context(remote=_hostport(session.remote_addr)):
                    session.handle_timer(now)
                self._dirty.add(session)
        self.children.expire(now)
        if self._watch_at <= now:
            self._watch_at = math.inf
            self._watch(now)
        if self._keepalive_at <= now:
            self._send_keepalives(now)
        for record in self._supersede_timers.pop_due(now):  # rule 5b
            if record.superseded_until is not None and record.superseded_until <= now:
                self._supersede(record, None, None)
                if record.session.state is IkeState.ESTABLISHED:
                    log.info("old IKE SA outlived the reauthentication", extra={"peer": self.name})
                    self._replace_stale(record, now)
        if self._held_until is not None and self._held_until <= now:  # rule 8
            self._held_until = None
            log.info(
                "hold ran out, auto applies again", extra={"peer": self.name, "auto": self.auto}
            )
            if self.auto == "start":
                self._want_up = True
                self._retry_at = now
        if self._retry_at <= now:
            self._retry_at = math.inf
            if self._want_up and not self._live_sessions():
                self._initiate_wanted = True  # run() resolves the name first (rule 11)
            elif self.remote is not None and self.resolved is None:
                self._resolve_wanted = True  # rule 11: the dispatcher needs the address

    def _live_sessions(self) -> bool:
        """Whether an IKE SA with the peer exists or is being set up by us or by the
        authenticated peer; a half-open responder session proves nothing (rule 9)."""
        return any(s.state is not IkeState.CLOSED and not s.half_open for s in self._records)

    def _supersede(
        self, record: SessionRecord, by: SessionRecord | None, until: float | None
    ) -> None:
        """Rule 5b: mark (or unmark) ``record`` as superseded by a reauthentication."""
        record.superseded_by, record.superseded_until = by, until
        self._supersede_timers.set(record, until)

    @property
    def state(self) -> str:
        """established | connecting | deleting | down, from the sessions' states
        (half-open responder sessions do not count: rule 9)."""
        states = {s.state for s in self._records if not s.half_open}
        if IkeState.ESTABLISHED in states:
            return "established"
        if states - {IkeState.DELETING, IkeState.CLOSED}:
            return "connecting"
        return "deleting" if IkeState.DELETING in states else "down"

    def _held(self, now: float) -> bool:
        return self._held_until is not None and now < self._held_until

    def _initiate(self, now: float) -> None:
        assert self.remote is not None and self.resolved is not None
        remote = (self.resolved, self.remote[1])

        # The session holds this callback: a weak reference back to it, or the two
        # would form a cycle and every initiated session (keys included) would wait
        # for a full garbage collection instead of going when its record does.
        me: weakref.ref[IkeSession] | None = None

        def alone() -> bool:  # rule 5a, asked when IKE_AUTH is built
            mine = me() if me is not None else None
            return not any(s is not mine and s.state is not IkeState.CLOSED for s in self._records)

        session = IkeSession.initiator(
            self.session_config,
            self.host.entropy,
            now,
            local_addr=self._local_addr(),
            remote_addr=remote,
            initial_contact=alone,
        )
        me = weakref.ref(session)
        with log_context(remote=_hostport(remote)):
            session.initiate(now)  # picks our SPI
        self._adopt(session, now)
        if any(r.replaced for r in self._records.values()):
            self._reauth = session  # rule 14
        log.info("initiating IKE SA", extra={"peer": self.name, "remote": _hostport(remote)})

    def _receive(self, dgram: IkeDatagram, header: IkeHeader) -> None:
        now = trio.current_time()
        session = self._session_for(header, dgram, now)
        if session is None:
            return
        before, was_up = session.remote_addr, session.established
        with log_context(remote=_hostport(dgram.remote)):
            session.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
        self._dirty.add(session)
        if session.established:  # rule 9: only what the session authenticated counts
            heard = session.last_heard
            self._last_heard = heard if self._last_heard is None else max(self._last_heard, heard)
            # rule 10: it authenticated a new address (not IKE_AUTH's move to port 4500)
            if was_up and session.remote_addr != before:
                self._follow(session.remote_addr, now, "IKE", before)

    def _follow(self, remote: Address, now: float, by: str, old: Address | None = None) -> None:
        """Rule 10: every IKE SA and every Child SA of the peer sends to ``remote``."""
        if not any(s.established for s in self._records):
            return  # nothing to move (an ESP report for SAs on their way out)
        old = self.children.move(remote) or old
        for session in self._records:
            prior = session.remote_addr
            if session.established and session.move_path(remote):
                old = old or prior
                self._dirty.add(session)
            if session.established:
                self.host.esp_source(remote, session.local_addr)  # daemon rule 7
        if old is None or old == remote:
            return
        self.moves += 1
        log.info(
            "peer address changed",
            extra={"peer": self.name, "old": _hostport(old), "new": _hostport(remote), "by": by},
        )

    def _session_for(self, header: IkeHeader, dgram: IkeDatagram, now: float) -> IkeSession | None:
        """Rule 9: the session a datagram names, by SPI (O(1)); or a new responder."""
        own_spi = header.spi_r if header.is_initiator else header.spi_i
        session = self._by_spi.get(own_spi)
        new_init = header.starts_ike_sa
        if session is None and new_init:
            session = self._by_init.get((header.spi_i, dgram.remote))
        if session is not None:
            return session if session.matches(header) else None
        if not new_init:
            return None
        if self._held(now):
            self._refuse(dgram, now)
            self.host.half_open_declined(self, header.spi_i, dgram.remote)
            return None
        if self.reception is not None:  # rule 12
            session = self.reception.responder(dgram, now)
        else:
            session = IkeSession.responder(
                self.session_config, self.host.entropy, now, dgram.local, dgram.remote
            )
        self._adopt(session, now)
        record = self._records[session]
        record.half_open = (header.spi_i, dgram.remote)  # the session learns SPIi only now
        self._by_init[record.half_open] = session
        self.host.half_open_changed(self, header.spi_i, dgram.remote, opened=True)
        return session

    def _refuse(self, dgram: IkeDatagram, now: float) -> None:
        """Rule 8: the peer initiates while the operator holds it down."""
        self.status.refused_initiations += 1
        if self._refusal_logged:
            return
        self._refusal_logged = True
        assert self._held_until is not None
        until = "tunneld up" if self._held_until == math.inf else f"{self._held_until - now:.0f}s"
        log.info(
            "refusing the peer's new IKE SA: held down by the operator "
            f"(run `tunneld up {self.name}` to accept it)",
            extra={"peer": self.name, "remote": dgram.remote[0], "held_until": until},
        )

    def take_over(self, session: IkeSession, begun: float) -> None:
        """Rule 12: an established responder session the reception found to be ours,
        its events not yet applied: adopt it, apply them, send its answer."""
        self._adopt(session, begun)
        self._after_io()
        self._poke()  # its timers join ours

    def refuses_new(self, now: float) -> bool:
        """Rule 8 for the reception: the operator holds this peer down (counted)."""
        if not self._held(now):
            return False
        self.status.refused_initiations += 1
        return True

    @property
    def idle(self) -> bool:
        """No IKE SA (a closed one lingering for retransmissions does not count), no
        Child SA, no operator's hold: nothing would be lost without this peer."""
        return (
            self._held_until is None
            and not self.children.records
            and all(s.state is IkeState.CLOSED for s in self._records)
        )

    def discard(self, now: float) -> None:
        """An idle peer goes for good (tunneld.directory rule 4): its lingering sessions
        are forgotten (their SPIs unrouted) and its inbound SAs leave at once."""
        for record in list(self._records.values()):
            self._forget(record)
        self.children.expire(now, everything=True)

    def _adopt(self, session: IkeSession, now: float) -> None:
        self._records[session] = SessionRecord(session, begun=now)
        self._dirty.add(session)
        self._index(self._records[session])

    def _index(self, record: SessionRecord) -> None:
        """Route the session's SPIs here and in the daemon (they change with IKE rekeys)."""
        session = record.session
        spis = tuple(session.local_spis)
        if spis != record.spis:
            for spi in record.spis:
                if self._by_spi.get(spi) is session:
                    del self._by_spi[spi]
            for spi in spis:
                self._by_spi[spi] = session
            record.spis = spis
        self.host.register_session(session, self)

    def _unindex(self, record: SessionRecord) -> None:
        session = record.session
        for spi in record.spis:
            if self._by_spi.get(spi) is session:
                del self._by_spi[spi]
        record.spis = ()
        self._end_half_open(record)
        self._timers.set(session, None)
        self._supersede_timers.set(record, None)
        self.host.unregister_session(session)

    def _end_half_open(self, record: SessionRecord) -> None:
        key = record.half_open
        if key is None:
            return
        record.half_open = None
        if self._by_init.get(key) is record.session:
            del self._by_init[key]
        self.host.half_open_changed(self, *key, opened=False)

    # -- after every input: send, apply events, forget dead sessions --------------

    def _after_io(self) -> None:
        """Follow an address change the data plane reported (rule 10), flush the
        sessions this input touched (rule 9), resolve duplicates, forget finished
        sessions, re-index SPIs and timers, and schedule re-initiation."""
        now = trio.current_time()
        if self._heard_from is not None:
            remote, self._heard_from = self._heard_from, None
            self._follow(remote, now, "ESP")
        while self._dirty:
            touched, self._dirty = self._dirty, set()
            came_up = [s for s in touched if s in self._records and self._flush(s)]
            for session in came_up:  # rule 5, once the new IKE SA's Child SA is installed
                if session is self._reauth:
                    self._retire_replaced(session, now, failed=False)  # rule 14
                self._resolve_duplicates(session, now)  # may touch others: loop again
            for session in touched:
                record = self._records.get(session)
                if record is None:
                    continue
                if session.buriable:  # closed: only its cached answers are left
                    self.host.bury(session)
                if session.finished:
                    self._forget(record)
                    continue
                if record.half_open is not None and not session.half_open:
                    self._end_half_open(record)
                self._index(record)  # IKE SPIs come and go with IKE rekeys (rule 2)
                self._timers.set(session, session.next_deadline())
        if (  # the walk over the sessions last: the reception holds hundreds
            self.remote is not None
            and (self._want_up or self.resolved is None)  # rule 11: a name to resolve
            and self._retry_at == math.inf
            and not self._live_sessions()
        ):
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _forget(self, record: SessionRecord) -> None:
        """The one place a session's record goes: once the session is finished."""
        del self._records[record.session]
        self._unindex(record)

    def reset(self, now: float) -> None:
        """After a bug in this peer's task (daemon rule 6): forget every session,
        take every Child SA out of the data plane, start over as at start-up."""
        for record in list(self._records.values()):
            self._remove_children(record, now, "peer reset after an internal error")
            self._forget(record)
        self._dirty.clear()
        self._retry_at = math.inf
        self._retry_delay = RETRY_INITIAL
        self.status.last_error = "internal error: the peer was reset (see the log)"

    def _flush(self, session: IkeSession) -> bool:
        """Apply the session's events, then send its datagrams (a ChildSaUp's inbound SA
        is installed before the answer carrying its SPI leaves); True if it came up."""
        if self.reception is not None and session.established:  # rule 12
            self._pass_on(session)
            return False
        came_up = False
        while (event := session.next_event()) is not None:
            self._apply(self._records[session], event)
            came_up = came_up or isinstance(event, IkeSaUp)
        for data, src, dst in session.datagrams_to_send():
            self.host.send_ike(data, src, dst)
        if self.key_tables is not None:  # rule 7: keys exist from IKE_SA_INIT on
            self.key_tables.save_ike(self.name, session.ike_sa_keys())
        return came_up

    def _pass_on(self, session: IkeSession) -> None:
        """Rule 12: the reception gives an established session to its owner."""
        assert self.reception is not None
        owner = self.reception.owner(session)
        record = self._records.pop(session)
        self._unindex(record)  # ends its half-open count, unroutes its SPIs here
        owner.take_over(session, record.begun)

    def _apply(self, record: SessionRecord, event: object) -> None:
        now = trio.current_time()
        session = record.session
        if isinstance(event, IkeSaUp):
            self.status.established_at = now
            self._last_heard = now
            self._declared_dead = False
            if session.behind_nat and self._keepalive_at == math.inf:
                self._keepalive_at = now + NAT_KEEPALIVE_INTERVAL
            self.status.ike_sas_established += 1
            self.status.handshakes.observe(now - record.begun)
            self.status.last_error = None
            self._retry_delay = RETRY_INITIAL
            self._auth_backoff = self.policy.auth_failure_backoff  # rule 13
            record.up_at = now
            log.info(
                "IKE SA established",
                extra={
                    "peer": self.name,
                    "remote_id": event.remote_id,
                    "alg": event.algorithms,
                    "spi_i": session.spi_i.hex(),
                    "spi_r": session.spi_r.hex(),
                },
            )
        elif isinstance(event, ChildSaUp):
            self._install_child(record, event, now)
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
            self._index(record)
            log.info(
                "IKE SA rekeyed",
                extra={
                    "peer": self.name,
                    "old_spi": event.old_local_spi.hex(),
                    "new_spi": event.new_local_spi.hex(),
                },
            )
        elif isinstance(event, InitialContact):
            self._initial_contact(record, now)
        elif isinstance(event, IkeSaDown) and record.half_open is not None:
            self._half_open_down(record, event, now)
        elif isinstance(event, IkeSaDown):
            self._ike_down(record, event, now)
        elif isinstance(event, Retransmitted):
            self._retransmitted(event)
        elif isinstance(event, RequestRefused):
            self._refused_request(record, event)

    def _retransmitted(self, event: Retransmitted) -> None:
        """Rule 13: a request of ours went unanswered; the count says how far it got."""
        log.info(
            f"retransmitting {event.exchange} request {event.message_id}: "
            f"transmission {event.transmission} of {event.of}",
            extra={
                "peer": self.name,
                "remote": _hostport(event.remote_addr),
                "event": "retransmit",
                "transmission": event.transmission,
                "of": event.of,
            },
        )

    def _refused_request(self, record: SessionRecord, event: RequestRefused) -> None:
        """Rule 13: we refused an authenticated peer's Child SA (its IKE SA stays)."""
        failure = classify(event.notify, "") or Failure.OTHER
        reason = f"refused the peer's {event.exchange}: {event.reason} ({event.notify.name})"
        self.status.last_error = reason
        self._unauthenticated_error = False
        self._failures.report(failure, reason, _hostport(record.session.remote_addr))

    def _resolve_duplicates(self, fresh: IkeSession, now: float) -> None:
        """Rule 5b/c, when ``fresh`` came up: reauthenticated IKE SAs wait for the
        peer's DELETE; of concurrent ones, the larger (SPIi, SPIr) pair survives.

        Only ESTABLISHED sessions we are not deleting count: the others are going.
        """
        record = self._records[fresh]
        if fresh.state is not IkeState.ESTABLISHED:
            return
        up = [
            r
            for r in self._records.values()
            if r.session.state is IkeState.ESTABLISHED and not r.deleting
        ]
        if not fresh.is_initiator:  # (we initiate only while we hold no other IKE SA)
            for old in [
                r for r in up if r.superseded_by is not None and r.established_before(record)
            ]:
                # rule 5b: the peer initiated again while that reauthentication was pending:
                # it cannot be reauthenticating this one, it has forgotten it
                log.info(
                    "peer initiated again: superseded IKE SA is stale", extra={"peer": self.name}
                )
                self._replace_stale(old, now)
            up = [r for r in up if not r.deleting]
            for old in [r for r in up if r.established_before(record) and not r.superseded_by]:
                self._supersede(old, record, now + REAUTH_GRACE)  # the peer deletes it
        up = [r for r in up if r.superseded_by is None]
        if len(up) < 2:
            return
        keep = max(up, key=lambda r: (r.session.spi_i, r.session.spi_r))
        for loser in up:
            if loser is not keep:
                log.info(
                    "deleting duplicate IKE SA",
                    extra={
                        "peer": self.name,
                        "spi_i": loser.session.spi_i.hex(),
                        "spi_r": loser.session.spi_r.hex(),
                        "kept_spi_i": keep.session.spi_i.hex(),
                        "kept_spi_r": keep.session.spi_r.hex(),
                    },
                )
                self._delete(loser, now)

    def _delete(self, record: SessionRecord, now: float) -> None:
        """Delete an IKE SA on purpose (rule 6: its DELETE timing out is no dead peer).

        Its Child SAs stop being the outbound choice (rule 5c); they leave the
        data plane when the DELETE completes.
        """
        record.deleting = True
        self._supersede(record, None, None)
        for spi, child in list(self.children.records.items()):
            if child.session is record.session:
                self.children.withdraw(spi)
        record.session.close(now)
        self._dirty.add(record.session)

    def _replace_stale(self, stale: SessionRecord, now: float) -> None:
        """An IKE SA the peer has most likely forgotten: its Child SAs leave the data
        plane now; the DELETE we still send may go unanswered (it then times out)."""
        log.info(
            "replacing stale IKE SA", extra={"peer": self.name, "spi_i": stale.session.spi_i.hex()}
        )
        self._remove_children(stale, now, "replaced by a newer IKE SA")
        self._delete(stale, now)

    def _initial_contact(self, fresh: SessionRecord, now: float) -> None:
        """Rule 5a: the peer holds no other IKE SA with us (RFC 7296 §2.4). The IKE SAs
        established before ``fresh`` began are forgotten on the spot, without a DELETE
        nobody could answer; concurrent ones are left to rule 5c."""
        for record in list(self._records.values()):
            session = record.session
            if record is fresh or session.state not in (IkeState.ESTABLISHED, IkeState.DELETING):
                continue
            if not record.established_before(fresh):
                log.info(
                    "INITIAL_CONTACT on a concurrent IKE SA: the duplicate rule decides",
                    extra={"peer": self.name, "spi_i": session.spi_i.hex()},
                )
                continue
            log.info(
                "replacing stale IKE SA",
                extra={
                    "peer": self.name,
                    "spi_i": session.spi_i.hex(),
                    "how": "initial_contact_no_delete",
                },
            )
            session.forget(now)
            self._dirty.add(session)
            self._flush(session)

    def _half_open_down(self, record: SessionRecord, event: IkeSaDown, now: float) -> None:
        """Rule 9: a responder session that never authenticated its initiator ended
        (refused IKE_SA_INIT, half-open timeout, failed IKE_AUTH): counted, kept in
        last_unauthenticated, logged through a throttle; a refusal for a mismatch at
        WARNING, and as last_error only as rule 13 says."""
        self._end_half_open(record)
        self.status.half_open_ended += 1
        reason = _with_notify(event)
        self.status.last_unauthenticated = reason
        remote = _hostport(record.session.remote_addr)
        failure = classify(event.notify, event.reason)
        if failure is None:  # e.g. a half-open timeout: anyone's, and no mismatch
            self._half_open_log(HALF_OPEN_LOG[0], now, peer=self.name, remote=remote, why=reason)
            return
        # rule 13: a refusal that names a mismatch is logged (throttled) at WARNING, and is
        # last_error while nothing authenticated is up or being set up, so a spoof can
        # neither deface a working tunnel's status nor hide an authenticated error
        self._failures.report_unauthenticated(failure, reason, remote, now)
        if not self._live_sessions() and (
            self.status.last_error is None or self._unauthenticated_error
        ):
            self.status.last_error = f"{reason} [refused an unauthenticated peer at {remote}]"
            self._unauthenticated_error = True

    def _ike_down(self, record: SessionRecord, event: IkeSaDown, now: float) -> None:
        self._supersede(record, None, None)
        if record.session is self._reauth:  # rule 14: the replacement failed
            self._retire_replaced(None, now, failed=True)
        for other in self._records.values():  # rule 5b: the reauthentication failed
            if other.superseded_by is record:
                self._supersede(other, None, None)
        self._remove_children(record, now, event.reason)
        reason = _with_notify(event)
        was_up = record.up_at is not None
        peer_dead = event.peer_dead and not record.deleting  # rule 6
        error = event.notify is not None or not was_up or peer_dead  # a clean DELETE is not
        if error:
            self.status.last_error = reason
            self._unauthenticated_error = False
        remote = _hostport(record.session.remote_addr)
        failure = None
        if error and not peer_dead:  # a dead peer has its own line (_dead_peer)
            failure = classify(event.notify, event.reason) or Failure.OTHER
        # every end, failed or not, has its INFO line (scripts count them); a failure
        # also its WARNING (rule 13)
        log.info("IKE SA down", extra={"peer": self.name, "remote": remote, "reason": reason})
        if failure is not None:
            self._failures.report(failure, reason + self._back_off(record, failure, now), remote)
        if peer_dead:
            self._dead_peer(now, reason, remote)

    def _back_off(self, record: SessionRecord, failure: Failure, now: float) -> str:
        """Rule 13: after an authentication failure of our own attempt, wait (doubling,
        up to AUTH_BACKOFF_FACTOR times the configured delay); the log's words for it."""
        if failure is not Failure.AUTHENTICATION or not record.session.is_initiator:
            return ""
        if not self._want_up or self.remote is None:
            return ""
        delay = self._auth_backoff
        self._auth_backoff = min(delay * 2, self.policy.auth_failure_backoff * AUTH_BACKOFF_FACTOR)
        self._retry_at = now + delay  # _after_io leaves a set retry alone
        return f"; next attempt in {delay:g} s"

    def _dead_peer(self, now: float, reason: str = "", remote: str | None = None) -> None:
        """Rule 6: apply dpd_action."""
        self.status.dead_peer_detections += 1
        self._declared_dead = True
        action = self.policy.dpd_action
        log.warning(  # the message stays "peer dead": scripts (and tests) look for it
            "peer dead",
            extra={
                "peer": self.name,
                "remote": remote,
                "event": "peer_dead",
                "action": action,
                "reason": reason,
            },
        )
        if action == "restart" and self.remote is not None and not self._held(now):
            self._want_up = True
            self._retry_delay = RETRY_INITIAL
            self._retry_at = now  # initiate again at once
        elif action == "clear":
            self._want_up = False
            self._retry_at = math.inf

    # -- the data plane side (rule 4) ---------------------------------------------

    def _install_child(self, record: SessionRecord, event: ChildSaUp, now: float) -> None:
        """Rule 5b: the first Child SA of an IKE SA the peer set up is unconfirmed (the
        peer installs its inbound SA when our IKE_AUTH answer arrives); its outbound
        SA waits while a Child SA of another IKE SA carries the traffic."""
        session = record.session
        answered = not session.is_initiator and event.rekey_of is None
        confirmed = event.outbound_active and not answered
        if event.outbound_active and not confirmed and self.children.carrying(event.child):
            event = dataclasses.replace(event, outbound_active=False)
        child = self.children.install(session, event, now, confirmed=confirmed)
        self._failures.cleared()  # rule 13: the tunnel works; the next failure is news
        self.host.esp_source(event.remote_addr, session.local_addr)  # daemon rule 7
        if record.deleting:  # rule 5c: e.g. a rekey the peer made while we delete
            self.children.withdraw(event.inbound_spi)
        if self.key_tables is not None:
            self.key_tables.save_child(self.name, event, session.local_addr[0])
        log.info(
            "Child SA installed",
            extra={
                "peer": self.name,
                "spi_in": f"{event.inbound_spi:08x}",
                "spi_out": f"{event.outbound_spi:08x}",
                "alg": event.algorithms,
                "generation": child.generation,
                "outbound_active": event.outbound_active,
                "local_ts": networks_text(event.local_ts),
                "remote_ts": networks_text(event.remote_ts),
            },
        )

    def _hand_over(self, but_not: IkeSession, child_name: str) -> None:
        """Rule 5b/c: the last confirmed Child SA of a configured child goes (the peer
        deleted it, or answered our DELETE, after our IKE_AUTH answer): the unconfirmed
        Child SAs of that child in the other IKE SAs we keep are confirmed and take over."""
        for spi, child in list(self.children.records.items()):
            record = self._records.get(child.session)
            if child.session is but_not or child.confirmed or record is None or record.deleting:
                continue
            if child.event.child != child_name:
                continue
            self._confirm(spi)

    def _confirm(self, spi: int) -> None:
        child = self.children.records[spi]
        self.children.activate(spi)
        log.info(
            "Child SA outbound active",
            extra={"peer": self.name, "spi_out": f"{child.outbound.spi:08x}", "confirmed": True},
        )

    def _remove_children(self, record: SessionRecord, now: float, reason: str) -> None:
        for spi, child in list(self.children.records.items()):
            if child.session is record.session:
                self._remove_child(spi, now, reason)

    def _remove_child(self, inbound_spi: int, now: float, reason: str) -> None:
        child = self.children.records.get(inbound_spi)
        if child is not None and child.active and self.children.successor(child) is None:
            self._hand_over(child.session, child.event.child)  # before the tunnel goes idle
        if self.children.remove(inbound_spi, now) is not None:
            log.info(
                "Child SA removed",
                extra={"peer": self.name, "spi_in": f"{inbound_spi:08x}", "reason": reason},
            )

    def _watch(self, now: float) -> None:
        """Rule 4: liveness notices, soft limits (rekey), hard limits (delete)."""
        result = self.children.watch()
        for child in result.inbound_seen:
            self._last_heard = now  # authenticated ESP (its ICV verified)
            child.session.notice_inbound(now, child.inbound.spi)
            self._dirty.add(child.session)
            if not child.confirmed:  # rule 5b: the peer has it
                self._confirm(child.inbound.spi)
        for child in result.rekey:
            log.info(
                "Child SA soft limit reached, rekeying",
                extra={"peer": self.name, "spi_in": f"{child.inbound.spi:08x}"},
            )
            child.session.rekey_child(child.inbound.spi, now)
            self._dirty.add(child.session)
        for child in result.expire:
            log.warning(
                "Child SA hard limit reached, deleting",
                extra={"peer": self.name, "spi_in": f"{child.inbound.spi:08x}"},
            )
            child.session.delete_child(child.inbound.spi, now)
            self._dirty.add(child.session)

    def _send_keepalives(self, now: float) -> None:
        """RFC 3948 §2.3: one 0xFF datagram on the NAT-T port keeps our NAT mapping open."""
        targets = {s.remote_addr for s in self._records if s.established and s.behind_nat}
        for addr in targets:
            self.host.send_keepalive(addr)
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

    def _hold(self, now: float) -> dict[str, Any] | None:
        """Rule 8: None, or how long the operator's hold lasts (None: until `up`)."""
        if not self._held(now):
            return None
        assert self._held_until is not None
        left = None if self._held_until == math.inf else round(self._held_until - now, 3)
        return {"remaining": left}

    def snapshot(self, now: float) -> dict[str, Any]:
        # rule 9: half-open sessions are counted, not listed (anyone can make them)
        ike_sas = []
        closed = 0  # kept a while to answer retransmissions: counted, not listed
        for record in self._records.values():
            if not record.session.half_open:
                view = record.session.status(now)
                if view["state"] == "closed":
                    closed += 1
                    continue
                # rule 5b: kept until the reauthenticating peer deletes it (or the grace ends)
                superseded = record.superseded_by is not None
                ike_sas.append({**view, "superseded": superseded})
        half_open = sum(1 for r in self._records.values() if r.half_open is not None)
        timers = {c["spi_in"]: c for ike in ike_sas for c in ike.get("child_sas", [])}
        children = self.children.snapshot(now)
        for child in children:  # the session owns the time limits (rekey_in, expires_in)
            session_view = timers.get(child["spi_in"], {})
            child["rekey_in"] = session_view.get("rekey_in")
            child["expires_in"] = session_view.get("expires_in")
        return {
            "name": self.name,
            "remote": None if self.remote is None else _hostport(self.remote),  # [v6]:port
            "resolved": self.resolved,  # rule 11: what a DNS name resolved to last
            "address": self._current_address(),
            "auto": self.auto,
            "state": self.state,
            "held_down": self._hold(now),
            "last_error": self.status.last_error,
            "last_unauthenticated_failure": self.status.last_unauthenticated,
            "half_open_ike_sas": half_open,
            "closed_ike_sas": closed,
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
                "refused_initiations": self.status.refused_initiations,
                "half_open_ended": self.status.half_open_ended,
                "inbox_drops": self.inbox_drops,
                "nat_keepalives_sent": self.keepalives_sent,
                "address_changes": self.moves,
            },
        }

    def _current_address(self) -> str | None:
        """Rule 10: where the peer's IKE SA sends now (it follows the peer), if up."""
        for session in self._records:
            if session.established:
                return _hostport(session.remote_addr)
        return None


def _with_notify(event: IkeSaDown) -> str:
    """The reason, followed by the notify's name unless the reason already says it."""
    notify = event.notify
    if notify is None or notify.name in event.reason:
        return event.reason
    return f"{event.reason} ({notify.name})"


def _is_name(host: str) -> bool:
    """Rule 11: a DNS name rather than an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _hostport(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
