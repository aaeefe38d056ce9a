"""Layer 3 of the session: requests and responses, on whichever IKE SA they name.

A datagram is routed to the IKE SA whose SPIs it carries (:mod:`ike.ikesa`):

- the *current* SA: requests are judged by :data:`ike.states.TRANSITIONS`
  and answered by the responder tasks; responses complete our request;
- the *successor* (the new SA of a peer's rekey we answered): a request on
  it means the peer uses it, so it becomes current first, unless the
  request deletes it (its creator lost a simultaneous rekey, §2.8.2);
- a *retiring* SA: DELETE and other INFORMATIONAL requests are answered,
  CREATE_CHILD_SA gets TEMPORARY_FAILURE (§2.25); a deleted SA lingers only
  to replay its cached response.

PeerErrors become notifies in exactly two places: :meth:`_answer` (our
response to a request) and :meth:`_complete` (the outcome of our request).
"""

from __future__ import annotations

import logging

from ike.constants import ExchangeType, NotifyType, ProtocolId
from ike.errors import LocalError, PeerError
from ike.events import Address
from ike.exchanges.base import Outcome, Received, ResponderTask
from ike.exchanges.child_create import ChildCreateInitiator, ChildCreateResponder
from ike.exchanges.context import RefusedByPeer, decode_message, encode_message, exchange_name
from ike.exchanges.ike_auth import IkeAuthInitiator, IkeAuthResponder
from ike.exchanges.ike_init import IkeInitResponder
from ike.exchanges.ike_rekey import IkeRekeyResponder
from ike.exchanges.informational import (
    DeleteIkeTask,
    InformationalResponder,
    LivenessTask,
    NotifyErrorTask,
)
from ike.ikesa import IkeSa
from ike.payloads import DeletePayload, Payload
from ike.rekeying import RekeyingSession
from ike.sessionbase import error_notify
from ike.states import REQUEST_INPUT, RESPONSE_INPUT, IkeState, Input, allowed
from ike.taskmanager import Exchange, RequestKind, Timeout
from ike.wire import IkeHeader, Message

log = logging.getLogger("tunneld.ike")

_RETIRING_INPUTS = (Input.INFORMATIONAL_REQUEST, Input.CREATE_CHILD_SA_REQUEST)


def deletes_ike_sa(message: Message) -> bool:
    return any(d.protocol == ProtocolId.IKE for d in message.find_all(DeletePayload))


