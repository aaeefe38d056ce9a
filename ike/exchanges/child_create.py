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

Several configured Child SAs (:class:`ike.sessionconfig.ChildConfig`): the
initiator of IKE_AUTH proposes the first one; a responder picks the one the
proposed selectors fit (:func:`choose_child`) and uses its ESP proposals
and lifetime. Every Child SA remembers the name of its configured child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ike.constants import EncrId, NotifyType, PayloadType
from ike.crypto import AEAD_SALT_LEN, derive_child_keys
from ike.errors import ParseError, PeerError, TsUnacceptable
from ike.events import Address, ChildSaKeys, ChildSaUp
from ike.exchanges import selectors
from ike.exchanges.base import Answer, Outcome, Received, Task
from ike.exchanges.context import (
    ChildSa,
    SaContext,
    esp_spi_bytes,
    refuse_on_error_notify,
    spi_int,
)
from ike.exchanges.ike_init import encr_key_len
from ike.lifetimes import Lifetime
from ike.payloads import Payload, SaPayload, TrafficSelector, TsPayload
from ike.proposals import Proposal, SelectedProposal, make_offer, select_proposal, verify_reply
from ike.sessionconfig import ChildConfig
from ike.wire import Message

Nonces = Callable[[SaContext], tuple[bytes, bytes]]


def ike_sa_nonces(ctx: SaContext) -> tuple[bytes, bytes]:
    """KEYMAT of the Child SA created by IKE_AUTH uses the IKE_SA_INIT nonces (§2.17)."""
    return ctx.nonce_i, ctx.nonce_r


def esp_proposals(child: ChildConfig) -> tuple[Proposal, ...]:
    """A child's ESP proposals for IKE_AUTH: without DH (§1.2)."""
    return tuple(p.without_dh() for p in child.esp_proposals)


Narrowed = tuple[ChildConfig, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]


def choose_child(
    children: tuple[ChildConfig, ...],
    tsi: tuple[TrafficSelector, ...],
    tsr: tuple[TrafficSelector, ...],
) -> Narrowed:
    """Responder: the configured child for the proposed TSi/TSr, with the narrowed pair.

    TSi is the initiator's side (our remote networks), TSr ours. A child the
    proposal fits entirely (nothing narrowed away) wins; else the first child
    that has something in common with it, narrowed as §2.9 says; none:
    TS_UNACCEPTABLE (the first child's reason).
    """
    first: Narrowed | None = None
    refusal: TsUnacceptable | None = None
    for child in children:
        try:
            narrowed_i = selectors.narrow(tsi, selectors.from_networks(child.remote_ts), "TSi")
            narrowed_r = selectors.narrow(tsr, selectors.from_networks(child.local_ts), "TSr")
        except TsUnacceptable as err:
            refusal = refusal or err
            continue
        if set(narrowed_i) == set(tsi) and set(narrowed_r) == set(tsr):
            return child, narrowed_i, narrowed_r
        first = first or (child, narrowed_i, narrowed_r)
    if first is None:
        raise refusal or TsUnacceptable("no Child SA is configured")
    return first


def choose_child_and_proposal(
    children: tuple[ChildConfig, ...],
    sa: SaPayload,
    msg: Message,
    proposals: Callable[[ChildConfig], tuple[Proposal, ...]],
    prefer_dh: int | None = None,
) -> tuple[Narrowed, SelectedProposal]:
    """:func:`choose_child`, then its ESP proposal. With nothing acceptable at all,
    NO_PROPOSAL_CHOSEN comes before TS_UNACCEPTABLE (as with one child)."""
    tsi, tsr = ts_payloads(msg)
    try:
        chosen = choose_child(children, tsi.selectors, tsr.selectors)
    except TsUnacceptable:
        select_proposal(sa.proposals, proposals(children[0]), prefer_dh=prefer_dh)
        raise
    return chosen, select_proposal(sa.proposals, proposals(chosen[0]), prefer_dh=prefer_dh)


def ts_payloads(msg: Message) -> tuple[TsPayload, TsPayload]:
    found = {p.payload_type: p for p in msg.find_all(TsPayload)}
    tsi, tsr = found.get(PayloadType.TSi), found.get(PayloadType.TSr)
    if tsi is None or tsr is None:
        raise ParseError("Child SA without TSi and TSr")
    return tsi, tsr


def sa_payload(msg: Message) -> SaPayload:
    sa = msg.find(SaPayload)
    if sa is None:
        raise ParseError("Child SA without SA payload")
    return sa


@dataclass(frozen=True)
class NewChild:
    """What one exchange negotiated for a Child SA, before KEYMAT.

    ``spis`` is (inbound, outbound); ``nonces`` is (Ni, Nr) of the exchange
    and ``we_initiated`` whether we sent its request, which orients the keys
    (§2.17). ``g_ir`` is the fresh DH secret of a PFS exchange (else empty).
    """

    selected: SelectedProposal
    spis: tuple[int, int]
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    nonces: tuple[bytes, bytes] = field(repr=False)
    we_initiated: bool
    g_ir: bytes = field(default=b"", repr=False)
    rekey_of: int | None = None
    child: str = ""  # the configured child's name


