"""Requests and responses of a session, on whichever IKE SA they name.

A datagram is routed to the IKE SA whose SPIs it carries (:class:`ike.ikesa.IkeSas`):

- the *current* SA: requests are judged by :data:`ike.states.TRANSITIONS`
  and answered by the responder tasks; responses complete our request;
- the *successor* (the new SA of a peer's rekey we answered): a request on
  it means the peer uses it, so it becomes current first, unless the
  request deletes it (its creator lost a simultaneous rekey, §2.8.2);
- a *retiring* SA: DELETE and other INFORMATIONAL requests are answered,
  CREATE_CHILD_SA gets TEMPORARY_FAILURE (§2.25); a deleted SA lingers only
  to replay its cached response.

PeerErrors become notifies in exactly two places: :meth:`Dispatcher._answer`
(our response to a request) and :meth:`Dispatcher._complete` (the outcome of
our request). What an exchange leads to afterwards is the tasks' business
(their ``on_*`` follow-ups, through :class:`ike.rekeying.Rekeying`) and the
state's (one input, one next state).
"""

from __future__ import annotations

import logging

from ike.constants import ExchangeType, NotifyType, ProtocolId
from ike.errors import LocalError, PeerError
from ike.events import Address, RequestRefused
from ike.exchanges.base import InitiatorTask, Outcome, Received, ResponderTask
from ike.exchanges.child_create import ChildCreateInitiator, ChildCreateResponder
from ike.exchanges.context import RefusedByPeer, decode_message, encode_message, exchange_name
from ike.exchanges.ike_auth import IkeAuthInitiator, IkeAuthResponder
from ike.exchanges.ike_init import IkeInitResponder
from ike.exchanges.informational import DeleteIkeTask, InformationalResponder, NotifyErrorTask
from ike.ikesa import IkeSa
from ike.payloads import DeletePayload, Payload
from ike.policy import INIT_ERROR_GRACE
from ike.rekeying import Rekeying
from ike.sessioncore import SessionCore, error_notify
from ike.states import (
    FAILED_INPUT,
    REFUSED_INPUT,
    REQUEST_INPUT,
    RESPONSE_INPUT,
    IkeState,
    Input,
    accepts,
)
from ike.taskmanager import Exchange, RequestKind, Timeout
from ike.wire import IkeHeader, Message

log = logging.getLogger("tunneld.ike")

# Refusals that say the two configurations disagree: an operator must act on them.
MISMATCH_NOTIFIES = frozenset({NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE})

_RETIRING_INPUTS = (Input.INFORMATIONAL_REQUEST, Input.CREATE_CHILD_SA_REQUEST)


def deletes_ike_sa(message: Message) -> bool:
    return any(d.protocol == ProtocolId.IKE for d in message.find_all(DeletePayload))