class DispatchingSession(RekeyingSession):
    """Requests and responses of every IKE SA of the session (see the module docstring)."""

    # -- requests from the peer ----------------------------------------------

    def _on_request(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        kind = sa.tm.classify(header.message_id)
        late_init = header.exchange_type == ExchangeType.IKE_SA_INIT and (
            self._state is not IkeState.INIT_WAIT or sa is not self._sa
        )
        if kind is RequestKind.OUT_OF_WINDOW:
            self._drop(f"request with message ID {header.message_id} out of window")
        elif kind is RequestKind.RETRANSMIT:
            cached = sa.tm.cached
            if cached is not None and cached.request == data:  # §2.1: answer from the cache
                self._outbox.append((cached.datagram, dst, src))
            else:
                self._drop("a different request under an answered message ID")
        elif self._state is IkeState.CLOSED or sa.linger_until is not None:
            self._drop("new request after the IKE SA was closed")
        elif late_init:  # unauthenticated: it must not move the window of an existing SA
            self._drop("IKE_SA_INIT request for an existing IKE SA")
        else:
            self._answer(sa, header, data, src, dst, now)

    def _answer(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        """Process a new request and send the response: the responder's error boundary."""
        inp = REQUEST_INPUT.get(header.exchange_type)
        tasks: list[ResponderTask] = []
        payloads: list[Payload] = []
        expected = False
        try:
            # Authenticate first (invariant 3): a forged message must not move the window.
            received = Received(decode_message(sa.ctx, header, data), src, dst, now)
            if header.exchange_type != ExchangeType.IKE_SA_INIT:
                self._last_inbound = max(self._last_inbound, now)
            if sa is self._successor and not deletes_ike_sa(received.message):
                self._adopt_successor(now)  # the peer uses it: the old SA is going
            expected = self._expected(sa, inp)
            if inp is None or not expected:
                raise self._unexpected(header)
            self._adopt_path(sa, header, src, dst)
            tasks = self._responder_tasks(sa, inp, received.message)
            payloads = self._run_responders(sa, tasks, received)
        except PeerError as err:
            if err.notify is None:  # e.g. a forged SK payload: drop silently (§2.21.2)
                self._drop(f"{type(err).__name__}: {err}")
                return
            log.info("refusing %s: %s", exchange_name(header.exchange_type), err)
            stateless = inp is Input.IKE_SA_INIT_REQUEST
            self._respond(sa, header, [error_notify(err)], src, dst, data, stateless=stateless)
            if expected and inp is not None and sa is self._sa:
                self._request_failed(inp, err, now)
            return
        self._respond(sa, header, payloads, src, dst, data)
        if inp is not None:
            self._request_done(sa, inp, tasks, now)

    def _expected(self, sa: IkeSa, inp: Input | None) -> bool:
        if inp is None:
            return False
        if sa is self._sa:
            return bool(allowed(self._state, inp))
        return inp in _RETIRING_INPUTS

    def _run_responders(
        self, sa: IkeSa, tasks: list[ResponderTask], received: Received
    ) -> list[Payload]:
        """Each task reads the request and adds to the answer, with the keys of ``sa``."""
        failures: dict[int, PeerError] = {}
        for i, task in enumerate(tasks):
            try:
                task.process_r(sa.ctx, received)
            except PeerError as err:
                if task.critical:
                    raise
                failures[i] = err  # §1.2: only this Child SA fails
        payloads: list[Payload] = []
        for i, task in enumerate(tasks):
            payloads += [error_notify(failures[i])] if i in failures else task.build_r(sa.ctx)
        return payloads

    def _unexpected(self, header: IkeHeader) -> PeerError:
        name = exchange_name(header.exchange_type)
        return PeerError(
            f"unexpected {name} request in state {self._state.name}", NotifyType.INVALID_SYNTAX
        )

    def _respond(
        self,
        sa: IkeSa,
        header: IkeHeader,
        payloads: list[Payload],
        src: Address,
        dst: Address,
        request: bytes,
        *,
        stateless: bool = False,
    ) -> None:
        datagram = encode_message(
            sa.ctx, header.exchange_type, header.message_id, payloads, True, stateless
        )
        if header.exchange_type == ExchangeType.IKE_SA_INIT and not stateless:
            sa.ctx.init_response = datagram  # signed by our AUTH (§2.15)
        sa.tm.answered(header.message_id, request, datagram)
        self._outbox.append((datagram, dst, src))

    def _responder_tasks(self, sa: IkeSa, inp: Input, message: Message) -> list[ResponderTask]:
        if inp is Input.IKE_SA_INIT_REQUEST:
            return [IkeInitResponder()]
        if inp is Input.IKE_AUTH_REQUEST:
            return [IkeAuthResponder(), ChildCreateResponder()]
        if inp is Input.CREATE_CHILD_SA_REQUEST:
            return [self._create_child_sa_responder(sa, message)]
        return [InformationalResponder()]

    def _request_done(self, sa: IkeSa, inp: Input, tasks: list[ResponderTask], now: float) -> None:
        info = tasks[0] if tasks and isinstance(tasks[0], InformationalResponder) else None
        if sa is not self._sa:  # a retiring SA, or a successor deleted by its creator
            if info is not None and info.ike_deleted:
                self._retire(sa, now, linger=True)
            return
        if inp is Input.IKE_SA_INIT_REQUEST:
            self._transition(inp, IkeState.AUTH_WAIT)
        elif inp is Input.IKE_AUTH_REQUEST:
            self._half_open_deadline, self._established_at = None, now
            self._transition(inp, IkeState.ESTABLISHED)
            self._on_established(now)
        elif info is not None:
            self._informational_done(info, inp, now)
        else:
            self._transition(inp, self._state)
            task = tasks[0] if tasks else None
            if isinstance(task, IkeRekeyResponder):
                self._ike_rekey_answered(sa, task)

    def _informational_done(self, info: InformationalResponder, inp: Input, now: float) -> None:
        if info.ike_deleted and self._successor is not None and self._state is IkeState.ESTABLISHED:
            # §2.18: the rekey initiator deletes the old IKE SA; the new one takes over.
            self._transition(inp, self._state)
            self._retire(self._adopt_successor(now), now, linger=True)
        elif info.ike_deleted:
            self._go_down(inp, "deleted by peer", None, now, linger=True)
        elif info.fatal_notify is not None:
            reason = f"peer reported {info.fatal_notify.name}"
            self._go_down(inp, reason, info.fatal_notify, now, linger=True)
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
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        if not sa.tm.is_response_to_in_flight(header.message_id, header.exchange_type):
            self._drop(f"response with unexpected message ID {header.message_id}")
            return
        try:
            message = decode_message(sa.ctx, header, data)
        except PeerError as err:  # unauthenticated or garbled: keep waiting (§2.21)
            self._drop(f"{type(err).__name__} in response: {err}")
            return
        if header.exchange_type != ExchangeType.IKE_SA_INIT:
            self._last_inbound = max(self._last_inbound, now)
            self._adopt_path(sa, header, src, dst)
        self._complete(sa, Received(message, src, dst, now))

    def _complete(self, sa: IkeSa, response: Received) -> None:
        """Process the response to our request: the initiator's error boundary."""
        flight = sa.tm.in_flight
        if flight is None:
            raise LocalError("response without a request in flight")
        exchange, now = flight.exchange, response.now
        inp = RESPONSE_INPUT[exchange.exchange_type]
        child_failure: PeerError | None = None
        try:
            for task in exchange.tasks:
                try:
                    if task.process_i(sa.ctx, response) is Outcome.RETRY:
                        self._retry(inp, exchange, now)
                        return
                except PeerError as err:
                    if task.critical:
                        raise
                    child_failure = err
        except PeerError as err:
            sa.tm.complete()
            self._exchange_failed(sa, inp, exchange, err, now)
            return
        sa.tm.complete()
        self._exchange_done(sa, inp, exchange, child_failure, now)

    def _retry(self, inp: Input, exchange: Exchange, now: float) -> None:
        """IKE_SA_INIT again, same message ID 0, after INVALID_KE_PAYLOAD or COOKIE."""
        ctx = self._ctx
        payloads = [p for task in exchange.tasks for p in task.build_i(ctx)]
        datagram = encode_message(ctx, exchange.exchange_type, 0, payloads, False)
        ctx.init_request = datagram
        self._tm.resend_same_id(datagram, ctx.local_addr, ctx.remote_addr, now)
        self._outbox.append((datagram, ctx.local_addr, ctx.remote_addr))
        self._transition(inp, self._state)

    def _exchange_done(
        self,
        sa: IkeSa,
        inp: Input,
        exchange: Exchange,
        child_failure: PeerError | None,
        now: float,
    ) -> None:
        deleted_ike = any(isinstance(t, DeleteIkeTask) for t in exchange.tasks)
        if sa is not self._sa:
            self._followups_done(sa, exchange, now)
            if deleted_ike:
                self._retire(sa, now, linger=False)
        elif inp is Input.IKE_SA_INIT_RESPONSE:
            self._move_to_nat_t()
            contact = self._ctx.config.send_initial_contact and self._initial_contact()
            tasks = [IkeAuthInitiator(contact), ChildCreateInitiator()]
            auth = Exchange(ExchangeType.IKE_AUTH, tasks)
            self._tm.enqueue(auth, first=True)
            self._transition(inp, IkeState.AUTH_SENT)
        elif inp is Input.IKE_AUTH_RESPONSE:
            self._auth_done(inp, child_failure, now)
        elif deleted_ike:
            reason, notify_type = self._close_reason
            self._go_down(inp, reason, notify_type, now)
        else:
            self._transition(inp, self._state)
            self._followups_done(sa, exchange, now)

    def _auth_done(self, inp: Input, child_failure: PeerError | None, now: float) -> None:
        self._established_at = now
        if child_failure is None:
            self._transition(inp, IkeState.ESTABLISHED)
            self._on_established(now)
            return
        # §1.2 keeps the IKE SA, but a gateway's IKE SA without its Child SA
        # carries no traffic: delete it and say why.
        self._close_reason = (f"Child SA failed: {child_failure}", child_failure.notify)
        delete = Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()])
        self._tm.enqueue(delete, first=True)
        self._transition(inp, IkeState.DELETING)

    def _exchange_failed(
        self, sa: IkeSa, inp: Input, exchange: Exchange, err: PeerError, now: float
    ) -> None:
        if sa is not self._sa:
            self._followups_failed(sa, exchange, err, now)
            return
        reported = isinstance(err, RefusedByPeer) or err.notify is None
        if inp is Input.IKE_AUTH_RESPONSE and not reported and err.notify is not None:
            self._send_once(NotifyErrorTask(err.notify), now)  # §2.21.2: tell the responder
        if inp in (Input.IKE_SA_INIT_RESPONSE, Input.IKE_AUTH_RESPONSE):
            name = "IKE_SA_INIT" if inp is Input.IKE_SA_INIT_RESPONSE else "IKE_AUTH"
            self._go_down(inp, f"{name} failed: {err}", err.notify, now)
        else:
            log.info("%s failed: %s", inp.name, err)
            self._transition(inp, self._state)
            self._followups_failed(sa, exchange, err, now)

    # -- timers of every IKE SA -------------------------------------------------

    def _sa_timers(self, now: float) -> None:
        """Retransmissions and give-ups of every IKE SA of the session."""
        self._current_timeout(now)
        for sa in list(self._retiring):
            self._retiring_timers(sa, now)

    def _current_timeout(self, now: float) -> None:
        """Retransmit, or end the session when the peer stopped answering (§2.4)."""
        due = self._tm.due(now)
        flight = self._tm.in_flight
        if due is Timeout.RETRANSMIT:
            flight = self._tm.retransmit(now)
            self._outbox.append((flight.datagram, flight.src, flight.dst))
        elif due is Timeout.EXHAUSTED and flight is not None:
            name = flight.exchange.exchange_type.name
            tries = flight.attempt + 1
            if self._established_at is None:
                reason = f"peer unreachable: no response to {name} after {tries} transmissions"
                self._go_down(Input.TIMEOUT, reason, None, now)
                return
            if any(isinstance(t, LivenessTask) for t in flight.exchange.tasks):
                what = "a liveness check"
            else:
                what = name
            if self._state is IkeState.DELETING:  # we were ending it anyway: no dpd_action
                reason = f"no answer to {what} after {tries} transmissions while deleting"
                self._go_down(Input.TIMEOUT, reason, None, now)
                return
            reason = f"peer dead: no answer to {what} after {tries} transmissions"
            self._go_down(Input.TIMEOUT, reason, None, now, peer_dead=True)

    def _retiring_timers(self, sa: IkeSa, now: float) -> None:
        if sa.linger_until is not None:
            if now >= sa.linger_until:
                self._retiring.remove(sa)
            return
        due = sa.tm.due(now)
        if due is Timeout.RETRANSMIT:
            flight = sa.tm.retransmit(now)
            self._outbox.append((flight.datagram, flight.src, flight.dst))
            return
        exhausted = due is Timeout.EXHAUSTED and sa.tm.in_flight is not None
        if exhausted or (sa.give_up_at is not None and now >= sa.give_up_at):
            self._retire(sa, now, linger=False)  # what was in flight is redone on the current SA
