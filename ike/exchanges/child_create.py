"""Creating a Child SA (RFC 7296 §1.2, §2.9, §2.17): SA, TSi, TSr and KEYMAT.

In IKE_AUTH this task rides along with :mod:`ike.exchanges.ike_auth`::

    initiator:  SAi2 (ESP proposals, our inbound SPI), TSi, TSr  -->
    responder:                <--  SAr2 (one proposal, its inbound SPI), TSi, TSr
                              or   N(NO_PROPOSAL_CHOSEN | TS_UNACCEPTABLE)

The same halves serve CREATE_CHILD_SA later (with their own nonces and an
optional KE); ``nonces`` says where KEYMAT's Ni | Nr come from.

Order of events (make-before-break, DESIGN §4): the responder emits
ChildSaUp while processing the request, so the daemon installs the inbound
SA before the response that reveals its SPI leaves; the initiator emits it
when the response is processed.

ESP proposals in IKE_AUTH carry no DH transform (§1.2: the IKE SA's shared
secret already feeds SK_d); configured PFS groups apply to CREATE_CHILD_SA.
"""

from __future__ import annotations

from collections.abc import Callable

from ike.constants import EncrId, NotifyType, PayloadType
from ike.crypto import AEAD_SALT_LEN, derive_child_keys
from ike.errors import ParseError, PeerError
from ike.events import Address, ChildSaKeys, ChildSaUp
from ike.exchanges import selectors
from ike.exchanges.base import Outcome, Received
from ike.exchanges.context import (
    ChildSa,
    SaContext,
    esp_spi_bytes,
    refuse_on_error_notify,
    spi_int,
)
from ike.exchanges.ike_init import encr_key_len
from ike.payloads import Payload, SaPayload, TrafficSelector, TsPayload
from ike.proposals import Proposal, SelectedProposal, make_offer, select_proposal, verify_reply
from ike.wire import Message

Nonces = Callable[[SaContext], tuple[bytes, bytes]]


def ike_sa_nonces(ctx: SaContext) -> tuple[bytes, bytes]:
    """KEYMAT of the Child SA created by IKE_AUTH uses the IKE_SA_INIT nonces (§2.17)."""
    return ctx.nonce_i, ctx.nonce_r


def esp_proposals(ctx: SaContext) -> tuple[Proposal, ...]:
    return tuple(p.without_dh() for p in ctx.config.esp_proposals)


def _ts_payloads(msg: Message) -> tuple[TsPayload, TsPayload]:
    found = {p.payload_type: p for p in msg.find_all(TsPayload)}
    tsi, tsr = found.get(PayloadType.TSi), found.get(PayloadType.TSr)
    if tsi is None or tsr is None:
        raise ParseError("Child SA without TSi and TSr")
    return tsi, tsr


def _sa_payload(msg: Message) -> SaPayload:
    sa = msg.find(SaPayload)
    if sa is None:
        raise ParseError("Child SA without SA payload")
    return sa


def install(
    ctx: SaContext,
    selected: SelectedProposal,
    spis: tuple[int, int],
    local_ts: tuple[TrafficSelector, ...],
    remote_ts: tuple[TrafficSelector, ...],
    keymat_args: tuple[bytes, bytes, bool],
    rekey_of: int | None = None,
) -> None:
    """Derive KEYMAT, remember the Child SA and emit ChildSaUp.

    ``spis`` is (inbound, outbound); ``keymat_args`` is (Ni, Nr, whether we
    initiated the exchange that creates it), which orients the keys (§2.17).
    """
    prf, keys = ctx.require_keys()
    ni, nr, we_initiated = keymat_args
    child_keys = derive_child_keys(
        prf, keys.sk_d, ni, nr, encr_key_len(selected.encr), AEAD_SALT_LEN
    )
    in_key, in_salt = child_keys.inbound(we_initiated)
    out_key, out_salt = child_keys.outbound(we_initiated)
    child = ChildSa(
        inbound_spi=spis[0],
        outbound_spi=spis[1],
        local_ts=selectors.to_networks(local_ts),
        remote_ts=selectors.to_networks(remote_ts),
        algorithms=str(selected),
        esn=selected.esn,
        encr=EncrId(selected.encr.id),
    )
    ctx.children[child.inbound_spi] = child
    sa_keys = ChildSaKeys(in_key, in_salt, out_key, out_salt)
    ctx.emit(child_sa_up(child, sa_keys, ctx.remote_addr, rekey_of))