def install(
    ctx: SaContext,
    new: NewChild,
    now: float,
    *,
    outbound_active: bool = True,
    redundant: bool = False,
) -> ChildSa:
    """Derive KEYMAT, remember the Child SA (with its lifetime) and emit ChildSaUp."""
    prf, keys = ctx.require_keys()
    ni, nr = new.nonces
    selected = new.selected
    key_len = encr_key_len(selected.encr)
    child_keys = derive_child_keys(prf, keys.sk_d, ni, nr, key_len, AEAD_SALT_LEN, new.g_ir)
    in_key, in_salt = child_keys.inbound(new.we_initiated)
    out_key, out_salt = child_keys.outbound(new.we_initiated)
    config = ctx.config
    lifetime = config.child_config(new.child).lifetime
    child = ChildSa(
        inbound_spi=new.spis[0],
        outbound_spi=new.spis[1],
        local_ts=selectors.to_networks(new.local_ts),
        remote_ts=selectors.to_networks(new.remote_ts),
        algorithms=str(selected),
        esn=selected.esn,
        encr=EncrId(selected.encr.id),
        lifetime=Lifetime.start(now, lifetime, config.rekey_jitter, ctx.entropy),
        rekey_of=new.rekey_of,
        nonces=new.nonces,
        created_by_us=new.we_initiated,
        outbound_active=outbound_active and not redundant,
        redundant=redundant,
        name=new.child,
    )
    ctx.children[child.inbound_spi] = child
    sa_keys = ChildSaKeys(in_key, in_salt, out_key, out_salt)
    ctx.emit(child_sa_up(child, sa_keys, ctx.remote_addr))
    return child


def child_sa_up(child: ChildSa, keys: ChildSaKeys, remote_addr: Address) -> ChildSaUp:
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
        rekey_of=child.rekey_of,
        outbound_active=child.outbound_active,
        child=child.name,
    )


class ChildCreateInitiator(Task):
    """Our SA/TS proposal for a new Child SA and the check of the answer."""

    critical = False  # §1.2: a failed Child SA in IKE_AUTH leaves the IKE SA up

    def __init__(self, nonces: Nonces = ike_sa_nonces) -> None:
        self._nonces = nonces
        self._spi: int | None = None
        self._tsi: tuple[TrafficSelector, ...] = ()
        self._tsr: tuple[TrafficSelector, ...] = ()

    def build_i(self, ctx: SaContext) -> list[Payload]:
        child = ctx.config.child_configs[0]
        self._spi = ctx.allocate_esp_spi()
        self._tsi = selectors.from_networks(child.local_ts)
        self._tsr = selectors.from_networks(child.remote_ts)
        spi = esp_spi_bytes(self._spi)
        return [
            SaPayload(make_offer(esp_proposals(child), spi)),
            TsPayload(PayloadType.TSi, self._tsi),
            TsPayload(PayloadType.TSr, self._tsr),
        ]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        msg = response.message
        refuse_on_error_notify(msg, "the Child SA")
        sa = sa_payload(msg)
        child = ctx.config.child_configs[0]
        selected = verify_reply(sa.proposals, esp_proposals(child))
        tsi, tsr = ts_payloads(msg)
        selectors.check_subset(tsi.selectors, self._tsi, "TSi")
        selectors.check_subset(tsr.selectors, self._tsr, "TSr")
        if self._spi is None:
            raise ParseError("Child SA response before our request")
        spis = (self._spi, spi_int(selected.peer_spi))
        new = NewChild(
            selected, spis, tsi.selectors, tsr.selectors, self._nonces(ctx), True, child=child.name
        )
        install(ctx, new, response.now)
        return Outcome.DONE


class ChildCreateResponder(Answer):
    """Pick the configured child, select an ESP proposal, narrow, install, answer."""

    critical = False

    def __init__(self, nonces: Nonces = ike_sa_nonces) -> None:
        self._nonces = nonces
        self._answer: list[Payload] = []

    def process_r(self, ctx: SaContext, request: Received) -> None:
        msg = request.message
        sa = sa_payload(msg)
        children = ctx.config.child_configs
        chosen, selected = choose_child_and_proposal(children, sa, msg, esp_proposals)
        child, narrowed_i, narrowed_r = chosen
        spi = ctx.allocate_esp_spi()
        spis = (spi, spi_int(selected.peer_spi))
        nonces = self._nonces(ctx)
        new = NewChild(selected, spis, narrowed_r, narrowed_i, nonces, False, child=child.name)
        install(ctx, new, request.now)
        self._answer = [
            SaPayload((selected.to_wire(esp_spi_bytes(spi)),)),
            TsPayload(PayloadType.TSi, narrowed_i),
            TsPayload(PayloadType.TSr, narrowed_r),
        ]

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return self._answer


class RefuseCreateChild(Answer):
    """Answer a CREATE_CHILD_SA request with one error notify, changing nothing.

    TEMPORARY_FAILURE while the IKE SA is busy (§2.25); NO_ADDITIONAL_SAS
    would tell the peer that this IKE SA takes no further Child SAs (§1.3).
    """

    critical = True

    def __init__(self, reason: str, notify_type: NotifyType = NotifyType.NO_ADDITIONAL_SAS) -> None:
        self._reason = reason
        self._notify = notify_type

    def process_r(self, ctx: SaContext, request: Received) -> None:
        raise PeerError(self._reason, self._notify)

    def build_r(self, ctx: SaContext) -> list[Payload]:
        return []
