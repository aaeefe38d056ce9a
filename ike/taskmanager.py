"""Message IDs, the request window and retransmission (RFC 7296 §2.1-§2.3).

The mechanism only: which message ID comes next, which request is in
flight, when to send it again, and which response to replay for a
retransmitted request. What goes *into* a message is the tasks' business
(:mod:`ike.exchanges`); what a message does to the IKE SA is the session's.

Rules (window size 1, §2.3):

1. We have at most one request of our own in flight. Others wait in a FIFO
   queue of exchanges and are started, one at a time, when the previous one
   completes.
2. Our requests use message IDs 0, 1, 2, ... in order; a retransmission
   reuses the exact datagram (same ID, same bytes, same IV).
3. From the peer we accept the request with the next expected ID (processed
   once), or the previous one (answered from the cached response, never
   processed again); anything else is out of the window and dropped.
4. A response is accepted only for the request in flight, by ID.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from ike.constants import ExchangeType
from ike.errors import LocalError
from ike.events import Address, Retransmitted
from ike.policy import RetransmitPolicy

if TYPE_CHECKING:
    from ike.exchanges.base import InitiatorTask
    from ike.exchanges.context import SaContext

MESSAGE_ID_MAX = 0xFFFFFFFF  # §2.2: 32 bits, never wraps within one IKE SA


@dataclass
class Exchange:
    """One request/response we initiate: the tasks whose halves fill and read it."""

    exchange_type: ExchangeType
    tasks: Sequence[InitiatorTask]
    retransmit: bool = True  # False: send once and forget (a last word before dying)
    # Asked just before the exchange is started: False drops it unsent (it became
    # moot while queued, e.g. the peer rekeyed the Child SA first, §2.8.1).
    wanted: Callable[[SaContext], bool] | None = None

    @property
    def name(self) -> str:
        return "+".join(type(t).__name__ for t in self.tasks)


@dataclass
class InFlight:
    """Our request on the wire, waiting for its response."""

    exchange: Exchange
    message_id: int
    datagram: bytes = field(repr=False)
    src: Address
    dst: Address
    attempt: int  # 0 = first transmission
    deadline: float


@dataclass(frozen=True)
class CachedResponse:
    """The last response we sent, replayed for a retransmitted request (§2.1)."""

    message_id: int
    request: bytes = field(repr=False)  # the request datagram as first received
    datagram: bytes = field(repr=False)
    peer: Address | None = None  # where the request came from: the only address we replay to


class RequestKind(Enum):
    NEW = auto()  # the next expected request: process it
    RETRANSMIT = auto()  # the previous one: replay the cached response
    OUT_OF_WINDOW = auto()  # anything else: drop (§2.3)


class Timeout(Enum):
    RETRANSMIT = auto()
    EXHAUSTED = auto()


class TaskManager:
    """Message-ID bookkeeping for one IKE SA (both directions)."""

    def __init__(self, policy: RetransmitPolicy) -> None:
        self.policy = policy
        # a list, not a deque: it holds an exchange or two, and an empty deque costs
        # 600 bytes per IKE SA (a hub holds thousands, docs/performance.md)
        self.queue: list[Exchange] = []
        self.in_flight: InFlight | None = None
        self.next_request_id = 0  # the ID of our next request
        self.expected_request_id = 0  # the ID of the peer's next request
        self.cached: CachedResponse | None = None

    # -- our requests -------------------------------------------------------

    def enqueue(self, exchange: Exchange, *, first: bool = False) -> None:
        if first:
            self.queue.insert(0, exchange)
        else:
            self.queue.append(exchange)

    def next_exchange(self) -> Exchange | None:
        """The exchange to start now, if the window is free (rule 1)."""
        if self.in_flight is not None or not self.queue:
            return None
        return self.queue.pop(0)

    def take_queue(self) -> list[Exchange]:
        """Remove and return the exchanges not started yet (they move to a new IKE SA)."""
        queued = list(self.queue)
        self.queue.clear()
        return queued

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return self.in_flight is None and not self.queue

    def pending_tasks(self) -> list[InitiatorTask]:
        """Tasks of the exchange in flight and of the queued ones, in order."""
        exchanges = ([self.in_flight.exchange] if self.in_flight else []) + list(self.queue)
        return [task for exchange in exchanges for task in exchange.tasks]

    def in_flight_tasks(self) -> Sequence[InitiatorTask]:
        return () if self.in_flight is None else self.in_flight.exchange.tasks

    def send(
        self, exchange: Exchange, datagram: bytes, src: Address, dst: Address, now: float
    ) -> int:
        """Record a request as sent; returns its message ID (rule 2)."""
        if self.in_flight is not None:
            raise LocalError("a request is already in flight (window size 1)")
        message_id = self.next_request_id
        if message_id > MESSAGE_ID_MAX:
            raise LocalError("message IDs exhausted: the IKE SA must be rekeyed")
        self.next_request_id += 1
        if exchange.retransmit:
            deadline = now + self._timeout(exchange, 0)
            self.in_flight = InFlight(exchange, message_id, datagram, src, dst, 0, deadline)
        return message_id

    def resend_same_id(self, datagram: bytes, src: Address, dst: Address, now: float) -> None:
        """Replace the request in flight by a new one under the same ID.

        Only IKE_SA_INIT does this: after INVALID_KE_PAYLOAD or COOKIE the
        initiator starts over with message ID 0 (§1.2, §2.6).
        """
        flight = self._require_in_flight()
        flight.datagram, flight.src, flight.dst = datagram, src, dst
        flight.attempt = 0
        flight.deadline = now + self._timeout(flight.exchange, 0)

    def peek_next_id(self) -> int:
        return self.next_request_id

    def is_response_to_in_flight(self, message_id: int, exchange_type: int) -> bool:
        flight = self.in_flight
        return (
            flight is not None
            and flight.message_id == message_id
            and flight.exchange.exchange_type == exchange_type
        )

    def in_flight_dst(self) -> Address | None:
        """Where our request in flight went (its response must come from there)."""
        return None if self.in_flight is None else self.in_flight.dst

    def complete(self) -> Exchange:
        """The response arrived: the window is free again."""
        flight = self._require_in_flight()
        self.in_flight = None
        return flight.exchange

    def due(self, now: float) -> Timeout | None:
        flight = self.in_flight
        if flight is None or now < flight.deadline:
            return None
        if flight.attempt >= self.policy.tries:
            return Timeout.EXHAUSTED
        return Timeout.RETRANSMIT

    def retransmit(self, now: float) -> InFlight:
        """Count one more transmission of the request in flight and re-arm its timer."""
        flight = self._require_in_flight()
        flight.attempt += 1
        flight.deadline = now + self._timeout(flight.exchange, flight.attempt)
        return flight

    def retransmitted(self, flight: InFlight) -> Retransmitted:
        """The event that reports a retransmission of ``flight`` (the daemon logs it)."""
        return Retransmitted(
            exchange=flight.exchange.exchange_type.name,
            message_id=flight.message_id,
            transmission=flight.attempt + 1,
            of=self.policy.tries + 1,
            remote_addr=flight.dst,
        )

    def _timeout(self, exchange: Exchange, attempt: int) -> float:
        init = exchange.exchange_type == ExchangeType.IKE_SA_INIT
        return self.policy.timeout(attempt, init=init)

    def abandon(self) -> None:
        """Forget every request, queued or in flight (the IKE SA is going away)."""
        self.in_flight = None
        self.queue.clear()

    def _require_in_flight(self) -> InFlight:
        if self.in_flight is None:
            raise LocalError("no request in flight")
        return self.in_flight

    # -- the peer's requests ------------------------------------------------

    def classify(self, message_id: int) -> RequestKind:
        if message_id == self.expected_request_id:
            return RequestKind.NEW
        cached = self.cached
        if cached is not None and message_id == cached.message_id:
            return RequestKind.RETRANSMIT
        return RequestKind.OUT_OF_WINDOW

    def answered(
        self, message_id: int, request: bytes, response: bytes, peer: Address | None = None
    ) -> None:
        """The request with ``message_id`` from ``peer`` was processed once; cache its response."""
        if message_id != self.expected_request_id:
            raise LocalError(f"answered request {message_id}, expected {self.expected_request_id}")
        self.cached = CachedResponse(message_id, request, response, peer)
        self.expected_request_id += 1

    @property
    def deadline(self) -> float | None:
        return None if self.in_flight is None else self.in_flight.deadline
