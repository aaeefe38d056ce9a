"""CREATE_CHILD_SA for Child SAs (RFC 7296 §1.3.1, §1.3.3): rekey one, or add one.

::

    initiator:  HDR, SK { [N(REKEY_SA, ESP, old inbound SPI)], SA(new inbound SPI),
                          Ni, [KEi], TSi, TSr }  -->
    responder:         <--  HDR, SK { SA(its new inbound SPI), Nr, [KEr], TSi, TSr }
                       or   N(TEMPORARY_FAILURE | CHILD_SA_NOT_FOUND | NO_PROPOSAL_CHOSEN |
                              INVALID_KE_PAYLOAD | TS_UNACCEPTABLE)

``KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)`` (§2.17). A DH group in the
configured ESP proposals (e.g. ``aes256gcm16-x25519``) asks for PFS: KEi in
the request, KEr in the answer, and the fresh secret in KEYMAT.

Races and collisions, as this module decides them:

1. Responder, the SA named by REKEY_SA is unknown: CHILD_SA_NOT_FOUND with
   that SPI (§2.25). The initiator then forgets the SA silently and creates
   a new one from scratch unless a successor exists already.
2. Responder, we are deleting that SA, or it was replaced already:
   TEMPORARY_FAILURE (§2.25.1); the initiator retries after a random delay
   if the SA still needs it.
3. Responder, our own rekey of the same SA is on the wire: answer as usual
   (§2.25.1); the collision is settled when our response arrives. Our rekey
   still queued is dropped unsent (the SA is replaced already).
4. Initiator, our rekey completes while the peer's rekey of the same SA was
   answered: of the two new SAs, the one created by the exchange holding the
   lowest of the four nonces (octet by octet) is redundant and is deleted
   by the endpoint that created it (§2.8.1); the creator of the survivor
   deletes the old SA. A redundant SA never sends (``outbound_active``
   False); the survivor's responder side starts sending when the old SA goes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ike.constants import DhGroup, NotifyType, PayloadType, ProtocolId
from ike.crypto import DhPrivate
from ike.errors import InvalidKePayload, ParseError, PeerError
from ike.events import IPNetwork
from ike.exchanges import selectors
from ike.exchanges.base import Answer, FollowUps, Outcome, Received, Task
from ike.exchanges.child_create import (
    NewChild,
    choose_child_and_proposal,
    install,
    sa_payload,
    ts_payloads,
)
from ike.exchanges.context import (
    ESP_SPI_LEN,
    ChildSa,
    ChildStatus,
    SaContext,
    esp_spi_bytes,
    refuse_on_error_notify,
    spi_int,
)
from ike.lifetimes import random_delay
from ike.payloads import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsPayload,
)
from ike.policy import NONCE_SIZE, REKEY_RETRY, TEMPORARY_FAILURE_RETRY
from ike.proposals import (
    Proposal,
    accepts_dh_group,
    first_dh_group,
    make_offer,
    verify_reply,
)
from ike.sessionconfig import ChildConfig
from ike.wire import Message

REDUNDANT = "redundant after a simultaneous rekey (RFC 7296 §2.8.1)"
REKEYED = "rekeyed"

if TYPE_CHECKING:
    from ike.ikesa import IkeSa

log = logging.getLogger("tunneld.ike")


class ChildSaNotFound(PeerError):
    """§2.25: a rekey of a Child SA we do not have; the notify carries its SPI."""

    notify = NotifyType.CHILD_SA_NOT_FOUND

    def __init__(self, spi: bytes) -> None:
        super().__init__(f"no Child SA with SPI {spi.hex()} to rekey")
        self.spi = spi


def pfs_group(child: ChildConfig) -> int | None:
    """The DH group of our KEi in CREATE_CHILD_SA: the first one in the child's ESP proposals."""
    return first_dh_group(child.esp_proposals)


def _child_proposals(child: ChildConfig) -> tuple[Proposal, ...]:
    return child.esp_proposals


def peer_successor(ctx: SaContext, inbound_spi: int) -> ChildSa | None:
    """The SA we created answering the peer's rekey of ``inbound_spi``, if any."""
    for child in ctx.children.values():
        if child.rekey_of == inbound_spi and not child.created_by_us:
            return child
    return None


