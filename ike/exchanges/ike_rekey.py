"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18).

::

    initiator:  HDR, SK { SA(IKE, new SPIi), Ni, KEi }  -->
    responder:               <--  HDR, SK { SA(IKE, new SPIr), Nr, KEr }
                             or   N(TEMPORARY_FAILURE | NO_PROPOSAL_CHOSEN | INVALID_KE_PAYLOAD)

Keys of the new IKE SA (§2.18): ``SKEYSEED = prf(SK_d (old), g^ir (new) |
Ni | Nr)`` with the *old* SA's PRF, then ``prf+(SKEYSEED, Ni | Nr | SPIi |
SPIr)`` with the new one. The KE payload is mandatory: every IKE SA rekey is
a fresh Diffie-Hellman exchange. The initiator of this exchange is the
"original initiator" of the new SA (its I flag and SPIi).

These tasks only negotiate; the session decides what the new SA becomes
(current, or redundant after a simultaneous rekey, §2.8.2) and deletes the
old SA.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ike.constants import DhGroup, NotifyType, ProtocolId
from ike.crypto import DhPrivate, ike_keymat, rekey_skeyseed
from ike.errors import InvalidKePayload, LocalError, ParseError, PeerError
from ike.exchanges.base import Answer, FollowUps, Outcome, Received, Task
from ike.exchanges.context import SPI_LEN, SaContext, refuse_on_error_notify
from ike.exchanges.ike_init import (
    check_nonce_lengths,
    encr_key_len,
    install_ike_keys,
    negotiated_prf,
)
from ike.payloads import KePayload, NoncePayload, Payload, SaPayload
from ike.policy import NONCE_SIZE
from ike.proposals import (
    SelectedProposal,
    accepts_dh_group,
    make_offer,
    select_proposal,
    verify_reply,
)
from ike.wire import Message

if TYPE_CHECKING:
    from ike.ikesa import IkeSa

log = logging.getLogger("tunneld.ike")


def is_ike_rekey(msg: Message) -> bool:
    """A CREATE_CHILD_SA request whose SA payload proposes an IKE SA (§1.3.2)."""
    sa = msg.find(SaPayload)
    return sa is not None and any(p.protocol == ProtocolId.IKE for p in sa.proposals)


def _require(msg: Message) -> tuple[SaPayload, NoncePayload, KePayload]:
    sa, nonce, ke = msg.find(SaPayload), msg.find(NoncePayload), msg.find(KePayload)
    if sa is None or nonce is None or ke is None:
        raise ParseError("IKE SA rekey without SA, Nonce or KE payload")
    return sa, nonce, ke


def _peer_spi(selected: SelectedProposal) -> bytes:
    spi = selected.peer_spi
    if len(spi) != SPI_LEN or not any(spi):
        raise ParseError("IKE SA rekey proposal without an 8-octet non-zero SPI (§1.3.2)")
    return spi


def derive_successor(
    old: SaContext, new: SaContext, selected: SelectedProposal, g_ir: bytes
) -> None:
    """Keys of the new IKE SA from the old SA's SK_d and PRF (§2.18)."""
    prf_old, keys_old = old.require_keys()
    prf = negotiated_prf(selected)
    check_nonce_lengths(prf, new.nonce_i, new.nonce_r)
    seed = rekey_skeyseed(prf_old, keys_old.sk_d, g_ir, new.nonce_i, new.nonce_r)
    keys = ike_keymat(
        prf,
        seed,
        ni=new.nonce_i,
        nr=new.nonce_r,
        spi_i=new.spi_i,
        spi_r=new.spi_r,
        encr_key_len=encr_key_len(selected.encr),
    )
    install_ike_keys(new, selected, prf, keys)


