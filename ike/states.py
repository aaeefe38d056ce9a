"""The states of an IKE SA and the transition table (h2 style): the whole state machine.

An input is a method call on the session (INITIATE, CLOSE), a timer
(TIMEOUT: retransmissions exhausted; HALF_OPEN_EXPIRED; EXPIRED: the hard
lifetime of the IKE SA ran out without a rekey), or the *outcome* of a
message: the peer's request accepted or refused, our request answered,
retried or failed, the IKE SA deleted by the peer or by our DELETE.

:data:`TRANSITIONS` maps each accepted (state, input) pair to exactly one
next state; anything not in the table is a protocol error (a message) or a
misuse (a call). The session changes state only through :func:`next_state`,
so this file is the state machine, readable in one screen.

The states describe the session's *current* IKE SA. Rekeying (Child SAs or
the IKE SA itself, RFC 7296 §1.3) happens inside ESTABLISHED: an IKE SA
rekey replaces the current SA without leaving it (see :mod:`ike.ikesa`).
Messages on a retiring or successor IKE SA are judged by :mod:`ike.dispatch`,
not by this table.
"""

from __future__ import annotations

from enum import Enum, auto

from ike.constants import ExchangeType
from ike.errors import LocalError


class IkeState(Enum):
    IDLE = auto()  # initiator, before initiate()
    INIT_SENT = auto()  # initiator: IKE_SA_INIT request in flight
    AUTH_SENT = auto()  # initiator: IKE_AUTH request in flight
    INIT_WAIT = auto()  # responder, before the IKE_SA_INIT request
    AUTH_WAIT = auto()  # responder: IKE_SA_INIT answered, IKE_AUTH awaited (half-open)
    ESTABLISHED = auto()  # both sides authenticated
    DELETING = auto()  # our delete of the IKE SA is in flight
    CLOSED = auto()  # gone; may linger to answer retransmissions


class Input(Enum):
    # calls and timers
    INITIATE = auto()
    CLOSE = auto()
    TIMEOUT = auto()  # retransmissions exhausted
    HALF_OPEN_EXPIRED = auto()
    EXPIRED = auto()  # hard lifetime of the IKE SA
    FORGET = auto()  # the peer forgot the IKE SA (INITIAL_CONTACT on a newer one)
    # the peer's requests: accepted (answered) or refused (error notify)
    IKE_SA_INIT_REQUEST = auto()
    IKE_SA_INIT_REFUSED = auto()
    IKE_AUTH_REQUEST = auto()
    IKE_AUTH_REFUSED = auto()
    CREATE_CHILD_SA_REQUEST = auto()  # answered, whatever the answer said
    INFORMATIONAL_REQUEST = auto()  # answered; nothing about the IKE SA changed
    DELETED_BY_PEER = auto()  # an INFORMATIONAL request with D(IKE)
    FATAL_NOTIFY = auto()  # an INFORMATIONAL request reporting e.g. AUTHENTICATION_FAILED
    # the peer's responses to our requests
    IKE_SA_INIT_RESPONSE = auto()
    IKE_SA_INIT_RETRY = auto()  # INVALID_KE_PAYLOAD or COOKIE: again with message ID 0
    IKE_SA_INIT_FAILED = auto()
    IKE_AUTH_RESPONSE = auto()
    IKE_AUTH_CHILD_FAILED = auto()  # IKE SA up, its Child SA refused: we delete it
    IKE_AUTH_FAILED = auto()
    CREATE_CHILD_SA_RESPONSE = auto()  # done or failed: the IKE SA stays
    INFORMATIONAL_RESPONSE = auto()
    DELETE_ANSWERED = auto()  # the response to our D(IKE)


S, I = IkeState, Input  # noqa: E741 - table shorthand

