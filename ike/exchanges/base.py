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

Each task also owns its *follow-up* (strongSwan's task model): what the
session does once the exchange completed (``on_done``), failed
(``on_failed``), or was abandoned on a retiring IKE SA (``on_abandoned``);
and, for a responder task, once the peer's request was answered
(``on_answered``). A task asks the session through the narrow
:class:`FollowUps` protocol, so the session never switches on task types.
:class:`Task` and :class:`Answer` give the defaults (nothing to do), and
three flags say what an in-flight task means for a request of the peer
(§2.25): ``rekeys_ike``, ``changes_child_sas`` and ``deletes_ike``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING, Protocol

from ike.constants import NotifyType
from ike.errors import PeerError
from ike.events import Address, IPNetwork
from ike.exchanges.context import SaContext
from ike.payloads import Payload
from ike.wire import Message

if TYPE_CHECKING:
    from ike.ikesa import IkeSa

Selectors = tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]


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
    IGNORED = auto()  # a duplicate of an answer already acted on: keep waiting (IKE_SA_INIT)


class FollowUps(Protocol):
    """What a task may ask of the session after its exchange (see the module docstring)."""

    @property
    def ctx(self) -> SaContext:
        """The current IKE SA's context."""
        ...

    @property
    def established(self) -> bool: ...

    def delete_child(self, inbound_spi: int, reason: str) -> None:
        """Queue a DELETE for a Child SA (once; nothing if it is gone or going)."""

    def delete_child_again(self, inbound_spi: int, reason: str) -> None:
        """Queue a DELETE on the current IKE SA for a Child SA we still hold."""

    def create_child(self, ts: Selectors | None, child: str = "") -> object:
        """Queue a CREATE_CHILD_SA for a new Child SA of the configured ``child``
        (with these selectors, else the child's)."""

    def exchange_succeeded(self) -> None:
        """A CREATE_CHILD_SA of ours went through (ends a TEMPORARY_FAILURE streak)."""

    def note_temporary_failure(self, now: float) -> None: ...

    def ike_rekey_done(
        self, sa: IkeSa, task: object, successor: SaContext | None, now: float
    ) -> None:
        """Our rekey ``task`` of ``sa`` completed with the new SA ``successor``."""

    def ike_rekey_failed(
        self, sa: IkeSa, task: object, err: PeerError, wanted_group: int | None, now: float
    ) -> None:
        """Our rekey ``task`` of ``sa`` failed; ``wanted_group``: try again with it."""

    def ike_rekey_abandoned(self, task: object) -> None: ...

    def ike_rekey_answered(self, sa: IkeSa, successor: SaContext | None) -> None: ...

    def peer_informational(
        self, sa: IkeSa, ike_deleted: bool, fatal: NotifyType | None, now: float
    ) -> None: ...


class InitiatorTask(Protocol):
    critical: bool
    rekeys_ike: bool
    changes_child_sas: bool
    deletes_ike: bool
    description: str | None

    def build_i(self, ctx: SaContext) -> list[Payload]: ...

    def process_i(self, ctx: SaContext, response: Received) -> Outcome: ...

    def on_done(self, session: FollowUps, sa: IkeSa, now: float) -> None: ...

    def on_failed(self, session: FollowUps, sa: IkeSa, err: PeerError, now: float) -> None: ...

    def on_abandoned(self, session: FollowUps, sa: IkeSa, now: float) -> None: ...


class ResponderTask(Protocol):
    critical: bool

    def process_r(self, ctx: SaContext, request: Received) -> None: ...

    def build_r(self, ctx: SaContext) -> list[Payload]: ...

    def on_answered(self, session: FollowUps, sa: IkeSa, now: float) -> None: ...


class Task:
    """Defaults of an initiator task: critical, no follow-up, no special meaning."""

    critical = True
    rekeys_ike = False  # an IKE SA rekey of ours on the wire (§2.25.1)
    changes_child_sas = False  # a Child SA exchange of ours on the wire (§2.25.2)
    deletes_ike = False
    description: str | None = None  # for logs: what went unanswered

    def on_done(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        return None

    def on_failed(self, session: FollowUps, sa: IkeSa, err: PeerError, now: float) -> None:
        return None

    def on_abandoned(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        return None


class Answer:
    """Defaults of a responder task: critical, nothing to do once answered."""

    critical = True

    def on_answered(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        return None
