"""The session's own state: one object that every part of the session shares.

:class:`SessionCore` holds what the parts of an :class:`ike.session.IkeSession`
must agree on, and nothing else:

- the state (:class:`~ike.states.IkeState`), moved only by :meth:`fire`
  along :data:`ike.states.TRANSITIONS` (invariant 1 of :mod:`ike.session`);
- the IKE SAs (:class:`ike.ikesa.IkeSas`: current, successor, retiring);
- the outbox of datagrams, the session's own timers (half-open, linger),
  when it was established and last heard from, its drop counters;
- the two ways of ending: :meth:`start_close` (DELETE, then down when
  answered) and :meth:`go_down` (down now, exactly once, invariant 5).

The parts that use it are objects of their own, not layers:
:class:`ike.rekeying.Rekeying` (lifetimes, rekeys, liveness, task
follow-ups) and :class:`ike.dispatch.Dispatcher` (requests and responses).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ike.constants import IKE_PORT, NAT_T_PORT, ExchangeType, NotifyType, ProtocolId
from ike.errors import InvalidKePayload, LocalError, PeerError
from ike.events import Address, Event, IkeSaDown
from ike.exchanges.base import InitiatorTask
from ike.exchanges.child_rekey import ChildSaNotFound
from ike.exchanges.context import SaContext, encode_message, notify
from ike.exchanges.informational import DeleteIkeTask
from ike.ikesa import Datagram, IkeSa, IkeSas
from ike.payloads import NotifyPayload
from ike.policy import HALF_OPEN_TIMEOUT
from ike.states import IkeState, Input, next_state
from ike.taskmanager import Exchange, TaskManager
from ike.wire import IkeHeader

log = logging.getLogger("tunneld.ike")

# Drop reasons are a fixed set: the counters never grow with what a peer sends.
DROP_REASONS = (
    "session closed",
    "malformed header",
    "not for this IKE SA",
    "request out of window",
    "different request under an answered message ID",
    "request after the IKE SA was closed",
    "IKE_SA_INIT request for an existing IKE SA",
    "unauthenticated or malformed request",
    "response with unexpected message ID",
    "unauthenticated or malformed response",
    "retransmitted request from another address",
    "IKE_SA_INIT response from another address",
    "IKE_SA_INIT error response (unauthenticated)",
    "COOKIE already answered",
)


class SessionCore:
    """State, IKE SAs, outbox and ending of one session (see the module docstring)."""

    def __init__(self, ctx: SaContext, state: IkeState, now: float) -> None:
        self.sas = IkeSas(IkeSa.of(ctx))
        self.state = state
        self.outbox: list[Datagram] = []
        self.half_open_deadline = None if ctx.is_initiator else now + HALF_OPEN_TIMEOUT
        self.linger_deadline: float | None = None
        self.finished = False
        self.close_reason: tuple[str, NotifyType | None] = ("closed locally", None)
        self.established_at: float | None = None
        self.last_inbound = now
        # §2.21.1: the first error seen in an IKE_SA_INIT response, and until when
        # we keep waiting for a valid one
        self.init_error: PeerError | None = None
        self.init_error_deadline: float | None = None
        self.drops: Counter[str] = Counter()
        # §2.4: asked when IKE_AUTH is built; the daemon answers whether we hold no
        # other IKE SA with this peer (established or being set up)
        self.initial_contact: Callable[[], bool] = _always

    @property
    def ctx(self) -> SaContext:
        """The current IKE SA's context (the one new exchanges use)."""
        return self.sas.current.ctx

    @property
    def tm(self) -> TaskManager:
        return self.sas.current.tm

    def emit(self, event: Event) -> None:
        self.ctx.emit(event)

    # -- state -------------------------------------------------------------------

    def fire(self, inp: Input) -> IkeState:
        """The only place ``state`` changes (invariant 1): the table decides."""
        self.state = next_state(self.state, inp)
        return self.state

    def drop(self, reason: str, detail: str = "") -> None:
        """Count a dropped datagram under one of :data:`DROP_REASONS`."""
        if reason not in DROP_REASONS:
            raise LocalError(f"bug: unknown drop reason {reason!r}")
        self.drops[reason] += 1
        log.debug("IKE SA %s: dropped datagram: %s %s", self.ctx.spi_i.hex(), reason, detail)

    # -- sending -----------------------------------------------------------------

    def pump(self, now: float) -> None:
        """Start queued exchanges on every IKE SA whose window is free (taskmanager rule 1)."""
        if self.state is IkeState.CLOSED:
            return
        for sa in self.sas.sending():
            self.pump_sa(sa, now)

    def pump_sa(self, sa: IkeSa, now: float) -> None:
        ctx, tm = sa.ctx, sa.tm
        while (exchange := tm.next_exchange()) is not None:
            if exchange.wanted is not None and not exchange.wanted(ctx):
                log.debug("dropping moot %s before sending", exchange.name)
                continue
            payloads = [p for task in exchange.tasks for p in task.build_i(ctx)]
            datagram = encode_message(
                ctx, exchange.exchange_type, tm.peek_next_id(), payloads, False
            )
            if exchange.exchange_type == ExchangeType.IKE_SA_INIT:
                ctx.init_request = datagram  # signed by our AUTH (§2.15)
            tm.send(exchange, datagram, ctx.local_addr, ctx.remote_addr, now)
            self.outbox.append((datagram, ctx.local_addr, ctx.remote_addr))

    def send_once(self, task: InitiatorTask, now: float, sa: IkeSa | None = None) -> None:
        """A request we send without waiting for (or retransmitting) its answer."""
        target = sa or self.sas.current
        exchange = Exchange(ExchangeType.INFORMATIONAL, [task], retransmit=False)
        target.tm.enqueue(exchange, first=True)
        self.pump_sa(target, now)

    def adopt_path(self, sa: IkeSa, header: IkeHeader, src: Address, dst: Address) -> None:
        """Follow the peer's address (§2.23: from authenticated messages, behind NAT).

        Called only for an authenticated message that is the newest of its
        direction (the next request, or the response to ours); every IKE SA of
        the session follows, so that the daemon moves the Child SAs once."""
        ctx = sa.ctx
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not ctx.is_initiator:
            ctx.spi_i, ctx.local_addr, ctx.remote_addr = header.spi_i, dst, src
        elif ctx.nat_t:
            ctx.local_addr = dst
            self.move_path(src)

    def move_path(self, remote: Address) -> bool:
        """§2.23: the peer's authenticated traffic (IKE or ESP) now comes from ``remote``.

        Every IKE SA of the session sends there from now on, retransmissions of a
        request in flight included (not IKE_SA_INIT's: its answer must come from
        where it went, §2.21.1). Only with NAT traversal (real or forced, which
        is tunneld's default); True if an address changed."""
        if not self.ctx.nat_t or self.state is IkeState.CLOSED:
            return False
        moved = False
        for sa in self.sas:
            if sa.ctx.remote_addr != remote:
                sa.ctx.remote_addr, moved = remote, True
            flight = sa.tm.in_flight
            if flight is not None and flight.exchange.exchange_type != ExchangeType.IKE_SA_INIT:
                flight.dst = remote
        return moved

    def move_to_nat_t(self) -> None:
        """§2.23: after IKE_SA_INIT, with NAT (real or forced), IKE moves to UDP 4500."""
        ctx = self.ctx
        if not ctx.nat_t:
            return
        if ctx.local_addr[1] == IKE_PORT:
            ctx.local_addr = (ctx.local_addr[0], NAT_T_PORT)
        if ctx.remote_addr[1] == IKE_PORT:
            ctx.remote_addr = (ctx.remote_addr[0], NAT_T_PORT)

    # -- ending --------------------------------------------------------------------

    def start_close(self, reason: str, notify_type: NotifyType | None, now: float) -> None:
        """Delete the IKE SA (§1.4.1); IkeSaDown follows when the peer answers.

        A successor we negotiated as rekey responder is deleted as well (once,
        unanswered): the peer may already be using it.
        """
        self.close_reason = (reason, notify_type)
        self.tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()]), first=True)
        self.fire(Input.CLOSE)
        if self.sas.successor is not None:
            self.send_once(DeleteIkeTask(), now, self.sas.successor)
        self.pump(now)

    def go_down(
        self,
        inp: Input,
        reason: str,
        notify_type: NotifyType | None,
        now: float,
        *,
        linger: bool = False,
        peer_dead: bool = False,
    ) -> None:
        """Invariant 5: Child SAs down, then the IKE SA, exactly once."""
        if self.fire(inp) is not IkeState.CLOSED:
            raise LocalError(f"bug: {inp.name} does not end the session")
        self.tm.abandon()
        self.sas.drop_others()
        self.half_open_deadline = self.init_error_deadline = None
        self.ctx.drop_all_children(reason)
        self.emit(IkeSaDown(reason, notify_type, peer_dead))
        # A responder that never got an authenticated IKE_AUTH may be anyone's spoof:
        # its end is the daemon's to count, not a log line per datagram.
        level = logging.INFO if self.ctx.is_initiator or self.established_at else logging.DEBUG
        log.log(level, "IKE SA %s down: %s", self.ctx.spi_i.hex(), reason)
        if linger and self.tm.cached is not None:
            # Answer retransmissions of the last request until the peer gives up
            # (with the keys shed once this input is done: shed_lingering).
            self.linger_deadline = now + self.ctx.config.retransmit.total
        else:
            self.finished = True

    def shed_lingering(self) -> bool:
        """After each input: lingering IKE SAs keep only their cache (ike.ikesa rule 4).

        A closed session that lingers (``linger_deadline``) sheds its current SA too,
        and what it held for the peer (the INITIAL_CONTACT question, an IKE_SA_INIT
        error); True then, once, so that the session drops its rekey state as well.
        The events its ending queued stay (the context keeps the queue)."""
        closed = self.state is IkeState.CLOSED and self.linger_deadline is not None
        if not self.sas.shed_lingering(closed=closed):
            return False
        self.initial_contact, self.init_error = _always, None
        return True


def error_notify(err: PeerError) -> NotifyPayload:
    """The notify that reports ``err`` to the peer.

    INVALID_KE_PAYLOAD carries the group we want (§1.2); CHILD_SA_NOT_FOUND
    the SPI copied from the REKEY_SA notify (§2.25).
    """
    if err.notify is None:
        raise LocalError("a silent error has no notify")
    if isinstance(err, ChildSaNotFound):
        return NotifyPayload(err.notify, protocol=ProtocolId.ESP, spi=err.spi)
    data = err.wanted_group.to_bytes(2, "big") if isinstance(err, InvalidKePayload) else b""
    return notify(err.notify, data)


def _always() -> bool:
    return True
