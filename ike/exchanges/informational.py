"""INFORMATIONAL (RFC 7296 §1.4, §1.5): deletes, error reports, liveness.

::

    HDR, SK { D(IKE) }                -->  <--  HDR, SK { }          (§1.4.1)
    HDR, SK { D(ESP, our inbound SPI) } -->  <--  HDR, SK { D(ESP, theirs) }
    HDR, SK { }                        -->  <--  HDR, SK { }          (liveness)
    HDR, SK { N(AUTHENTICATION_FAILED) } -->  (sent once, §2.21.2)

Deleting the IKE SA deletes its Child SAs with it (§1.4.1); the session
turns a completed IKE delete into ChildSaDown + IkeSaDown events. Deleting a
Child SA names the SPI the *sender* receives on; the answer names the other
direction of the same pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.constants import NotifyType, ProtocolId
from ike.exchanges.base import Answer, FollowUps, Outcome, Received, Task
from ike.exchanges.context import ESP_SPI_LEN, SaContext, esp_spi_bytes, notify, spi_int
from ike.payloads import DeletePayload, Payload

# §2.21.2 / §3.10.1: error notifies in an INFORMATIONAL request after which
# the peer considers the IKE SA dead. Other error types in a request are ignored.
FATAL_NOTIFIES = frozenset({NotifyType.AUTHENTICATION_FAILED})

if TYPE_CHECKING:
    from ike.ikesa import IkeSa


class DeleteIkeTask(Task):
    """Delete the whole IKE SA (and so every Child SA)."""

    deletes_ike = True

    def build_i(self, ctx: SaContext) -> list[Payload]:
        return [DeletePayload(ProtocolId.IKE)]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        return Outcome.DONE  # §1.4.1: the answer is empty; the session goes down


class DeleteChildTask(Task):
    """Delete one Child SA, named by our inbound SPI."""

    changes_child_sas = True

    def __init__(self, inbound_spi: int, reason: str = "deleted locally") -> None:
        self.inbound_spi = inbound_spi
        self.reason = reason

    def build_i(self, ctx: SaContext) -> list[Payload]:
        return [DeletePayload(ProtocolId.ESP, (esp_spi_bytes(self.inbound_spi),))]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        # Whatever the answer says, the SA is gone on our side.
        ctx.drop_child(self.inbound_spi, self.reason)
        return Outcome.DONE

    def on_abandoned(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        """Sent on an IKE SA that retired unanswered: delete again on the current one."""
        if self.inbound_spi in session.ctx.children:
            session.delete_child_again(self.inbound_spi, self.reason)


class LivenessTask(Task):
    """An empty INFORMATIONAL request: is the peer still there (§1.4)?"""

    description: str | None = "a liveness check"

    def build_i(self, ctx: SaContext) -> list[Payload]:
        return []

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        return Outcome.DONE


class NotifyErrorTask(Task):
    """Report an error about the IKE SA (§2.21.2); sent without waiting for an answer."""

    def __init__(self, notify_type: NotifyType) -> None:
        self.notify_type = notify_type

    def build_i(self, ctx: SaContext) -> list[Payload]:
        return [notify(self.notify_type)]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        return Outcome.DONE


class InformationalResponder(Answer):
    """Answer deletes, error reports and liveness checks.

    After ``process_r``: ``ike_deleted`` is True when the peer deleted the
    IKE SA; ``fatal_notify`` is set when it reported an error that ends it.
    """

    critical = True

    def __init__(self) -> None:
        self.ike_deleted = False
        self.fatal_notify: NotifyType | None = None
        self._deleted_inbound: list[int] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        msg = request.message
        for delete in msg.find_all(DeletePayload):
            if delete.protocol == ProtocolId.IKE:
                self.ike_deleted = True
            elif delete.protocol == ProtocolId.ESP:
                self._delete_children(ctx, delete)
        for n in msg.notifies():
            if n.notify_type in FATAL_NOTIFIES:
                self.fatal_notify = NotifyType(n.notify_type)

    def _delete_children(self, ctx: SaContext, delete: DeletePayload) -> None:
        for spi in delete.spis:
            if len(spi) != ESP_SPI_LEN:
                continue
            child = ctx.child_by_outbound(spi_int(spi))
            if child is None:  # §1.4.1: unknown SPIs are ignored (maybe deleted already)
                continue
            self._deleted_inbound.append(child.inbound_spi)
            ctx.drop_child(child.inbound_spi, "deleted by peer")

    def build_r(self, ctx: SaContext) -> list[Payload]:
        if self.ike_deleted or not self._deleted_inbound:
            return []
        spis = tuple(esp_spi_bytes(spi) for spi in self._deleted_inbound)
        return [DeletePayload(ProtocolId.ESP, spis)]

    def on_answered(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        session.peer_informational(sa, self.ike_deleted, self.fatal_notify, now)
