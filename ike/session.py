"""IkeSession: one peer's IKE SA and its Child SAs, as a sans-I/O state machine.

Theory of operation
===================

The daemon feeds the session datagrams (``receive_datagram``), timer ticks
(``handle_timer``) and hints (``notice_inbound``: authenticated ESP arrived),
each with ``now``; the session answers with datagrams
(``datagrams_to_send``), events (``next_event``) and the time it next wants
a tick (``next_deadline``). It never reads a clock or touches a socket;
randomness (SPIs, nonces, DH keys, rekey jitter) comes from the injected
entropy, so two sessions driven with the same seeds behave identically.

Parts (objects that the session owns, not layers it inherits):

- this module: :class:`IkeSession`, the public interface, which owns one of each;
- :class:`ike.sessioncore.SessionCore`: the state (moved only along
  :data:`ike.states.TRANSITIONS`, one next state per input), the IKE SAs
  (:class:`ike.ikesa.IkeSas`: current, successor, retiring), the outbox,
  going down;
- :class:`ike.dispatch.Dispatcher`: requests and responses on whichever IKE
  SA they name, the error boundary of each direction, retransmission timers;
- :class:`ike.rekeying.Rekeying`: lifetimes, rekeys of Child SAs and of the
  IKE SA, collisions (§2.8, §2.25), liveness checks (§2.4), and the
  session's side of the tasks' follow-ups;
- :mod:`ike.taskmanager`: per IKE SA, message IDs, the window of one
  request, the retransmission timer and the cached response;
- :mod:`ike.exchanges`: one task per exchange concern, each with initiator
  (``build_i``/``process_i``) and responder (``process_r``/``build_r``)
  halves and its own follow-up (``on_done``/``on_failed``/``on_abandoned``,
  ``on_answered``); they fill in :class:`ike.exchanges.context.SaContext`.

Rekeying, make-before-break (DESIGN §4, RFC 7296 §1.3, §2.8):

- Both peers schedule the rekey of each SA at its soft lifetime less a
  random jitter; an SA not rekeyed by its hard lifetime is deleted. The
  daemon forces Child SA rekeys (packet/byte limits) with ``rekey_child``.
- Child SA rekey initiator: when the response arrives, ChildSaUp(rekey_of,
  outbound_active=True) (the daemon installs inbound and switches outbound
  at once); then DELETE of the old Child SA, whose ChildSaDown follows when
  that exchange completes.
- Child SA rekey responder: ChildSaUp(rekey_of, outbound_active=False) is
  queued before the response leaves (inbound installed before its SPI is
  revealed); ChildSaOutboundActive follows when the old Child SA is deleted
  (by the peer, which installed its inbound SA before deleting, §2.8), or
  when the daemon reports ESP on the new inbound SPI.
- IKE SA rekey: the session lives on with the new IKE SA (new SPIs, keys,
  message IDs) and emits IkeSaRekeyed; the rekey initiator deletes the old
  IKE SA; Child SAs move along. ``local_spis`` names every IKE SPI the
  session answers to while old and new coexist.
- Simultaneous rekeys resolve as §2.8.1/§2.8.2 say: the new SA made by the
  exchange holding the lowest of the four nonces is deleted by its creator.

Invariants:

1. Only :meth:`SessionCore.fire` changes ``state``, and only along
   :data:`ike.states.TRANSITIONS`, which names one next state per input.
   An input missing from the table is the peer's protocol error for a
   message (answered INVALID_SYNTAX or dropped) and the caller's
   :class:`~ike.errors.LocalError` for a method call.
2. At most one request of ours is in flight per IKE SA; its retransmissions
   are the identical bytes (§2.1). A retransmitted request of the peer is
   answered with the identical cached response and never processed twice.
3. Nothing from the peer is acted upon before it is authenticated, except
   IKE_SA_INIT (which has no keys yet) and only within that exchange: a
   responder installs a Child SA only after the initiator's AUTH verified,
   an initiator only after the responder's.
4. PeerErrors become notifies in exactly two places, one per direction:
   ``Dispatcher._answer`` (our response to a request) and
   ``Dispatcher._complete`` (the outcome of our request). Any other
   exception is a bug and propagates.
5. Every session ends with exactly one IkeSaDown, preceded by a ChildSaDown
   for each Child SA still up; an IKE SA rekey ends nothing. After it,
   ``finished`` becomes True once no retransmitted request can still need
   our cached answer.
6. Events are queued in causal order: IkeSaUp before the ChildSaUp of
   IKE_AUTH; a ChildSaUp before the ChildSaDown of the SA it replaces. A
   responder queues ChildSaUp *before* the response carrying its SPI is
   handed out, so the daemon (which drains events first) installs the
   inbound SA before the peer can use it.
7. A deleted IKE SA that lingers to answer retransmitted requests (a closed
   session until ``finished``, an old SA after an IKE rekey) keeps, from the
   end of the input that deleted it, only its SPIs, addresses, message window
   and cached response (:meth:`ike.ikesa.IkeSa.lingering`): no keys, nonces,
   IKE_SA_INIT messages, Child SAs or rekey tasks. That bounds what a hub's
   deleted sessions hold for the 41 s of the retransmission window, and no
   secret outlives the SA.
8. A closed session that lingers may be *buried* (:meth:`IkeSession.bury`):
   it is finished at once, and its lingering IKE SAs become
   :class:`~ike.tombstones.Tombstone` rows (SPIs, the answered request and
   its response, the addresses allowed to ask again, the deadline) that the
   daemon answers from without a session object (:mod:`ike.tombstones`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ike.constants import ExchangeType
from ike.dispatch import Dispatcher
from ike.entropy import Entropy
from ike.errors import LocalError, ParseError
from ike.events import Address, Event, IPNetwork
from ike.exchanges.context import ChildSa, ChildStatus, SaContext
from ike.exchanges.ike_init import IkeInitInitiator
from ike.exchanges.informational import LivenessTask
from ike.ikesa import Datagram, IkeSa, peek_header, strip_non_esp_marker
from ike.rekeying import Rekeying
from ike.sakeys import IkeSaKeys, ike_sa_keys
from ike.sessionconfig import PeerLookup, SessionConfig
from ike.sessioncore import SessionCore
from ike.states import IkeState, Input, accepts
from ike.taskmanager import Exchange, TaskManager
from ike.tombstones import Tombstone
from ike.wire import IkeHeader, parse_header

__all__ = ["Datagram", "IkeSession", "peek_header", "strip_non_esp_marker"]


class IkeSession:
    """One peer's IKE SA (and its Child SAs). See the module docstring.

    The daemon's loop, per input: call ``receive_datagram``,
    ``handle_timer`` or another method; drain ``next_event()`` (install and
    remove SAs, route ``local_spis``) *before* sending
    ``datagrams_to_send()``; sleep until ``next_deadline()``; drop the
    session once ``finished``.
    """

    @classmethod
    def initiator(
        cls,
        config: SessionConfig,
        entropy: Entropy,
        now: float,
        local_addr: Address,
        remote_addr: Address,
        *,
        initial_contact: Callable[[], bool] | None = None,
    ) -> IkeSession:
        """A session that will start an IKE SA with ``initiate``.

        ``initial_contact`` is asked when IKE_AUTH is built (RFC 7296 §2.4):
        True means we hold no other IKE SA with this peer, established or
        being set up, so N(INITIAL_CONTACT) goes out (if the configuration's
        ``send_initial_contact`` allows it). Without it the notify is sent.
        """
        ctx = SaContext((config,), entropy, True, local_addr, remote_addr)
        session = cls(ctx, IkeState.IDLE, now)
        if initial_contact is not None:
            session._core.initial_contact = initial_contact
        return session

    @classmethod
    def responder(
        cls,
        config: SessionConfig | Sequence[SessionConfig],
        entropy: Entropy,
        now: float,
        local_addr: Address,
        remote_addr: Address,
        *,
        lookup: PeerLookup | None = None,
    ) -> IkeSession:
        """A session for an IKE_SA_INIT request (SPIr = 0) about to be delivered.

        With several candidate configurations the IKE_SA_INIT offer is matched
        against all of their IKE proposals and IKE_AUTH picks the first whose
        remote identity and method fit; with ``lookup``, IKE_AUTH asks it instead
        (:data:`ike.sessionconfig.PeerLookup`: by identity, before AUTH is
        verified with what it returns). ``local_spi`` is known at once.
        """
        configs = (config,) if isinstance(config, SessionConfig) else tuple(config)
        if not configs:
            raise LocalError("a responder needs at least one configuration")
        ctx = SaContext(configs, entropy, False, local_addr, remote_addr, lookup=lookup)
        ctx.spi_r = ctx.random_ike_spi()
        return cls(ctx, IkeState.INIT_WAIT, now)

    def __init__(self, ctx: SaContext, state: IkeState, now: float) -> None:
        """Use :meth:`initiator` or :meth:`responder`."""
        self._core = SessionCore(ctx, state, now)
        self._rekeying = Rekeying(self._core)
        self._dispatcher = Dispatcher(self._core, self._rekeying)

    # Read-only views for tests that frame or decrypt messages themselves.
    @property
    def _ctx(self) -> SaContext:
        return self._core.ctx

    @property
    def _sa(self) -> IkeSa:
        return self._core.sas.current

    @property
    def _tm(self) -> TaskManager:
        return self._core.tm

    # -- the sans-I/O interface --------------------------------------------

    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT (initiator only, once)."""
        core = self._core
        if not accepts(core.state, Input.INITIATE):
            raise LocalError(f"initiate is not possible in state {core.state.name}")
        exchange = Exchange(ExchangeType.IKE_SA_INIT, [IkeInitInitiator(core.ctx)])
        core.tm.enqueue(exchange)
        core.fire(Input.INITIATE)
        core.pump(now)

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        """One UDP payload from ``src`` (the peer) to ``dst`` (us); a marker is tolerated."""
        core = self._core
        if core.state is IkeState.CLOSED and core.linger_deadline is None:
            core.drop("session closed")
            return
        message = strip_non_esp_marker(bytes(data))
        try:
            header = parse_header(message)
        except ParseError as err:
            core.drop("malformed header", str(err))
            return
        sa = core.sas.find(header)
        if sa is None:
            core.drop("not for this IKE SA")
        else:
            self._dispatcher.receive(sa, header, message, src, dst, now)
        self._rekeying.run(now)
        core.pump(now)
        self._shed_lingering()

    def handle_timer(self, now: float) -> None:
        """Act on every deadline at or before ``now``."""
        core = self._core
        if core.linger_deadline is not None and now >= core.linger_deadline:
            core.linger_deadline, core.finished = None, True
        if core.half_open_deadline is not None and now >= core.half_open_deadline:
            core.half_open_deadline = None
            if accepts(core.state, Input.HALF_OPEN_EXPIRED):
                reason = "half-open IKE SA timed out"
                core.go_down(Input.HALF_OPEN_EXPIRED, reason, None, now)
        if core.state is not IkeState.CLOSED:
            self._dispatcher.timers(now)
            self._dispatcher.init_error_timer(now)
        self._rekeying.run(now)
        core.pump(now)
        self._shed_lingering()

    def _shed_lingering(self) -> None:
        """Invariant 7: what lingers keeps only its cached answer; a closed session's
        rekey state (an IKE rekey's task may hold a DH private key) goes too."""
        if self._core.shed_lingering():
            self._rekeying = Rekeying(self._core)
            self._dispatcher = Dispatcher(self._core, self._rekeying)

    def next_deadline(self) -> float | None:
        core = self._core
        deadlines = [
            core.tm.deadline,
            core.half_open_deadline,
            core.linger_deadline,
            core.init_error_deadline,
            self._rekeying.deadline(),
        ]
        if core.state is not IkeState.CLOSED:
            deadlines.append(core.sas.deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def datagrams_to_send(self) -> list[Datagram]:
        """IKE messages to send: (bytes, our address, peer's address).

        The bytes are the IKE message; the transport adds the non-ESP marker
        when the source port is the NAT-T port (RFC 3948 §2.2).
        """
        core = self._core
        out, core.outbox = core.outbox, []
        return out

    def next_event(self) -> Event | None:
        events = self._core.ctx.events
        return events.pop(0) if events else None

    def close(self, now: float) -> None:
        """Delete the IKE SA and with it every Child SA (§1.4.1); idempotent."""
        core = self._core
        if core.state in (IkeState.DELETING, IkeState.CLOSED):
            core.fire(Input.CLOSE)
        elif core.state is IkeState.ESTABLISHED:
            core.start_close("closed locally", None, now)
        else:
            core.go_down(Input.CLOSE, "closed locally before establishment", None, now)

    def forget(self, now: float, reason: str = "the peer restarted (INITIAL_CONTACT)") -> None:
        """End the IKE SA at once, without a DELETE exchange: the peer has forgotten
        it (it sent INITIAL_CONTACT on a newer IKE SA, RFC 7296 §2.4), so a DELETE
        could only go unanswered. ChildSaDown for each Child SA, then IkeSaDown."""
        if self._core.state is not IkeState.CLOSED:  # idempotent
            self._core.go_down(Input.FORGET, reason, None, now)

    def delete_child(self, inbound_spi: int, now: float) -> None:
        """Delete one Child SA (§1.4.1); ChildSaDown follows when the peer answers.

        While the IKE SA itself is being deleted this does nothing (the Child
        SA goes with it). LocalError for an SPI the session does not hold.
        """
        core = self._core
        if core.state is IkeState.DELETING and inbound_spi in core.ctx.children:
            return
        self._established_child(inbound_spi)
        self._rekeying.delete_child(inbound_spi, "deleted locally")
        core.pump(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request (§1.4); no answer at all ends the IKE SA."""
        core = self._core
        if core.state is not IkeState.ESTABLISHED:
            raise LocalError(f"liveness check in state {core.state.name}")
        core.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [LivenessTask()]))
        core.pump(now)

    def rekey_child(self, inbound_spi: int, now: float) -> bool:
        """Rekey one Child SA now (e.g. its packet or byte soft limit was reached).

        Returns False, changing nothing, when a rekey or delete of it is
        already under way or the IKE SA is not established (being deleted,
        say), so the daemon may call this on every counter check.
        LocalError for an SPI the session does not hold.
        """
        core = self._core
        if core.state is not IkeState.ESTABLISHED and inbound_spi in core.ctx.children:
            return False
        child = self._established_child(inbound_spi)
        if not child.rekeyable:
            return False
        self._rekeying.start_child_rekey(child)
        core.pump(now)
        return True

    def create_child(
        self,
        now: float,
        local_ts: Sequence[IPNetwork] | None = None,
        remote_ts: Sequence[IPNetwork] | None = None,
        *,
        child: str = "",
    ) -> None:
        """Create another Child SA with CREATE_CHILD_SA (§1.3.1); ChildSaUp when answered.

        ``child`` names the configured child (its ESP proposals, lifetime and
        selectors; the first one if no child has that name); ``local_ts`` and
        ``remote_ts`` override its selectors. The peer may narrow them (§2.9).
        With a DH group in the ESP proposals the exchange has PFS.
        """
        core = self._core
        if core.state is not IkeState.ESTABLISHED:
            raise LocalError(f"Child SA creation in state {core.state.name}")
        config = core.ctx.config.child_config(child)
        ts = (tuple(local_ts or config.local_ts), tuple(remote_ts or config.remote_ts))
        self._rekeying.create_child(ts, config.name)
        core.pump(now)

    def rekey_ike(self, now: float) -> bool:
        """Rekey the IKE SA now; False when one is under way or the SA is not established."""
        core = self._core
        if core.state is not IkeState.ESTABLISHED:
            return False
        if self._rekeying.ike_rekey is not None or core.sas.successor is not None:
            return False
        self._rekeying.start_ike_rekey()
        core.pump(now)
        return True

    def notice_inbound(self, now: float, inbound_spi: int | None = None) -> None:
        """Authenticated ESP arrived from the peer (on ``inbound_spi``, if given).

        It defers the next liveness check (§2.4: only an idle peer is asked).
        ESP on a Child SA we answered a rekey for proves that the peer
        installed it: its outbound SA may be used at once.
        """
        core = self._core
        core.last_inbound = max(core.last_inbound, now)
        child = core.ctx.children.get(inbound_spi) if inbound_spi is not None else None
        if child is not None and core.state is not IkeState.CLOSED:
            core.ctx.activate_outbound(child)

    def reconfigure(self, config: SessionConfig) -> None:
        """A reloaded configuration of the same peer (same identities, selectors and
        proposals): the SAs made from now on take its lifetimes, jitter, liveness
        delay and credentials; the SAs that exist keep their deadlines (a changed
        lifetime applies at the next rekey). Ignored while a responder session is
        half-open (its candidates are narrowed only at IKE_AUTH)."""
        if self.half_open:
            return
        for sa in self._core.sas:
            sa.ctx.configs = (config,)

    def move_path(self, remote: Address) -> bool:
        """Authenticated ESP of this peer arrived from ``remote`` (a new address or
        port, §2.23, RFC 3948): every IKE SA of the session sends there from now
        on. True if an address changed; nothing happens without NAT traversal
        (forced by default) or after the session closed."""
        return self._core.move_path(remote)

    def _established_child(self, inbound_spi: int) -> ChildSa:
        child = self._core.ctx.children.get(inbound_spi)
        if self._core.state is not IkeState.ESTABLISHED or child is None:
            raise LocalError(f"no established Child SA with inbound SPI {inbound_spi:08x}")
        return child

    def ike_sa_keys(self) -> tuple[IkeSaKeys, ...]:
        """SK_e/SK_a of every IKE SA this session holds that has keys (current,
        successor, retiring): only for the daemon's opt-in ``save_keys``."""
        found = (ike_sa_keys(sa.ctx) for sa in self._core.sas)
        return tuple(keys for keys in found if keys is not None)

    # -- status (never keys) -------------------------------------------------

    @property
    def state(self) -> IkeState:
        return self._core.state

    @property
    def drops(self) -> dict[str, int]:
        """Datagrams dropped, by reason (a fixed set: ike.sessioncore.DROP_REASONS)."""
        return dict(self._core.drops)

    @property
    def is_initiator(self) -> bool:
        """Our role in the current IKE SA (after a rekey: in the rekey exchange, §2.18)."""
        return self._ctx.is_initiator

    @property
    def spi_i(self) -> bytes:
        return self._ctx.spi_i

    @property
    def spi_r(self) -> bytes:
        return self._ctx.spi_r

    @property
    def local_spi(self) -> bytes:
        """Our SPI of the current IKE SA (known from creation for a responder)."""
        return self._ctx.local_spi

    @property
    def local_spis(self) -> tuple[bytes, ...]:
        """Every IKE SPI of ours this session answers to, the current one first.

        Besides the current SA: a new SA negotiated by the peer's rekey (in
        use as soon as our response arrives), and old or redundant SAs still
        being deleted. The daemon routes all of them to this session.
        """
        spis: list[bytes] = []
        for sa in self._core.sas:
            if sa.local_spi not in spis and any(sa.local_spi):
                spis.append(sa.local_spi)
        return tuple(spis)

    @property
    def remote_spi(self) -> bytes:
        return self._ctx.remote_spi

    @property
    def local_addr(self) -> Address:
        return self._ctx.local_addr

    @property
    def remote_addr(self) -> Address:
        return self._ctx.remote_addr

    @property
    def established(self) -> bool:
        return self._core.state in (IkeState.ESTABLISHED, IkeState.DELETING)

    @property
    def config(self) -> SessionConfig:
        """The configuration in use (a responder's first candidate until IKE_AUTH)."""
        return self._core.ctx.config

    @property
    def half_open(self) -> bool:
        """A responder session whose initiator has not authenticated yet (IKE_SA_INIT
        answered at most): it proves nothing about the peer (RFC 7296 §2.6)."""
        return not self._core.ctx.is_initiator and self._core.state in (
            IkeState.INIT_WAIT,
            IkeState.AUTH_WAIT,
        )

    @property
    def last_heard(self) -> float:
        """When the peer last proved it is there: an authenticated message, or ESP
        reported with ``notice_inbound`` (the session's creation time until then)."""
        return self._core.last_inbound

    @property
    def finished(self) -> bool:
        """True once the session has nothing left to do: the daemon may forget it."""
        return self._core.finished

    @property
    def buriable(self) -> bool:
        """Closed, lingering only to answer retransmissions: :meth:`bury` may end it."""
        core = self._core
        return core.state is IkeState.CLOSED and core.linger_deadline is not None

    def bury(self) -> list[Tombstone]:
        """Invariant 8: end a closed, lingering session now and return what its IKE
        SAs would still have answered (:mod:`ike.tombstones`); ``finished`` after.
        Drain its events and datagrams first: the caller forgets the session."""
        core = self._core
        if not self.buriable:
            raise LocalError(f"only a closed, lingering session is buried (not {core.state.name})")
        assert core.linger_deadline is not None
        stones = []
        for sa in core.sas:
            cached = sa.tm.cached
            until = core.linger_deadline if sa is core.sas.current else sa.linger_until
            if cached is None or until is None:
                continue
            ctx = sa.ctx
            stones.append(
                Tombstone(
                    sa.local_spi,
                    ctx.spi_i,
                    ctx.spi_r,
                    cached.message_id,
                    cached.request,
                    cached.datagram,
                    cached.peer,
                    ctx.remote_addr,
                    until,
                )
            )
        core.linger_deadline, core.finished = None, True
        return stones

    @property
    def ike_algorithms(self) -> str | None:
        proposal = self._ctx.ike_proposal
        return None if proposal is None else str(proposal)

    @property
    def behind_nat(self) -> bool:
        """Whether the peer saw our address translated (NAT keepalives are ours to send)."""
        return self._ctx.behind_nat

    @property
    def remote_identity(self) -> str | None:
        identity = self._ctx.remote_identity
        return None if identity is None else str(identity)

    @property
    def children(self) -> tuple[ChildSa, ...]:
        return tuple(self._ctx.children.values())

    @property
    def rekeying(self) -> bool:
        """Whether a rekey of the IKE SA or of a Child SA is under way."""
        busy = (ChildStatus.REKEY_QUEUED, ChildStatus.REKEY_SENT)
        children = any(c.status in busy for c in self._ctx.children.values())
        ike = self._rekeying.ike_rekey is not None or self._core.sas.successor is not None
        return children or ike

    def matches(self, header: IkeHeader) -> bool:
        """Whether a datagram with this header belongs to this session.

        A retransmitted IKE_SA_INIT request (SPIr still 0) matches the
        responder session it created, so the daemon need not create another.
        """
        return self._core.sas.find(header) is not None

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-ready summary for the control socket (no key material)."""
        at = self._core.established_at
        lifetime = self._core.sas.current.lifetime
        return {
            "state": self._core.state.name.lower(),
            **self._ctx.summary(now),
            "established_for": None if at is None else round(now - at, 3),
            "rekey_in": None if lifetime is None else round(lifetime.rekey_at - now, 3),
            "expires_in": None if lifetime is None else round(lifetime.expire_at - now, 3),
            "rekeying": self.rekeying,
            "drops": self.drops,
        }

    def __repr__(self) -> str:
        role = "initiator" if self._ctx.is_initiator else "responder"
        return (
            f"<IkeSession {role} {self._core.state.name} "
            f"{self._ctx.spi_i.hex()}/{self._ctx.spi_r.hex()} peer={self._ctx.remote_addr}>"
        )