class IkeRekeyInitiator(Task):
    """Our rekey of the IKE SA; ``successor`` holds the new SA's context when done.

    ``wanted_group`` is set when the peer answered INVALID_KE_PAYLOAD naming
    a group we also offer: the session retries with it at once, unless this
    already was such a retry (``ke_retry``).
    """

    rekeys_ike = True

    def __init__(self, group: int | None = None, *, ke_retry: bool = False) -> None:
        self.group = group
        self.ke_retry = ke_retry
        self.successor: SaContext | None = None
        self.wanted_group: int | None = None
        self._spi = b""
        self._nonce = b""
        self._dh: DhPrivate | None = None

    def build_i(self, ctx: SaContext) -> list[Payload]:
        proposal = ctx.ike_proposal
        group = self.group or (proposal.dh_group if proposal is not None else None)
        if group is None:
            raise LocalError("the IKE SA has no DH group to rekey with")
        self.group = group
        self._spi = ctx.random_ike_spi()
        self._nonce = ctx.entropy.random_bytes(NONCE_SIZE)
        self._dh = DhPrivate.generate(DhGroup(group), ctx.entropy)
        return [
            SaPayload(make_offer(ctx.config.ike_proposals, self._spi)),
            NoncePayload(self._nonce),
            KePayload(DhGroup(group), self._dh.public_bytes()),
        ]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        msg = response.message
        self._note_invalid_ke(ctx, msg)
        refuse_on_error_notify(msg, "the IKE SA rekey")
        sa, nonce, ke = _require(msg)
        selected = verify_reply(sa.proposals, ctx.config.ike_proposals)
        if self._dh is None:
            raise ParseError("IKE SA rekey response before our request")
        if selected.dh_group != self.group or ke.group != self.group:
            raise PeerError(
                f"IKE SA rekey answered with DH group {ke.group}, we sent KE for {self.group}",
                NotifyType.INVALID_SYNTAX,
            )
        g_ir = self._dh.shared_secret(ke.data)
        self._dh = None  # ephemeral: forget the private value once used
        new = ctx.successor(is_initiator=True, spi_i=self._spi, spi_r=_peer_spi(selected))
        new.nonce_i, new.nonce_r = self._nonce, nonce.nonce
        derive_successor(ctx, new, selected, g_ir)
        self.successor = new
        return Outcome.DONE

    def _note_invalid_ke(self, ctx: SaContext, msg: Message) -> None:
        for n in msg.notifies(NotifyType.INVALID_KE_PAYLOAD):
            wanted = int.from_bytes(n.data, "big") if len(n.data) == 2 else None
            if wanted is not None and accepts_dh_group(ctx.config.ike_proposals, wanted):
                self.wanted_group = wanted

    # -- follow-ups ---------------------------------------------------------------

    def on_done(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        session.ike_rekey_done(sa, self, self.successor, now)

    def on_failed(self, session: FollowUps, sa: IkeSa, err: PeerError, now: float) -> None:
        log.info("IKE SA rekey failed: %s", err)
        retry_with = None if self.ke_retry else self.wanted_group  # §1.3: once, at once
        session.ike_rekey_failed(sa, self, err, retry_with, now)

    def on_abandoned(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        session.ike_rekey_abandoned(self)


class IkeRekeyResponder(Answer):
    """The peer's rekey of the IKE SA: select, DH, keys; ``successor`` is the new SA."""

    critical = True

    def __init__(self) -> None:
        self.successor: SaContext | None = None
        self._answer: list[Payload] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        sa, nonce, ke = _require(request.message)
        selected = select_proposal(sa.proposals, ctx.config.ike_proposals, prefer_dh=int(ke.group))
        if selected.dh_group != ke.group:
            group = selected.dh_group or 0
            raise InvalidKePayload(f"KE for group {ke.group}, selected {group}", group)
        peer_spi = _peer_spi(selected)
        dh = DhPrivate.generate(DhGroup(ke.group), ctx.entropy)
        g_ir = dh.shared_secret(ke.data)
        our_spi = ctx.random_ike_spi()
        new = ctx.successor(is_initiator=False, spi_i=peer_spi, spi_r=our_spi)
        new.nonce_i, new.nonce_r = nonce.nonce, ctx.entropy.random_bytes(NONCE_SIZE)
        derive_successor(ctx, new, selected, g_ir)
        self.successor = new
        self._answer = [
            SaPayload((selected.to_wire(our_spi),)),
            NoncePayload(new.nonce_r),
            KePayload(DhGroup(ke.group), dh.public_bytes()),
        ]

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return self._answer

    def on_answered(self, session: FollowUps, sa: IkeSa, now: float) -> None:
        session.ike_rekey_answered(sa, self.successor)
