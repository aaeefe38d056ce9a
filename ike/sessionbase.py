"""The foundation of :class:`ike.session.IkeSession`: state, IKE SAs, sending, ending.

The session is built in layers, each a class deriving from the one before:

1. :class:`SessionBase` (here): the state (``IkeState``, moved only along
   :data:`ike.states.TRANSITIONS`), the IKE SAs the session holds (current,
   successor, retiring; :mod:`ike.ikesa`), starting queued exchanges, and
   going down exactly once;
2. :class:`ike.rekeying.RekeyingSession`: lifetimes, rekeys of Child SAs
   and of the IKE SA, collisions, liveness checks;
3. :class:`ike.dispatch.DispatchingSession`: requests and responses, the
   error boundary of each direction;
4. :class:`ike.session.IkeSession`: the public interface.
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
from ike.ikesa import Datagram, IkeSa
from ike.payloads import NotifyPayload
from ike.policy import HALF_OPEN_TIMEOUT
from ike.states import IkeState, Input, allowed
from ike.taskmanager import Exchange, TaskManager
from ike.wire import IkeHeader

log = logging.getLogger("tunneld.ike")


class SessionBase:
    """State, IKE SAs and the outbox of one session (layer 1, see the module docstring)."""

    def __init__(self, ctx: SaContext, state: IkeState, now: float) -> None:
        self._sa = IkeSa.of(ctx)
        self._successor: IkeSa | None = None
        self._retiring: list[IkeSa] = []
        self._state = state
        self._outbox: list[Datagram] = []
        self._half_open_deadline = None if ctx.is_initiator else now + HALF_OPEN_TIMEOUT
        self._linger_deadline: float | None = None
        self._finished = False
        self._close_reason: tuple[str, NotifyType | None] = ("closed locally", None)
        self._established_at: float | None = None
        self._last_inbound = now
        self.drops: Counter[str] = Counter()
        # §2.4: asked when IKE_AUTH is built; the daemon answers whether we hold no
        # other IKE SA with this peer (established or being set up)
        self._initial_contact: Callable[[], bool] = _always

    @property
    def _ctx(self) -> SaContext:
        """The current IKE SA's context (the one new exchanges use)."""
        return self._sa.ctx

    @property
    def _tm(self) -> TaskManager:
        return self._sa.tm

    def _all_sas(self) -> list[IkeSa]:
        successor = [self._successor] if self._successor is not None else []
        return [self._sa, *successor, *self._retiring]

    def _sa_for(self, header: IkeHeader) -> IkeSa | None:
        return next((sa for sa in self._all_sas() if sa.matches(header)), None)

    def _emit(self, event: Event) -> None:
        self._ctx.emit(event)

    # -- sending ---------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Start queued exchanges on every IKE SA whose window is free (taskmanager rule 1)."""
        if self._state is IkeState.CLOSED:
            return
        for sa in [self._sa, *self._retiring]:
            self._pump_sa(sa, now)

    def _pump_sa(self, sa: IkeSa, now: float) -> None:
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
            self._outbox.append((datagram, ctx.local_addr, ctx.remote_addr))

    def _send_once(self, task: InitiatorTask, now: float, sa: IkeSa | None = None) -> None:
        """A request we send without waiting for (or retransmitting) its answer."""
        target = sa or self._sa
        exchange = Exchange(ExchangeType.INFORMATIONAL, [task], retransmit=False)
        target.tm.enqueue(exchange, first=True)
        self._pump_sa(target, now)

    def _adopt_path(self, sa: IkeSa, header: IkeHeader, src: Address, dst: Address) -> None:
        """Follow the peer's address (§2.23: from authenticated messages, behind NAT)."""
        ctx = sa.ctx
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not ctx.is_initiator:
            ctx.spi_i, ctx.local_addr, ctx.remote_addr = header.spi_i, dst, src
        elif ctx.nat_t:
            ctx.local_addr, ctx.remote_addr = dst, src

    def _move_to_nat_t(self) -> None:
        """§2.23: after IKE_SA_INIT, with NAT (real or forced), IKE moves to UDP 4500."""
        ctx = self._ctx
        if not ctx.nat_t:
            return
        if ctx.local_addr[1] == IKE_PORT:
            ctx.local_addr = (ctx.local_addr[0], NAT_T_PORT)
        if ctx.remote_addr[1] == IKE_PORT:
            ctx.remote_addr = (ctx.remote_addr[0], NAT_T_PORT)

    def _start_close(self, reason: str, notify_type: NotifyType | None, now: float) -> None:
        """Delete the IKE SA (§1.4.1); IkeSaDown follows when the peer answers.

        A successor we negotiated as rekey responder is deleted as well (once,
        unanswered): the peer may already be using it.
        """
        self._close_reason = (reason, notify_type)
        self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()]), first=True)
        self._transition(Input.CLOSE, IkeState.DELETING)
        if self._successor is not None:
            self._send_once(DeleteIkeTask(), now, self._successor)
        self._pump(now)

    # -- state -------------------------------------------------------------------

    def _transition(self, inp: Input, target: IkeState) -> None:
        """The only place ``_state`` changes (invariant 1)."""
        if target not in allowed(self._state, inp):
            raise LocalError(f"bug: {self._state.name} --{inp.name}--> {target.name} not allowed")
        self._state = target

    def _require(self, inp: Input) -> None:
        if not allowed(self._state, inp):
            raise LocalError(f"{inp.name.lower()} is not possible in state {self._state.name}")

    def _go_down(
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
        self._transition(inp, IkeState.CLOSED)
        self._tm.abandon()
        for sa in [*self._retiring, *([self._successor] if self._successor else [])]:
            sa.tm.abandon()
        self._retiring.clear()
        self._successor = None
        self._half_open_deadline = None
        self._ctx.drop_all_children(reason)
        self._emit(IkeSaDown(reason, notify_type, peer_dead))
        log.info("IKE SA %s down: %s", self._ctx.spi_i.hex(), reason)
        if linger and self._tm.cached is not None:
            # Answer retransmissions of the last request until the peer gives up.
            self._linger_deadline = now + self._ctx.config.retransmit.total
        else:
            self._finished = True

    def _drop(self, why: str) -> None:
        self.drops[why.split(":")[0]] += 1
        log.debug("IKE SA %s: dropped datagram: %s", self._ctx.spi_i.hex(), why)


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