# (state, input) -> the one next state. Anything else: invariant 1 of ike.session.
TRANSITIONS: dict[tuple[IkeState, Input], IkeState] = {
    (S.IDLE, I.INITIATE): S.INIT_SENT,
    (S.IDLE, I.CLOSE): S.CLOSED,
    # initiator
    (S.INIT_SENT, I.IKE_SA_INIT_RESPONSE): S.AUTH_SENT,
    (S.INIT_SENT, I.IKE_SA_INIT_RETRY): S.INIT_SENT,
    (S.INIT_SENT, I.IKE_SA_INIT_FAILED): S.CLOSED,
    (S.INIT_SENT, I.TIMEOUT): S.CLOSED,
    (S.INIT_SENT, I.CLOSE): S.CLOSED,
    (S.AUTH_SENT, I.IKE_AUTH_RESPONSE): S.ESTABLISHED,
    (S.AUTH_SENT, I.IKE_AUTH_CHILD_FAILED): S.DELETING,
    (S.AUTH_SENT, I.IKE_AUTH_FAILED): S.CLOSED,
    (S.AUTH_SENT, I.INFORMATIONAL_REQUEST): S.AUTH_SENT,
    (S.AUTH_SENT, I.DELETED_BY_PEER): S.CLOSED,
    (S.AUTH_SENT, I.FATAL_NOTIFY): S.CLOSED,
    (S.AUTH_SENT, I.TIMEOUT): S.CLOSED,
    (S.AUTH_SENT, I.CLOSE): S.CLOSED,
    # responder
    (S.INIT_WAIT, I.IKE_SA_INIT_REQUEST): S.AUTH_WAIT,
    (S.INIT_WAIT, I.IKE_SA_INIT_REFUSED): S.CLOSED,
    (S.INIT_WAIT, I.HALF_OPEN_EXPIRED): S.CLOSED,
    (S.INIT_WAIT, I.CLOSE): S.CLOSED,
    (S.AUTH_WAIT, I.IKE_AUTH_REQUEST): S.ESTABLISHED,
    (S.AUTH_WAIT, I.IKE_AUTH_REFUSED): S.CLOSED,
    (S.AUTH_WAIT, I.HALF_OPEN_EXPIRED): S.CLOSED,
    (S.AUTH_WAIT, I.CLOSE): S.CLOSED,
    # established
    (S.ESTABLISHED, I.INFORMATIONAL_REQUEST): S.ESTABLISHED,
    (S.ESTABLISHED, I.DELETED_BY_PEER): S.CLOSED,
    (S.ESTABLISHED, I.FATAL_NOTIFY): S.CLOSED,
    (S.ESTABLISHED, I.INFORMATIONAL_RESPONSE): S.ESTABLISHED,
    (S.ESTABLISHED, I.CREATE_CHILD_SA_REQUEST): S.ESTABLISHED,
    (S.ESTABLISHED, I.CREATE_CHILD_SA_RESPONSE): S.ESTABLISHED,
    (S.ESTABLISHED, I.TIMEOUT): S.CLOSED,
    (S.ESTABLISHED, I.EXPIRED): S.CLOSED,
    (S.ESTABLISHED, I.CLOSE): S.DELETING,
    (S.ESTABLISHED, I.FORGET): S.CLOSED,
    # our DELETE of the IKE SA in flight
    (S.DELETING, I.INFORMATIONAL_REQUEST): S.DELETING,
    (S.DELETING, I.DELETED_BY_PEER): S.CLOSED,
    (S.DELETING, I.FATAL_NOTIFY): S.CLOSED,
    (S.DELETING, I.INFORMATIONAL_RESPONSE): S.DELETING,
    (S.DELETING, I.DELETE_ANSWERED): S.CLOSED,
    (S.DELETING, I.CREATE_CHILD_SA_REQUEST): S.DELETING,
    (S.DELETING, I.CREATE_CHILD_SA_RESPONSE): S.DELETING,
    (S.DELETING, I.TIMEOUT): S.CLOSED,
    (S.DELETING, I.EXPIRED): S.CLOSED,
    (S.DELETING, I.CLOSE): S.DELETING,
    (S.DELETING, I.FORGET): S.CLOSED,
    # a sink: only an idempotent close
    (S.CLOSED, I.CLOSE): S.CLOSED,
}
del S, I

# A request of the peer is processed when its accepted input is in the table
# for the current state; what it then leads to is decided by its outcome.
REQUEST_INPUT: dict[int, Input] = {
    ExchangeType.IKE_SA_INIT: Input.IKE_SA_INIT_REQUEST,
    ExchangeType.IKE_AUTH: Input.IKE_AUTH_REQUEST,
    ExchangeType.CREATE_CHILD_SA: Input.CREATE_CHILD_SA_REQUEST,
    ExchangeType.INFORMATIONAL: Input.INFORMATIONAL_REQUEST,
}
# What a refused request leads to (a refused CREATE_CHILD_SA or INFORMATIONAL
# request changes nothing: the input is the same as for an answered one).
REFUSED_INPUT: dict[Input, Input] = {
    Input.IKE_SA_INIT_REQUEST: Input.IKE_SA_INIT_REFUSED,
    Input.IKE_AUTH_REQUEST: Input.IKE_AUTH_REFUSED,
    Input.CREATE_CHILD_SA_REQUEST: Input.CREATE_CHILD_SA_REQUEST,
    Input.INFORMATIONAL_REQUEST: Input.INFORMATIONAL_REQUEST,
}
RESPONSE_INPUT: dict[int, Input] = {
    ExchangeType.IKE_SA_INIT: Input.IKE_SA_INIT_RESPONSE,
    ExchangeType.IKE_AUTH: Input.IKE_AUTH_RESPONSE,
    ExchangeType.CREATE_CHILD_SA: Input.CREATE_CHILD_SA_RESPONSE,
    ExchangeType.INFORMATIONAL: Input.INFORMATIONAL_RESPONSE,
}
# What a failed request of ours leads to.
FAILED_INPUT: dict[Input, Input] = {
    Input.IKE_SA_INIT_RESPONSE: Input.IKE_SA_INIT_FAILED,
    Input.IKE_AUTH_RESPONSE: Input.IKE_AUTH_FAILED,
    Input.CREATE_CHILD_SA_RESPONSE: Input.CREATE_CHILD_SA_RESPONSE,
    Input.INFORMATIONAL_RESPONSE: Input.INFORMATIONAL_RESPONSE,
}


def accepts(state: IkeState, inp: Input) -> bool:
    """Whether ``inp`` is possible in ``state``."""
    return (state, inp) in TRANSITIONS


def next_state(state: IkeState, inp: Input) -> IkeState:
    """The one state ``inp`` leads to from ``state``; LocalError if it is not in the table."""
    try:
        return TRANSITIONS[state, inp]
    except KeyError:
        raise LocalError(f"{inp.name.lower()} is not possible in state {state.name}") from None