def lowest_nonce_in(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1: whether the lowest of the four nonces is one of ``ours``.

    Python compares bytes octet by octet, a prefix being the lower, exactly
    as the RFC asks. Equal minima (never seen with 32-octet nonces) count as
    "not ours" on both sides, which keeps both new SAs rather than none.
    """
    return min(ours) < min(theirs)


def _rekey_sa_notify(msg: Message) -> NotifyPayload | None:
    found = msg.notifies(NotifyType.REKEY_SA)
    return found[0] if found else None


class ChildSaInitiator(Task):
    """Our CREATE_CHILD_SA for a Child SA: rekey ``rekey_of`` (our inbound SPI) or add one.

    ``child`` names the configured child (its ESP proposals; for a new one
    also its selectors, unless ``ts`` gives others); a rekey inherits it.
    After the exchange, its follow-up sends DELETE for ``deletes`` ((inbound
    SPI, reason) pairs) and, after CHILD_SA_NOT_FOUND without a successor
    (``recreate``), creates the Child SA from scratch. ``ke_retry``: this
    exchange already uses the group the peer asked for with INVALID_KE_PAYLOAD.
    """

    changes_child_sas = True

    def __init__(
        self,
        rekey_of: int | None,
        group: int | None,
        ts: tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]] | None = None,
        *,
        ke_retry: bool = False,
        child: str = "",
    ) -> None:
        self.rekey_of = rekey_of
        self.child = child
        self.group = group
        self.ke_retry = ke_retry
        self.ts = ts
        self.deletes: list[tuple[int, str]] = []
        self.recreate = False
        self.created: ChildSa | None = None
        self.finished = False  # done, failed or abandoned (keep_children waits for it)
        self._spi = 0
        self._nonce = b""
        self._dh: DhPrivate | None = None
        self._wanted_group: int | None = None
        self._offered: tuple[TrafficSelector, ...] = ()
        self._offered_r: tuple[TrafficSelector, ...] = ()

    def wanted(self, ctx: SaContext) -> bool:
        """A queued rekey is moot once the SA is gone or the peer rekeyed it first."""
        if self.rekey_of is None:
            return True
        child = ctx.children.get(self.rekey_of)
        return child is not None and child.status is ChildStatus.REKEY_QUEUED

    def config(self, ctx: SaContext) -> ChildConfig:
        return ctx.config.child_config(self.child)

    def build_i(self, ctx: SaContext) -> list[Payload]:
        config = self.config(ctx)
        local, remote = self.ts or (config.local_ts, config.remote_ts)
        notify: list[Payload] = []
        if self.rekey_of is not None:
            child = ctx.children[self.rekey_of]
            child.status = ChildStatus.REKEY_SENT
            local, remote = child.local_ts, child.remote_ts
            spi = esp_spi_bytes(self.rekey_of)
            notify = [NotifyPayload(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=spi)]
        self._offered = selectors.from_networks(local)
        self._offered_r = selectors.from_networks(remote)
        self._spi = ctx.allocate_esp_spi()
        self._nonce = ctx.entropy.random_bytes(NONCE_SIZE)
        ke: list[Payload] = []
        if self.group is not None:
            self._dh = DhPrivate.generate(DhGroup(self.group), ctx.entropy)
            ke = [KePayload(DhGroup(self.group), self._dh.public_bytes())]
        return [
            *notify,
            SaPayload(make_offer(config.esp_proposals, esp_spi_bytes(self._spi))),
            NoncePayload(self._nonce),
            *ke,
            TsPayload(PayloadType.TSi, self._offered),
            TsPayload(PayloadType.TSr, self._offered_r),
        ]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        msg = response.message
        self._note_invalid_ke(ctx, msg)
        refuse_on_error_notify(msg, "the Child SA rekey" if self.rekey_of else "the new Child SA")
        selected = verify_reply(sa_payload(msg).proposals, self.config(ctx).esp_proposals)
        nonce = msg.find(NoncePayload)
        if nonce is None:
            raise ParseError("CREATE_CHILD_SA response without Nonce")
        g_ir = self._shared_secret(selected.dh_group, msg.find(KePayload))
        tsi, tsr = ts_payloads(msg)
        selectors.check_subset(tsi.selectors, self._offered, "TSi")
        selectors.check_subset(tsr.selectors, self._offered_r, "TSr")
        spis = (self._spi, spi_int(selected.peer_spi))
        new = NewChild(
            selected, spis, tsi.selectors, tsr.selectors, (self._nonce, nonce.nonce), True,
            g_ir, self.rekey_of, self.child,
        )  # fmt: skip
        self._settle(ctx, new, response.now)
        return Outcome.DONE

    def _shared_secret(self, group: int | None, ke: KePayload | None) -> bytes:
        if group is None:
            return b""
        if self._dh is None or ke is None or ke.group != group or group != self.group:
            raise PeerError(
                f"CREATE_CHILD_SA answered with DH group {group} without our KE for it",
                NotifyType.INVALID_SYNTAX,
            )
        secret = self._dh.shared_secret(ke.data)
        self._dh = None  # ephemeral
        return secret

    def _settle(self, ctx: SaContext, new: NewChild, now: float) -> None:
        """Install the new SA and decide what to delete (rule 4 of the module docstring)."""
        old = ctx.children.get(self.rekey_of) if self.rekey_of is not None else None
        rival = peer_successor(ctx, self.rekey_of) if self.rekey_of is not None else None
        if rival is not None and lowest_nonce_in(new.nonces, rival.nonces):
            self.created = install(ctx, new, now, redundant=True)
            self.deletes.append((self.created.inbound_spi, REDUNDANT))
            if old is not None:
                old.status = ChildStatus.REKEYED  # the survivor's creator deletes it
            return
        if rival is not None:
            rival.redundant = True  # the peer created it: the peer deletes it
        self.created = install(ctx, new, now)
        if old is None:
            return
        if old.status is ChildStatus.DELETING:  # deleted locally meanwhile: so is its successor
            self.deletes.append((self.created.inbound_spi, "replaced Child SA was deleted"))
        else:
            self.deletes.append((old.inbound_spi, REKEYED))

    def _note_invalid_ke(self, ctx: SaContext, msg: Message) -> None:
        for n in msg.notifies(NotifyType.INVALID_KE_PAYLOAD):
            wanted = int.from_bytes(n.data, "big") if len(n.data) == 2 else None
            if wanted is not None and accepts_dh_group(self.config(ctx).esp_proposals, wanted):
                self._wanted_group = wanted

    # -- follow-ups ---------------------------------------------------------------

    def on_done(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        self.finished = True
        session.exchange_succeeded()
        for spi, reason in self.deletes:
            session.delete_child(spi, reason)

    def on_failed(self, session: FollowUps, sa: IkeSa, err: PeerError, now: float) -> None:
        log.info("CREATE_CHILD_SA for a Child SA failed: %s", err)
        self.finished = True
        self.failed(session.ctx, err, now)
        if err.notify == NotifyType.TEMPORARY_FAILURE:
            session.note_temporary_failure(now)
        if self.recreate and self.ts and session.established:  # §2.25
            session.create_child(self.ts, self.child)

    def on_abandoned(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        err = PeerError("no answer on a retiring IKE SA", NotifyType.TEMPORARY_FAILURE)
        self.finished = True
        self.failed(session.ctx, err, now)  # retried after a short random delay

    def failed(self, ctx: SaContext, err: PeerError, now: float) -> None:
        """The exchange failed (refused, garbled, or abandoned): put the old SA back in line."""
        self._dh = None
        if self.rekey_of is None:
            return
        old = ctx.children.get(self.rekey_of)
        if old is None or old.status is not ChildStatus.REKEY_SENT:
            return
        if peer_successor(ctx, old.inbound_spi) is not None:
            old.status = ChildStatus.REKEYED  # the peer's rekey of it went through
            return
        old.status = ChildStatus.INSTALLED
        if err.notify == NotifyType.CHILD_SA_NOT_FOUND:
            ctx.drop_child(old.inbound_spi, "the peer has no such Child SA (CHILD_SA_NOT_FOUND)")
            self.recreate, self.ts = True, (old.local_ts, old.remote_ts)
        elif err.notify == NotifyType.TEMPORARY_FAILURE:
            old.retry_at = now + random_delay(ctx.entropy, TEMPORARY_FAILURE_RETRY)
        elif self._wanted_group is not None and not self.ke_retry:
            old.ke_group, old.retry_at = self._wanted_group, now  # §1.3: again, at once
        else:
            old.retry_at = now + random_delay(ctx.entropy, REKEY_RETRY)


class ChildSaResponder(Answer):
    """The peer's CREATE_CHILD_SA for a Child SA (rules 1-3 of the module docstring).

    ``busy`` is why we cannot take it now (our IKE SA rekey is on the wire,
    or the IKE SA is being deleted): answered TEMPORARY_FAILURE.
    """

    critical = True

    def __init__(self, busy: str | None = None) -> None:
        self._busy = busy
        self._answer: list[Payload] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        msg = request.message
        if self._busy is not None:
            raise PeerError(self._busy, NotifyType.TEMPORARY_FAILURE)
        old = self._rekeyed_sa(ctx, msg)
        sa = sa_payload(msg)
        nonce, ke = msg.find(NoncePayload), msg.find(KePayload)
        if nonce is None:
            raise ParseError("CREATE_CHILD_SA request without Nonce")
        prefer = int(ke.group) if ke is not None else None
        # A rekey keeps its child's configuration; a new Child SA picks one by its selectors.
        children = ctx.config.child_configs if old is None else (ctx.config.child_config(old.name),)
        chosen, selected = choose_child_and_proposal(
            children, sa, msg, _child_proposals, prefer_dh=prefer
        )
        child, narrowed_i, narrowed_r = chosen
        dh, g_ir = self._key_exchange(ctx, selected.dh_group, ke)
        spi = ctx.allocate_esp_spi()
        nr = ctx.entropy.random_bytes(NONCE_SIZE)
        rekey_of = None if old is None else old.inbound_spi
        spis = (spi, spi_int(selected.peer_spi))
        new = NewChild(
            selected, spis, narrowed_r, narrowed_i, (nonce.nonce, nr), False, g_ir, rekey_of,
            child.name,
        )  # fmt: skip
        if old is not None and old.status is not ChildStatus.REKEY_SENT:
            old.status = ChildStatus.REKEYED  # a queued rekey of ours becomes moot
        # Make-before-break: inbound now, outbound once the peer surely has its inbound SA.
        install(ctx, new, request.now, outbound_active=old is None)
        ke_out = [] if dh is None else [KePayload(DhGroup(dh.group), dh.public_bytes())]
        self._answer = [
            SaPayload((selected.to_wire(esp_spi_bytes(spi)),)),
            NoncePayload(nr),
            *ke_out,
            TsPayload(PayloadType.TSi, narrowed_i),
            TsPayload(PayloadType.TSr, narrowed_r),
        ]

    def _rekeyed_sa(self, ctx: SaContext, msg: Message) -> ChildSa | None:
        """The Child SA a REKEY_SA notify names (by our outbound SPI), or None for a new one."""
        rekey = _rekey_sa_notify(msg)
        if rekey is None:
            return None
        if rekey.protocol != ProtocolId.ESP or len(rekey.spi) != ESP_SPI_LEN:
            raise ChildSaNotFound(rekey.spi)
        old = ctx.child_by_outbound(spi_int(rekey.spi))
        if old is None:
            raise ChildSaNotFound(rekey.spi)
        replaced = old.status in (ChildStatus.DELETING, ChildStatus.REKEYED) or old.redundant
        if replaced or peer_successor(ctx, old.inbound_spi) is not None:
            raise PeerError(
                f"Child SA {old.inbound_spi:08x} is being deleted or replaced",
                NotifyType.TEMPORARY_FAILURE,
            )
        return old

    def _key_exchange(
        self, ctx: SaContext, group: int | None, ke: KePayload | None
    ) -> tuple[DhPrivate | None, bytes]:
        if group is None:
            return None, b""
        if ke is None or ke.group != group:
            raise InvalidKePayload(f"PFS needs KE for group {group}", group)
        dh = DhPrivate.generate(DhGroup(group), ctx.entropy)
        return dh, dh.shared_secret(ke.data)

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return self._answer