def child_sa_up(
    child: ChildSa, keys: ChildSaKeys, remote_addr: Address, rekey_of: int | None
) -> ChildSaUp:
    return ChildSaUp(
        inbound_spi=child.inbound_spi,
        outbound_spi=child.outbound_spi,
        keys=keys,
        encr=child.encr,
        esn=child.esn,
        local_ts=child.local_ts,
        remote_ts=child.remote_ts,
        algorithms=child.algorithms,
        remote_addr=remote_addr,
        rekey_of=rekey_of,
    )


class ChildCreateInitiator:
    """Our SA/TS proposal for a new Child SA and the check of the answer."""

    critical = False  # §1.2: a failed Child SA in IKE_AUTH leaves the IKE SA up

    def __init__(self, nonces: Nonces = ike_sa_nonces) -> None:
        self._nonces = nonces
        self._spi: int | None = None
        self._tsi: tuple[TrafficSelector, ...] = ()
        self._tsr: tuple[TrafficSelector, ...] = ()

    def build_i(self, ctx: SaContext) -> list[Payload]:
        self._spi = ctx.allocate_esp_spi()
        self._tsi = selectors.from_networks(ctx.config.local_ts)
        self._tsr = selectors.from_networks(ctx.config.remote_ts)
        spi = esp_spi_bytes(self._spi)
        return [
            SaPayload(make_offer(esp_proposals(ctx), spi)),
            TsPayload(PayloadType.TSi, self._tsi),
            TsPayload(PayloadType.TSr, self._tsr),
        ]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        msg = response.message
        refuse_on_error_notify(msg, "the Child SA")
        sa = _sa_payload(msg)
        selected = verify_reply(sa.proposals, esp_proposals(ctx))
        tsi, tsr = _ts_payloads(msg)
        selectors.check_subset(tsi.selectors, self._tsi, "TSi")
        selectors.check_subset(tsr.selectors, self._tsr, "TSr")
        if self._spi is None:
            raise ParseError("Child SA response before our request")
        ni, nr = self._nonces(ctx)
        spis = (self._spi, spi_int(selected.peer_spi))
        install(ctx, selected, spis, tsi.selectors, tsr.selectors, (ni, nr, True))
        return Outcome.DONE


class ChildCreateResponder:
    """Select an ESP proposal, narrow the selectors, install, answer."""

    critical = False

    def __init__(self, nonces: Nonces = ike_sa_nonces) -> None:
        self._nonces = nonces
        self._answer: list[Payload] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        msg = request.message
        sa = _sa_payload(msg)
        selected = select_proposal(sa.proposals, esp_proposals(ctx))
        tsi, tsr = _ts_payloads(msg)
        config = ctx.config
        # TSi is the initiator's side: our remote networks; TSr is ours.
        narrowed_i = selectors.narrow(
            tsi.selectors, selectors.from_networks(config.remote_ts), "TSi"
        )
        narrowed_r = selectors.narrow(
            tsr.selectors, selectors.from_networks(config.local_ts), "TSr"
        )
        spi = ctx.allocate_esp_spi()
        ni, nr = self._nonces(ctx)
        spis = (spi, spi_int(selected.peer_spi))
        install(ctx, selected, spis, narrowed_r, narrowed_i, (ni, nr, False))
        self._answer = [
            SaPayload((selected.to_wire(esp_spi_bytes(spi)),)),
            TsPayload(PayloadType.TSi, narrowed_i),
            TsPayload(PayloadType.TSr, narrowed_r),
        ]

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return self._answer


class RefuseCreateChild:
    """CREATE_CHILD_SA responder until rekeying lands: refuse politely (§1.3, §3.10.1).

    NO_ADDITIONAL_SAS tells the peer that this IKE SA takes no further
    Child SAs; the IKE SA itself stays up.
    """

    critical = True

    def process_r(self, ctx: SaContext, request: Received) -> None:
        raise PeerError("CREATE_CHILD_SA is not supported yet", NotifyType.NO_ADDITIONAL_SAS)

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return []
