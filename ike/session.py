"""IkeSession: one IKE SA with one peer, as a sans-I/O state machine.

Theory of operation
===================

The daemon feeds the session datagrams (``receive_datagram``) and timer
ticks (``handle_timer``), each with ``now``; the session answers with
datagrams (``datagrams_to_send``), events (``next_event``) and the time it
next wants a tick (``next_deadline``). It never reads a clock or touches a
socket; randomness comes from the injected entropy.

Layers, outermost first:

- this module: the IKE SA's state (:class:`~ike.states.IkeState`, moved
  along :data:`ike.states.TRANSITIONS`), dispatch of messages to tasks, and
  the error boundary;
- :mod:`ike.taskmanager`: message IDs, the window of one request, the
  retransmission timer and the cached response;
- :mod:`ike.exchanges`: one task per exchange concern, each with initiator
  (``build_i``/``process_i``) and responder (``process_r``/``build_r``)
  halves; they fill in :class:`ike.exchanges.context.SaContext`.

Invariants:

1. Only :meth:`IkeSession._transition` changes ``state``, and only along
   :data:`ike.states.TRANSITIONS`. An input missing from the table is the peer's
   protocol error for a message (answered INVALID_SYNTAX or dropped) and the
   caller's :class:`~ike.errors.LocalError` for a method call.
2. At most one request of ours is in flight; its retransmissions are the
   identical bytes (§2.1). A retransmitted request of the peer is answered
   with the identical cached response and never processed twice.
3. Nothing from the peer is acted upon before it is authenticated, except
   IKE_SA_INIT (which has no keys yet) and only within that exchange: a
   responder installs a Child SA only after the initiator's AUTH verified,
   an initiator only after the responder's.
4. PeerErrors become notifies in exactly two places, one per direction:
   :meth:`_answer` (our response to a request) and :meth:`_complete` (the
   outcome of our request). Any other exception is a bug and propagates.
5. Every session ends with exactly one IkeSaDown, preceded by a
   ChildSaDown for each Child SA still up. After it, ``finished`` becomes
   True once no retransmitted request can still need our cached answer.
6. Events are queued in causal order: IkeSaUp before the ChildSaUp of
   IKE_AUTH. A responder queues ChildSaUp *before* the response carrying
   its SPI is handed out, so the daemon (which drains events first)
   installs the inbound SA before the peer can use it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ike.constants import IKE_PORT, NAT_T_PORT, NON_ESP_MARKER, ExchangeType, NotifyType
from ike.entropy import Entropy
from ike.errors import InvalidKePayload, LocalError, ParseError, PeerError
from ike.events import Address, Event, IkeSaDown
from ike.exchanges.base import InitiatorTask, Outcome, Received, ResponderTask
from ike.exchanges.child_create import ChildCreateInitiator, ChildCreateResponder, RefuseCreateChild
from ike.exchanges.context import (
    ChildSa,
    RefusedByPeer,
    SaContext,
    decode_message,
    encode_message,
    exchange_name,
    notify,
)
from ike.exchanges.ike_auth import IkeAuthInitiator, IkeAuthResponder
from ike.exchanges.ike_init import IkeInitInitiator, IkeInitResponder
from ike.exchanges.informational import (
    DeleteChildTask,
    DeleteIkeTask,
    InformationalResponder,
    LivenessTask,
    NotifyErrorTask,
)
from ike.payloads import NotifyPayload, Payload
from ike.policy import HALF_OPEN_TIMEOUT
from ike.sessionconfig import SessionConfig
from ike.states import REQUEST_INPUT, RESPONSE_INPUT, IkeState, Input, allowed
from ike.taskmanager import Exchange, RequestKind, TaskManager, Timeout
from ike.wire import (
    IkeHeader,
    parse_header,
)

log = logging.getLogger("tunneld.ike")

Datagram = tuple[bytes, Address, Address]  # (IKE message, our address, peer's address)


def strip_non_esp_marker(data: bytes) -> bytes:
    """Remove the RFC 3948 §2.2 marker if present (an IKE SPIi is never zero, §3.1)."""
    return data[len(NON_ESP_MARKER) :] if data[: len(NON_ESP_MARKER)] == NON_ESP_MARKER else data


def peek_header(data: bytes) -> IkeHeader:
    """The IKE header of a datagram, for routing; ParseError if it is not IKE."""
    return parse_header(strip_non_esp_marker(bytes(data)))


class IkeSession:
    """One IKE SA (and its Child SAs) with one peer. See the module docstring.

    The daemon's loop, per input: call ``receive_datagram`` or
    ``handle_timer``; drain ``next_event()`` (install/remove SAs) *before*
    sending ``datagrams_to_send()``; sleep until ``next_deadline()``; drop
    the session once ``finished``.
    """

    def __init__(self, ctx: SaContext, state: IkeState, now: float) -> None:
        self._ctx = ctx
        self._state = state
        self._tm = TaskManager(ctx.config.retransmit)
        self._outbox: list[Datagram] = []
        self._half_open_deadline = None if ctx.is_initiator else now + HALF_OPEN_TIMEOUT
        self._linger_deadline: float | None = None
        self._finished = False
        self._close_reason: tuple[str, NotifyType | None] = ("closed locally", None)
        self._established_at: float | None = None
        self.drops: Counter[str] = Counter()

    @classmethod
    def initiator(
        cls,
        config: SessionConfig,
        entropy: Entropy,
        now: float,
        local_addr: Address,
        remote_addr: Address,
    ) -> IkeSession:
        """A session that will start an IKE SA with ``initiate``."""
        ctx = SaContext((config,), entropy, True, local_addr, remote_addr)
        return cls(ctx, IkeState.IDLE, now)

    @classmethod
    def responder(
        cls,
        config: SessionConfig | Sequence[SessionConfig],
        entropy: Entropy,
        now: float,
        local_addr: Address,
        remote_addr: Address,
    ) -> IkeSession:
        """A session for an IKE_SA_INIT request (SPIr = 0) about to be delivered.

        With several candidate configurations the IKE_SA_INIT offer is matched
        against all of their IKE proposals and IKE_AUTH picks the first whose
        remote identity and method fit. ``local_spi`` is known at once.
        """
        configs = (config,) if isinstance(config, SessionConfig) else tuple(config)
        if not configs:
            raise LocalError("a responder needs at least one configuration")
        ctx = SaContext(configs, entropy, False, local_addr, remote_addr)
        ctx.spi_r = ctx.random_ike_spi()
        return cls(ctx, IkeState.INIT_WAIT, now)

    # -- the sans-I/O interface --------------------------------------------

    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT (initiator only, once)."""
        self._require(Input.INITIATE)
        exchange = Exchange(ExchangeType.IKE_SA_INIT, [IkeInitInitiator(self._ctx)])
        self._tm.enqueue(exchange)
        self._transition(Input.INITIATE, IkeState.INIT_SENT)
        self._pump(now)

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        """One UDP payload from ``src`` (the peer) to ``dst`` (us); a marker is tolerated."""
        if self._state is IkeState.CLOSED and self._linger_deadline is None:
            self._drop("session closed")
            return
        message = strip_non_esp_marker(bytes(data))
        try:
            header = parse_header(message)
        except ParseError as err:
            self._drop(f"malformed header: {err}")
            return
        if not self.matches(header):
            self._drop("not for this IKE SA")
        elif header.is_response:
            self._on_response(header, message, src, dst, now)
        else:
            self._on_request(header, message, src, dst, now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        """Act on every deadline at or before ``now``."""
        if self._linger_deadline is not None and now >= self._linger_deadline:
            self._linger_deadline, self._finished = None, True
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._half_open_deadline = None
            if allowed(self._state, Input.HALF_OPEN_EXPIRED):
                self._go_down(Input.HALF_OPEN_EXPIRED, "half-open IKE SA timed out", None, now)
        due = self._tm.due(now)
        if due is Timeout.RETRANSMIT:
            flight = self._tm.retransmit(now)
            self._outbox.append((flight.datagram, flight.src, flight.dst))
        elif due is Timeout.EXHAUSTED and self._tm.in_flight is not None:
            flight = self._tm.in_flight
            reason = (
                f"peer unreachable: no response to {flight.exchange.exchange_type.name} "
                f"after {flight.attempt + 1} transmissions"
            )
            self._go_down(Input.TIMEOUT, reason, None, now)
        self._pump(now)

    def next_deadline(self) -> float | None:
        deadlines = (self._tm.deadline, self._half_open_deadline, self._linger_deadline)
        return min((d for d in deadlines if d is not None), default=None)

    def datagrams_to_send(self) -> list[Datagram]:
        """IKE messages to send: (bytes, our address, peer's address).

        The bytes are the IKE message; the transport adds the non-ESP marker
        when the source port is the NAT-T port (RFC 3948 §2.2).
        """
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._ctx.events.popleft() if self._ctx.events else None

    def close(self, now: float) -> None:
        """Delete the IKE SA and with it every Child SA (§1.4.1); idempotent."""
        state = self._state
        if state in (IkeState.DELETING, IkeState.CLOSED):
            self._transition(Input.CLOSE, state)
        elif state is IkeState.ESTABLISHED:
            self._close_reason = ("closed locally", None)
            delete = Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()])
            self._tm.enqueue(delete, first=True)
            self._transition(Input.CLOSE, IkeState.DELETING)
            self._pump(now)
        else:
            self._go_down(Input.CLOSE, "closed locally before establishment", None, now)

    def delete_child(self, inbound_spi: int, now: float) -> None:
        """Delete one Child SA (§1.4.1); ChildSaDown follows when the peer answers."""
        if self._state is not IkeState.ESTABLISHED or inbound_spi not in self._ctx.children:
            raise LocalError(f"no established Child SA with inbound SPI {inbound_spi:08x}")
        self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [DeleteChildTask(inbound_spi)]))
        self._pump(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request (§1.4); no answer at all ends the IKE SA."""
        if self._state is not IkeState.ESTABLISHED:
            raise LocalError(f"liveness check in state {self._state.name}")
        self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [LivenessTask()]))
        self._pump(now)

    # -- status (never keys) -------------------------------------------------

    @property
    def state(self) -> IkeState:
        return self._state

    @property
    def is_initiator(self) -> bool:
        return self._ctx.is_initiator

    @property
    def spi_i(self) -> bytes:
        return self._ctx.spi_i

    @property
    def spi_r(self) -> bytes:
        return self._ctx.spi_r

    @property
    def local_spi(self) -> bytes:
        """Our IKE SPI (the daemon's routing key); known from creation for a responder."""
        return self._ctx.local_spi

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
        return self._state in (IkeState.ESTABLISHED, IkeState.DELETING)

    @property
    def finished(self) -> bool:
        """True once the session has nothing left to do: the daemon may forget it."""
        return self._finished

    @property
    def ike_algorithms(self) -> str | None:
        proposal = self._ctx.ike_proposal
        return None if proposal is None else str(proposal)

    @property
    def remote_identity(self) -> str | None:
        identity = self._ctx.remote_identity
        return None if identity is None else str(identity)

    @property
    def children(self) -> tuple[ChildSa, ...]:
        return tuple(self._ctx.children.values())

    def matches(self, header: IkeHeader) -> bool:
        """Whether a datagram with this header belongs to this IKE SA.

        A retransmitted IKE_SA_INIT request (SPIr still 0) matches the
        responder session it created, so the daemon need not create another.
        """
        return self._ctx.matches(header)

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-ready summary for the control socket (no key material)."""
        at = self._established_at
        return {
            "state": self._state.name.lower(),
            **self._ctx.summary(),
            "established_for": None if at is None else round(now - at, 3),
            "drops": dict(self.drops),
        }

    def __repr__(self) -> str:
        role = "initiator" if self._ctx.is_initiator else "responder"
        return (
            f"<IkeSession {role} {self._state.name} "
            f"{self._ctx.spi_i.hex()}/{self._ctx.spi_r.hex()} peer={self._ctx.remote_addr}>"
        )

    # -- requests from the peer ----------------------------------------------

    def _on_request(
        self, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        kind = self._tm.classify(header.message_id)
        late_init = header.exchange_type == ExchangeType.IKE_SA_INIT and (
            self._state is not IkeState.INIT_WAIT
        )
        if kind is RequestKind.OUT_OF_WINDOW:
            self._drop(f"request with message ID {header.message_id} out of window")
        elif kind is RequestKind.RETRANSMIT:
            cached = self._tm.cached
            if cached is not None and cached.request == data:  # §2.1: answer from the cache
                self._outbox.append((cached.datagram, dst, src))
            else:
                self._drop("a different request under an answered message ID")
        elif self._state is IkeState.CLOSED:
            self._drop("new request after the IKE SA was closed")
        elif late_init:  # unauthenticated: it must not move the window of an existing SA
            self._drop("IKE_SA_INIT request for an existing IKE SA")
        else:
            self._answer(header, data, src, dst, now)

    def _answer(
        self, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        """Process a new request and send the response: the responder's error boundary."""
        inp = REQUEST_INPUT.get(header.exchange_type)
        expected = inp is not None and bool(allowed(self._state, inp))
        tasks: list[ResponderTask] = []
        payloads: list[Payload] = []
        try:
            # Authenticate first (invariant 3): a forged message must not move the window.
            received = Received(decode_message(self._ctx, header, data), src, dst, now)
            if inp is None or not expected:
                raise self._unexpected(header)
            self._adopt_path(header, src, dst)
            tasks = self._responder_tasks(inp)
            failures: dict[int, PeerError] = {}
            for i, task in enumerate(tasks):
                try:
                    task.process_r(self._ctx, received)
                except PeerError as err:
                    if task.critical:
                        raise
                    failures[i] = err  # §1.2: only this Child SA fails
            for i, task in enumerate(tasks):
                payloads += (
                    [_error_notify(failures[i])] if i in failures else task.build_r(self._ctx)
                )
        except PeerError as err:
            if err.notify is None:  # e.g. a forged SK payload: drop silently (§2.21.2)
                self._drop(f"{type(err).__name__}: {err}")
                return
            log.info("refusing %s: %s", exchange_name(header.exchange_type), err)
            stateless = inp is Input.IKE_SA_INIT_REQUEST
            self._respond(header, [_error_notify(err)], src, dst, data, stateless=stateless)
            if expected and inp is not None:
                self._request_failed(inp, err, now)
            return
        self._respond(header, payloads, src, dst, data)
        if inp is not None:
            self._request_done(inp, tasks, now)

    def _unexpected(self, header: IkeHeader) -> PeerError:
        name = exchange_name(header.exchange_type)
        return PeerError(
            f"unexpected {name} request in state {self._state.name}", NotifyType.INVALID_SYNTAX
        )

    def _respond(
        self,
        header: IkeHeader,
        payloads: list[Payload],
        src: Address,
        dst: Address,
        request: bytes,
        *,
        stateless: bool = False,
    ) -> None:
        datagram = encode_message(
            self._ctx, header.exchange_type, header.message_id, payloads, True, stateless
        )
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not stateless:
            self._ctx.init_response = datagram  # signed by our AUTH (§2.15)
        self._tm.answered(header.message_id, request, datagram)
        self._outbox.append((datagram, dst, src))

    def _responder_tasks(self, inp: Input) -> list[ResponderTask]:
        if inp is Input.IKE_SA_INIT_REQUEST:
            return [IkeInitResponder()]
        if inp is Input.IKE_AUTH_REQUEST:
            return [IkeAuthResponder(), ChildCreateResponder()]
        if inp is Input.CREATE_CHILD_SA_REQUEST:
            return [RefuseCreateChild()]
        return [InformationalResponder()]

    def _request_done(self, inp: Input, tasks: list[ResponderTask], now: float) -> None:
        if inp is Input.IKE_SA_INIT_REQUEST:
            self._transition(inp, IkeState.AUTH_WAIT)
        elif inp is Input.IKE_AUTH_REQUEST:
            self._half_open_deadline, self._established_at = None, now
            self._transition(inp, IkeState.ESTABLISHED)
        elif inp is Input.INFORMATIONAL_REQUEST and isinstance(tasks[0], InformationalResponder):
            info = tasks[0]
            if info.ike_deleted:
                self._go_down(inp, "deleted by peer", None, now, linger=True)
            elif info.fatal_notify is not None:
                reason = f"peer reported {info.fatal_notify.name}"
                self._go_down(inp, reason, info.fatal_notify, now, linger=True)
            else:
                self._transition(inp, self._state)
        else:
            self._transition(inp, self._state)

    def _request_failed(self, inp: Input, err: PeerError, now: float) -> None:
        if inp is Input.IKE_SA_INIT_REQUEST:  # stateless refusal: nothing to linger for
            self._go_down(inp, f"refused IKE_SA_INIT: {err}", err.notify, now)
        elif inp is Input.IKE_AUTH_REQUEST:
            self._go_down(inp, f"IKE_AUTH failed: {err}", err.notify, now, linger=True)
        else:
            self._transition(inp, self._state)

    # -- responses to our requests ---------------------------------------------

    def _on_response(
        self, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        if not self._tm.is_response_to_in_flight(header.message_id, header.exchange_type):
            self._drop(f"response with unexpected message ID {header.message_id}")
            return
        try:
            message = decode_message(self._ctx, header, data)
        except PeerError as err:  # unauthenticated or garbled: keep waiting (§2.21)
            self._drop(f"{type(err).__name__} in response: {err}")
            return
        if header.exchange_type != ExchangeType.IKE_SA_INIT:
            self._adopt_path(header, src, dst)
        self._complete(Received(message, src, dst, now))

    def _complete(self, response: Received) -> None:
        """Process the response to our request: the initiator's error boundary."""
        flight = self._tm.in_flight
        if flight is None:
            raise LocalError("response without a request in flight")
        exchange, now = flight.exchange, response.now
        inp = RESPONSE_INPUT[exchange.exchange_type]
        child_failure: PeerError | None = None
        try:
            for task in exchange.tasks:
                try:
                    if task.process_i(self._ctx, response) is Outcome.RETRY:
                        self._retry(inp, exchange, now)
                        return
                except PeerError as err:
                    if task.critical:
                        raise
                    child_failure = err
        except PeerError as err:
            self._tm.complete()
            self._exchange_failed(inp, err, now)
            return
        self._tm.complete()
        self._exchange_done(inp, exchange, child_failure, now)

    def _retry(self, inp: Input, exchange: Exchange, now: float) -> None:
        """IKE_SA_INIT again, same message ID 0, after INVALID_KE_PAYLOAD or COOKIE."""
        ctx = self._ctx
        payloads = [p for task in exchange.tasks for p in task.build_i(ctx)]
        datagram = encode_message(self._ctx, exchange.exchange_type, 0, payloads, False)
        ctx.init_request = datagram
        self._tm.resend_same_id(datagram, ctx.local_addr, ctx.remote_addr, now)
        self._outbox.append((datagram, ctx.local_addr, ctx.remote_addr))
        self._transition(inp, self._state)

    def _exchange_done(
        self, inp: Input, exchange: Exchange, child_failure: PeerError | None, now: float
    ) -> None:
        if inp is Input.IKE_SA_INIT_RESPONSE:
            self._move_to_nat_t()
            auth = Exchange(ExchangeType.IKE_AUTH, [IkeAuthInitiator(), ChildCreateInitiator()])
            self._tm.enqueue(auth, first=True)
            self._transition(inp, IkeState.AUTH_SENT)
        elif inp is Input.IKE_AUTH_RESPONSE:
            self._established_at = now
            if child_failure is None:
                self._transition(inp, IkeState.ESTABLISHED)
                return
            # §1.2 keeps the IKE SA, but a gateway's IKE SA without its Child SA
            # carries no traffic: delete it and say why.
            self._close_reason = (f"Child SA failed: {child_failure}", child_failure.notify)
            delete = Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()])
            self._tm.enqueue(delete, first=True)
            self._transition(inp, IkeState.DELETING)
        elif any(isinstance(t, DeleteIkeTask) for t in exchange.tasks):
            reason, notify_type = self._close_reason
            self._go_down(inp, reason, notify_type, now)
        else:
            self._transition(inp, self._state)

    def _exchange_failed(self, inp: Input, err: PeerError, now: float) -> None:
        reported = isinstance(err, RefusedByPeer) or err.notify is None
        if inp is Input.IKE_AUTH_RESPONSE and not reported and err.notify is not None:
            self._send_once(NotifyErrorTask(err.notify), now)  # §2.21.2: tell the responder
        if inp in (Input.IKE_SA_INIT_RESPONSE, Input.IKE_AUTH_RESPONSE):
            name = "IKE_SA_INIT" if inp is Input.IKE_SA_INIT_RESPONSE else "IKE_AUTH"
            self._go_down(inp, f"{name} failed: {err}", err.notify, now)
        else:
            log.info("%s failed: %s", inp.name, err)
            self._transition(inp, self._state)

    # -- sending ---------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Start queued exchanges while the window is free (taskmanager rule 1)."""
        if self._state is IkeState.CLOSED:
            return
        ctx = self._ctx
        while (exchange := self._tm.next_exchange()) is not None:
            payloads = [p for task in exchange.tasks for p in task.build_i(ctx)]
            datagram = encode_message(
                self._ctx, exchange.exchange_type, self._tm.peek_next_id(), payloads, False
            )
            if exchange.exchange_type == ExchangeType.IKE_SA_INIT:
                ctx.init_request = datagram  # signed by our AUTH (§2.15)
            self._tm.send(exchange, datagram, ctx.local_addr, ctx.remote_addr, now)
            self._outbox.append((datagram, ctx.local_addr, ctx.remote_addr))

    def _send_once(self, task: InitiatorTask, now: float) -> None:
        """A request we send without waiting for (or retransmitting) its answer."""
        self._tm.enqueue(Exchange(ExchangeType.INFORMATIONAL, [task], retransmit=False), first=True)
        self._pump(now)

    def _adopt_path(self, header: IkeHeader, src: Address, dst: Address) -> None:
        """Follow the peer's address (§2.23: from authenticated messages, behind NAT)."""
        ctx = self._ctx
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
    ) -> None:
        """Invariant 5: Child SAs down, then the IKE SA, exactly once."""
        self._transition(inp, IkeState.CLOSED)
        self._tm.abandon()
        self._half_open_deadline = None
        self._ctx.drop_all_children(reason)
        self._ctx.emit(IkeSaDown(reason, notify_type))
        log.info("IKE SA %s down: %s", self._ctx.spi_i.hex(), reason)
        if linger and self._tm.cached is not None:
            # Answer retransmissions of the last request until the peer gives up.
            self._linger_deadline = now + self._ctx.config.retransmit.total
        else:
            self._finished = True

    def _drop(self, why: str) -> None:
        self.drops[why.split(":")[0]] += 1
        log.debug("IKE SA %s: dropped datagram: %s", self._ctx.spi_i.hex(), why)


def _error_notify(err: PeerError) -> NotifyPayload:
    """The notify that reports ``err`` to the peer (INVALID_KE_PAYLOAD carries the group)."""
    if err.notify is None:
        raise LocalError("a silent error has no notify")
    data = err.wanted_group.to_bytes(2, "big") if isinstance(err, InvalidKePayload) else b""
    return notify(err.notify, data)
