"""The two halves of a task (strongSwan's task model).

One task handles one concern of an exchange (IKE_SA_INIT's key exchange,
IKE_AUTH's authentication, the Child SA created with it, a delete...). An
exchange is one or more tasks; the request and the response are the
concatenation of what each task contributes, in order.

- The *initiator* half is :class:`InitiatorTask`: ``build_i`` adds its
  payloads to our request; ``process_i`` reads the peer's response.
- The *responder* half is :class:`ResponderTask`: ``process_r`` reads the
  peer's request; ``build_r`` adds its payloads to our response.

A task raises :class:`ike.errors.PeerError` when the peer got something
wrong; the session turns that into a notify (see rule 5 of
:mod:`ike.session`). A task whose ``critical`` flag is False concerns a
Child SA only: its failure costs the Child SA, not the IKE SA (§1.2: "the
IKE SA is still created" when the Child SA of IKE_AUTH fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from ike.events import Address
from ike.exchanges.context import SaContext
from ike.payloads import Payload
from ike.wire import Message


@dataclass(frozen=True)
class Received:
    """A message and where it came from (NAT detection and address updates need both)."""

    message: Message
    src: Address
    dst: Address
    now: float


class Outcome(Enum):
    DONE = auto()  # the task is complete
    RETRY = auto()  # send the exchange again from scratch (IKE_SA_INIT only)


class InitiatorTask(Protocol):
    critical: bool

    def build_i(self, ctx: SaContext) -> list[Payload]: ...

    def process_i(self, ctx: SaContext, response: Received) -> Outcome: ...


class ResponderTask(Protocol):
    critical: bool

    def process_r(self, ctx: SaContext, request: Received) -> None: ...

    def build_r(self, ctx: SaContext) -> list[Payload]: ...