class Dispatcher:
    """Requests, responses and retransmission timers of every IKE SA of a session."""

    def __init__(self, core: SessionCore, rekeying: Rekeying) -> None:
        self.core = core
        self.rekeying = rekeying

    def receive(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        if header.is_response:
            self._on_response(sa, header, data, src, dst, now)
        else:
            self._on_request(sa, header, data, src, dst, now)

    # -- requests from the peer ----------------------------------------------

    def _on_request(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        core = self.core
        kind = sa.tm.classify(header.message_id)
        late_init = header.exchange_type == ExchangeType.IKE_SA_INIT and (
            core.state is not IkeState.INIT_WAIT or sa is not core.sas.current
        )
        if kind is RequestKind.OUT_OF_WINDOW:
            core.drop("request out of window", f"message ID {header.message_id}")
        elif kind is RequestKind.RETRANSMIT:
            cached = sa.tm.cached
            if cached is None or cached.request != data:
                core.drop("different request under an answered message ID")
            elif cached.peer not in (None, src) and src != sa.ctx.remote_addr:
                # no reflection to a third party; the peer's authenticated new
                # address (it moved, e.g. a NAT rebinding, §2.23) is no third party
                core.drop("retransmitted request from another address", f"{src}")
            else:  # §2.1: answer from the cache
                core.outbox.append((cached.datagram, dst, src))
        elif core.state is IkeState.CLOSED or sa.linger_until is not None:
            core.drop("request after the IKE SA was closed")
        elif late_init:  # unauthenticated: it must not move the window of an existing SA
            core.drop("IKE_SA_INIT request for an existing IKE SA")
        else:
            self._answer(sa, header, data, src, dst, now)

    def _answer(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        """Process a new request and send the response: the responder's error boundary."""
        core = self.core
        inp = REQUEST_INPUT.get(header.exchange_type)
        tasks: list[ResponderTask] = []
        payloads: list[Payload] = []
        expected = False
        try:
            # Authenticate first (invariant 3): a forged message must not move the window.
            received = Received(decode_message(sa.ctx, header, data), src, dst, now)
            if header.exchange_type != ExchangeType.IKE_SA_INIT:
                core.last_inbound = max(core.last_inbound, now)
            if sa is core.sas.successor and not deletes_ike_sa(received.message):
                self.rekeying.adopt_successor(now)  # the peer uses it: the old SA is going
            expected = self._expected(sa, inp)
            if inp is None or not expected:
                raise self._unexpected(header)
            core.adopt_path(sa, header, src, dst)
            tasks = self._responder_tasks(sa, inp, received.message)
            payloads = self._run_responders(sa, tasks, received)
        except PeerError as err:
            if err.notify is None:  # e.g. a forged SK payload: drop silently (§2.21.2)
                core.drop("unauthenticated or malformed request", f"{type(err).__name__}: {err}")
                return
            stateless = inp is Input.IKE_SA_INIT_REQUEST  # unauthenticated: no log line each
            name = exchange_name(header.exchange_type)
            # the daemon logs the refusal once (IkeSaDown / RequestRefused) with the peer
            log.debug("refusing %s: %s", name, err)
            self._respond(sa, header, [error_notify(err)], src, dst, data, stateless=stateless)
            if inp not in (None, Input.IKE_SA_INIT_REQUEST, Input.IKE_AUTH_REQUEST):
                self._refused(name, err)  # authenticated: the IKE SA stays
            if expected and inp is not None and sa is core.sas.current:
                self._request_refused(inp, err, now)
            return
        self._respond(sa, header, payloads, src, dst, data)
        if inp is not None:
            self._request_done(sa, inp, tasks, now)

    def _expected(self, sa: IkeSa, inp: Input | None) -> bool:
        if inp is None:
            return False
        if sa is self.core.sas.current:
            return accepts(self.core.state, inp)
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
        name = exchange_name(received.message.exchange_type)
        for failure in failures.values():  # the critical tasks authenticated the peer
            log.debug("refusing a Child SA in %s: %s", name, failure)
            self._refused(name, failure)
        return payloads

    def _refused(self, exchange: str, err: PeerError) -> None:
        """Report a refusal we sent that a configuration mismatch explains (a
        TEMPORARY_FAILURE in a rekey collision, say, is no fault of anyone's)."""
        if err.notify in MISMATCH_NOTIFIES:
            self.core.emit(RequestRefused(exchange, str(err), err.notify))

    def _unexpected(self, header: IkeHeader) -> PeerError:
        name = exchange_name(header.exchange_type)
        return PeerError(
            f"unexpected {name} request in state {self.core.state.name}",
            NotifyType.INVALID_SYNTAX,
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
        sa.tm.answered(header.message_id, request, datagram, src)
        self.core.outbox.append((datagram, dst, src))

    def _responder_tasks(self, sa: IkeSa, inp: Input, message: Message) -> list[ResponderTask]:
        if inp is Input.IKE_SA_INIT_REQUEST:
            return [IkeInitResponder()]
        if inp is Input.IKE_AUTH_REQUEST:
            return [IkeAuthResponder(), ChildCreateResponder()]
        if inp is Input.CREATE_CHILD_SA_REQUEST:
            return [self.rekeying.create_child_sa_responder(sa, message)]
        return [InformationalResponder()]

    def _request_done(self, sa: IkeSa, inp: Input, tasks: list[ResponderTask], now: float) -> None:
        core = self.core
        current = sa is core.sas.current
        if current and inp is Input.IKE_AUTH_REQUEST:
            core.half_open_deadline, core.established_at = None, now
            core.fire(inp)
            self.rekeying.on_established(now)
        elif current and inp is not Input.INFORMATIONAL_REQUEST:
            core.fire(inp)  # an INFORMATIONAL request's outcome is its task's to say
        for task in tasks:
            task.on_answered(self.rekeying, sa, now)

    def _request_refused(self, inp: Input, err: PeerError, now: float) -> None:
        refused = REFUSED_INPUT[inp]
        if refused is Input.IKE_SA_INIT_REFUSED:  # stateless refusal: nothing to linger for
            self.core.go_down(refused, f"refused IKE_SA_INIT: {err}", err.notify, now)
        elif refused is Input.IKE_AUTH_REFUSED:
            reason = f"IKE_AUTH failed: {err}"
            self.core.go_down(refused, reason, err.notify, now, linger=True)
        else:
            self.core.fire(refused)

    # -- responses to our requests ---------------------------------------------

    def _on_response(
        self, sa: IkeSa, header: IkeHeader, data: bytes, src: Address, dst: Address, now: float
    ) -> None:
        core = self.core
        if not sa.tm.is_response_to_in_flight(header.message_id, header.exchange_type):
            core.drop("response with unexpected message ID", f"message ID {header.message_id}")
            return
        init = header.exchange_type == ExchangeType.IKE_SA_INIT
        if init and src != sa.tm.in_flight_dst():  # §2.21.1: only the peer answers it
            core.drop("IKE_SA_INIT response from another address", f"{src}")
            return
        try:
            message = decode_message(sa.ctx, header, data)
        except PeerError as err:  # unauthenticated or garbled: keep waiting (§2.21)
            core.drop("unauthenticated or malformed response", f"{type(err).__name__}: {err}")
            return
        if header.exchange_type != ExchangeType.IKE_SA_INIT:
            core.last_inbound = max(core.last_inbound, now)
            core.adopt_path(sa, header, src, dst)
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
                    outcome = task.process_i(sa.ctx, response)
                    if outcome is Outcome.RETRY:
                        self._retry(exchange, now)
                        return
                    if outcome is Outcome.IGNORED:
                        self.core.drop("COOKIE already answered")
                        return
                except PeerError as err:
                    if task.critical:
                        raise
                    child_failure = err
        except PeerError as err:
            if inp is Input.IKE_SA_INIT_RESPONSE:  # unauthenticated: keep waiting (§2.21.1)
                self._init_error(err, now)
                return
            sa.tm.complete()
            self._exchange_failed(sa, inp, exchange, err, now)
            return
        sa.tm.complete()
        self._exchange_done(sa, inp, exchange, child_failure, now)

    def _init_error(self, err: PeerError, now: float) -> None:
        """An error (or garbage) in an IKE_SA_INIT response: anyone who saw our request
        could have sent it, so the request stays in flight for INIT_ERROR_GRACE; a valid
        response meanwhile wins, otherwise we fail with this error (see handle_init_error)."""
        core = self.core
        core.drop("IKE_SA_INIT error response (unauthenticated)", str(err))
        if core.init_error is None:
            core.init_error, core.init_error_deadline = err, now + INIT_ERROR_GRACE

    def init_error_timer(self, now: float) -> None:
        """The grace after an IKE_SA_INIT error response ran out: the error stands."""
        core = self.core
        deadline, err = core.init_error_deadline, core.init_error
        if deadline is None or err is None or now < deadline:
            return
        core.init_error_deadline = None
        if core.state is IkeState.INIT_SENT:
            reason = f"IKE_SA_INIT failed: {err}"
            core.go_down(Input.IKE_SA_INIT_FAILED, reason, err.notify, now)

    def _retry(self, exchange: Exchange, now: float) -> None:
        """IKE_SA_INIT again, same message ID 0, after INVALID_KE_PAYLOAD or COOKIE."""
        core = self.core
        ctx = core.ctx
        payloads = [p for task in exchange.tasks for p in task.build_i(ctx)]
        datagram = encode_message(ctx, exchange.exchange_type, 0, payloads, False)
        ctx.init_request = datagram
        core.tm.resend_same_id(datagram, ctx.local_addr, ctx.remote_addr, now)
        core.outbox.append((datagram, ctx.local_addr, ctx.remote_addr))
        core.fire(Input.IKE_SA_INIT_RETRY)

    def _exchange_done(
        self,
        sa: IkeSa,
        inp: Input,
        exchange: Exchange,
        child_failure: PeerError | None,
        now: float,
    ) -> None:
        core = self.core
        deleted_ike = any(t.deletes_ike for t in exchange.tasks)
        if sa is not core.sas.current:
            for task in exchange.tasks:
                task.on_done(self.rekeying, sa, now)
            if deleted_ike:
                self.rekeying.retire(sa, now, linger=False)
        elif inp is Input.IKE_SA_INIT_RESPONSE:
            core.move_to_nat_t()
            contact = core.ctx.config.send_initial_contact and core.initial_contact()
            tasks: list[InitiatorTask] = [IkeAuthInitiator(contact), ChildCreateInitiator()]
            core.tm.enqueue(Exchange(ExchangeType.IKE_AUTH, tasks), first=True)
            core.fire(inp)
        elif inp is Input.IKE_AUTH_RESPONSE:
            self._auth_done(child_failure, now)
        elif deleted_ike:
            reason, notify_type = core.close_reason
            core.go_down(Input.DELETE_ANSWERED, reason, notify_type, now)
        else:
            core.fire(inp)
            for task in exchange.tasks:
                task.on_done(self.rekeying, sa, now)

    def _auth_done(self, child_failure: PeerError | None, now: float) -> None:
        core = self.core
        core.established_at = now
        if child_failure is None:
            core.fire(Input.IKE_AUTH_RESPONSE)
            self.rekeying.on_established(now)
            return
        # §1.2 keeps the IKE SA, but a gateway's IKE SA without its Child SA
        # carries no traffic: delete it and say why.
        core.close_reason = (f"Child SA failed: {child_failure}", child_failure.notify)
        delete = Exchange(ExchangeType.INFORMATIONAL, [DeleteIkeTask()])
        core.tm.enqueue(delete, first=True)
        core.fire(Input.IKE_AUTH_CHILD_FAILED)

    def _exchange_failed(
        self, sa: IkeSa, inp: Input, exchange: Exchange, err: PeerError, now: float
    ) -> None:
        core = self.core
        if sa is not core.sas.current:
            for task in exchange.tasks:
                task.on_failed(self.rekeying, sa, err, now)
            return
        reported = isinstance(err, RefusedByPeer) or err.notify is None
        if inp is Input.IKE_AUTH_RESPONSE and not reported and err.notify is not None:
            core.send_once(NotifyErrorTask(err.notify), now)  # §2.21.2: tell the responder
        failed = FAILED_INPUT[inp]
        if failed in (Input.IKE_SA_INIT_FAILED, Input.IKE_AUTH_FAILED):
            name = exchange_name(exchange.exchange_type)
            core.go_down(failed, f"{name} failed: {err}", err.notify, now)
        else:  # authenticated: the peer refused (or botched) our request; it stays up
            level = logging.WARNING if err.notify in MISMATCH_NOTIFIES else logging.INFO
            log.log(level, "%s failed: %s", exchange_name(exchange.exchange_type), err)
            core.fire(failed)
            for task in exchange.tasks:
                task.on_failed(self.rekeying, sa, err, now)

    # -- timers of every IKE SA -------------------------------------------------

    def timers(self, now: float) -> None:
        """Retransmissions and give-ups of every IKE SA of the session."""
        self._current_timeout(now)
        for sa in list(self.core.sas.retiring):
            self._retiring_timers(sa, now)

    def _current_timeout(self, now: float) -> None:
        """Retransmit, or end the session when the peer stopped answering (§2.4)."""
        core = self.core
        due = core.tm.due(now)
        flight = core.tm.in_flight
        if due is Timeout.RETRANSMIT:
            flight = core.tm.retransmit(now)
            core.outbox.append((flight.datagram, flight.src, flight.dst))
            core.emit(core.tm.retransmitted(flight))
        elif due is Timeout.EXHAUSTED and flight is not None:
            name = flight.exchange.exchange_type.name
            tries = flight.attempt + 1
            if core.established_at is None:
                reason = f"peer unreachable: no response to {name} after {tries} transmissions"
                err = core.init_error
                if err is not None:  # only an error answered: report it
                    reason = f"IKE_SA_INIT failed: {err}"
                core.go_down(Input.TIMEOUT, reason, err.notify if err else None, now)
                return
            descriptions = [t.description for t in flight.exchange.tasks if t.description]
            what = descriptions[0] if descriptions else name
            if core.state is IkeState.DELETING:  # we were ending it anyway: no dpd_action
                reason = f"no answer to {what} after {tries} transmissions while deleting"
                core.go_down(Input.TIMEOUT, reason, None, now)
                return
            reason = f"peer dead: no answer to {what} after {tries} transmissions"
            core.go_down(Input.TIMEOUT, reason, None, now, peer_dead=True)

    def _retiring_timers(self, sa: IkeSa, now: float) -> None:
        if sa.linger_until is not None:
            if now >= sa.linger_until:
                self.core.sas.remove(sa)
            return
        due = sa.tm.due(now)
        if due is Timeout.RETRANSMIT:
            flight = sa.tm.retransmit(now)
            self.core.outbox.append((flight.datagram, flight.src, flight.dst))
            self.core.emit(sa.tm.retransmitted(flight))
            return
        exhausted = due is Timeout.EXHAUSTED and sa.tm.in_flight is not None
        if exhausted or (sa.give_up_at is not None and now >= sa.give_up_at):
            self.rekeying.retire(sa, now, linger=False)  # in flight: redone on the current SA
