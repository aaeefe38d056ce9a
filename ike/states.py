"""The states of an IKE SA and the table of allowed transitions (h2 style).

An input is a method call on the session (INITIATE, CLOSE), a timer
(TIMEOUT: retransmissions exhausted; HALF_OPEN_EXPIRED; EXPIRED: the hard
lifetime of the IKE SA ran out without a rekey) or a message,
classified by exchange type and direction. :data:`TRANSITIONS` lists every
(state, input) pair the session accepts and the states it may lead to;
anything not in the table is a protocol error (a message) or a misuse (a
call). The session changes state only through this table.

The states describe the session's *current* IKE SA. Rekeying (Child SAs or
the IKE SA itself, RFC 7296 §1.3) happens inside ESTABLISHED: an IKE SA
rekey replaces the current SA without leaving it (see :mod:`ike.ikesa`).
Messages on a retiring or successor IKE SA are judged by :mod:`ike.dispatch`,
not by this table.
"""

from __future__ import annotations

from enum import Enum, auto

from ike.constants import ExchangeType


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
    INITIATE = auto()
    CLOSE = auto()
    TIMEOUT = auto()  # retransmissions exhausted
    HALF_OPEN_EXPIRED = auto()
    EXPIRED = auto()  # hard lifetime of the IKE SA
    FORGET = auto()  # the peer forgot the IKE SA (INITIAL_CONTACT on a newer one)
    IKE_SA_INIT_REQUEST = auto()
    IKE_SA_INIT_RESPONSE = auto()
    IKE_AUTH_REQUEST = auto()
    IKE_AUTH_RESPONSE = auto()
    CREATE_CHILD_SA_REQUEST = auto()
    CREATE_CHILD_SA_RESPONSE = auto()
    INFORMATIONAL_REQUEST = auto()
    INFORMATIONAL_RESPONSE = auto()


S, I = IkeState, Input  # noqa: E741 - table shorthand

# (state, input) -> the states the input may lead to. Anything else: invariant 1.
TRANSITIONS: dict[tuple[IkeState, Input], frozenset[IkeState]] = {
    (k[0], k[1]): frozenset(v)
    for k, v in {
        (S.IDLE, I.INITIATE): {S.INIT_SENT},
        (S.IDLE, I.CLOSE): {S.CLOSED},
        (S.INIT_SENT, I.IKE_SA_INIT_RESPONSE): {S.INIT_SENT, S.AUTH_SENT, S.CLOSED},
        (S.INIT_SENT, I.TIMEOUT): {S.CLOSED},
        (S.INIT_SENT, I.CLOSE): {S.CLOSED},
        (S.AUTH_SENT, I.IKE_AUTH_RESPONSE): {S.ESTABLISHED, S.DELETING, S.CLOSED},
        (S.AUTH_SENT, I.INFORMATIONAL_REQUEST): {S.AUTH_SENT, S.CLOSED},
        (S.AUTH_SENT, I.TIMEOUT): {S.CLOSED},
        (S.AUTH_SENT, I.CLOSE): {S.CLOSED},
        (S.INIT_WAIT, I.IKE_SA_INIT_REQUEST): {S.AUTH_WAIT, S.CLOSED},
        (S.INIT_WAIT, I.HALF_OPEN_EXPIRED): {S.CLOSED},
        (S.INIT_WAIT, I.CLOSE): {S.CLOSED},
        (S.AUTH_WAIT, I.IKE_AUTH_REQUEST): {S.ESTABLISHED, S.CLOSED},
        (S.AUTH_WAIT, I.HALF_OPEN_EXPIRED): {S.CLOSED},
        (S.AUTH_WAIT, I.CLOSE): {S.CLOSED},
        (S.ESTABLISHED, I.INFORMATIONAL_REQUEST): {S.ESTABLISHED, S.CLOSED},
        (S.ESTABLISHED, I.INFORMATIONAL_RESPONSE): {S.ESTABLISHED},
        (S.ESTABLISHED, I.CREATE_CHILD_SA_REQUEST): {S.ESTABLISHED},
        (S.ESTABLISHED, I.CREATE_CHILD_SA_RESPONSE): {S.ESTABLISHED},
        (S.ESTABLISHED, I.TIMEOUT): {S.CLOSED},
        (S.ESTABLISHED, I.EXPIRED): {S.CLOSED},
        (S.ESTABLISHED, I.CLOSE): {S.DELETING},
        (S.ESTABLISHED, I.FORGET): {S.CLOSED},
        (S.DELETING, I.INFORMATIONAL_REQUEST): {S.DELETING, S.CLOSED},
        (S.DELETING, I.INFORMATIONAL_RESPONSE): {S.DELETING, S.CLOSED},
        (S.DELETING, I.CREATE_CHILD_SA_REQUEST): {S.DELETING},
        (S.DELETING, I.CREATE_CHILD_SA_RESPONSE): {S.DELETING},
        (S.DELETING, I.TIMEOUT): {S.CLOSED},
        (S.DELETING, I.EXPIRED): {S.CLOSED},
        (S.DELETING, I.CLOSE): {S.DELETING},
        (S.DELETING, I.FORGET): {S.CLOSED},
        (S.CLOSED, I.CLOSE): {S.CLOSED},
    }.items()
}
del S, I

REQUEST_INPUT: dict[int, Input] = {
    ExchangeType.IKE_SA_INIT: Input.IKE_SA_INIT_REQUEST,
    ExchangeType.IKE_AUTH: Input.IKE_AUTH_REQUEST,
    ExchangeType.CREATE_CHILD_SA: Input.CREATE_CHILD_SA_REQUEST,
    ExchangeType.INFORMATIONAL: Input.INFORMATIONAL_REQUEST,
}
RESPONSE_INPUT: dict[int, Input] = {
    ExchangeType.IKE_SA_INIT: Input.IKE_SA_INIT_RESPONSE,
    ExchangeType.IKE_AUTH: Input.IKE_AUTH_RESPONSE,
    ExchangeType.CREATE_CHILD_SA: Input.CREATE_CHILD_SA_RESPONSE,
    ExchangeType.INFORMATIONAL: Input.INFORMATIONAL_RESPONSE,
}


def allowed(state: IkeState, inp: Input) -> frozenset[IkeState]:
    """The states ``inp`` may lead to from ``state`` (empty: not allowed)."""
    return TRANSITIONS.get((state, inp), frozenset())
