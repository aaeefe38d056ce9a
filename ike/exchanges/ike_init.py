"""IKE_SA_INIT (RFC 7296 §1.2): algorithms, Diffie-Hellman, nonces, NAT detection.

::

    HDR(SPIi, 0), SAi1, KEi, Ni, N(NAT_DETECTION_SOURCE_IP),
        N(NAT_DETECTION_DESTINATION_IP), N(SIGNATURE_HASH_ALGORITHMS)  -->
                  <--  HDR(SPIi, SPIr), SAr1, KEr, Nr, N(NAT_DETECTION_*) x2,
                       [CERTREQ], N(SIGNATURE_HASH_ALGORITHMS)

Refusals the responder answers with, statelessly (SPIr = 0):
N(NO_PROPOSAL_CHOSEN); N(INVALID_KE_PAYLOAD, group) when the initiator's KE
group is acceptable but not the one selected (§1.2, §2.7). The initiator
retries once with the requested group if it offered that group (§1.2), and
with a COOKIE when asked to (§2.6).

NAT detection (§2.23): each side sends SHA-1(SPIi | SPIr | IP | port) of its
own address (SOURCE) and of the address it sends to (DESTINATION). With
``force_encap`` we send a random SOURCE hash instead, as strongSwan's
``encap = yes`` does: the peer then believes we are behind a NAT, and both
sides move to UDP 4500 and UDP-encapsulated ESP.
"""

from __future__ import annotations

import functools
import ipaddress

from cryptography.hazmat.primitives import hashes

from ike.auth import parse_signature_hash_algorithms, signature_hash_algorithms_data
from ike.certs import certreq_data
from ike.constants import CertEncoding, DhGroup, EncrId, NotifyType, PrfId
from ike.crypto import DhPrivate, IkeKeys, Prf, SkCipher, derive_ike_keys
from ike.errors import InvalidKePayload, LocalError, ParseError, PeerError
from ike.events import Address
from ike.exchanges.authn import check_can_sign
from ike.exchanges.base import Answer, Outcome, Received, Task
from ike.exchanges.context import (
    SPI_LEN,
    SaContext,
    notify,
    refuse_on_error_notify,
)
from ike.payloads import CertReqPayload, KePayload, NoncePayload, Payload, SaPayload
from ike.policy import NONCE_SIZE
from ike.proposals import (
    SelectedProposal,
    TransformSpec,
    accepts_dh_group,
    first_dh_group,
    make_offer,
    select_proposal,
    verify_reply,
)
from ike.sessionconfig import PubkeyAuth
from ike.wire import Message

NATD_HASH_LEN = 20  # §2.23: SHA-1
MAX_COOKIE_RETRIES = 3  # ours: a responder asking more often is broken or hostile
_CHACHA_KEY_LEN = 32  # RFC 7634 §2


def natd_hash(spi_i: bytes, spi_r: bytes, addr: Address) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port), §2.23."""
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spi_i + spi_r + _packed(addr[0]) + addr[1].to_bytes(2, "big"))
    return digest.finalize()


@functools.lru_cache(maxsize=1024)
def _packed(ip: str) -> bytes:
    """An address in network order; four per IKE_SA_INIT, mostly the same few."""
    return ipaddress.ip_address(ip).packed


def natd_payloads(
    ctx: SaContext, spi_r: bytes, src: Address, dst: Address, fake: bytes | None = None
) -> list[Payload]:
    """Our two NAT detection notifies for a message from ``src`` to ``dst``.

    With ``force_encap`` the source hash is a fake ("we are behind a NAT"):
    ``fake`` if given (an initiator keeps one, so that its IKE_SA_INIT request
    is the same bytes each time it is built), else fresh random bytes.
    """
    if ctx.config.force_encap:
        source = fake if fake is not None else ctx.entropy.random_bytes(NATD_HASH_LEN)
    else:
        source = natd_hash(ctx.spi_i, spi_r, src)
    return [
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, source),
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(ctx.spi_i, spi_r, dst)),
    ]


def detect_nat(ctx: SaContext, received: Received) -> None:
    """Decide whether to use UDP encapsulation from the peer's NAT detection notifies.

    The hashes in a message cover the SPIs as they appear in its header. If
    the peer sent none it does not do NAT-T, and we stay on port 500.
    """
    msg = received.message
    sources = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
    dests = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
    if not sources or not dests:
        ctx.nat_t = False
        return
    peer_behind_nat = natd_hash(msg.spi_i, msg.spi_r, received.src) not in sources
    we_behind_nat = natd_hash(msg.spi_i, msg.spi_r, received.dst) not in dests
    ctx.nat_t = ctx.config.force_encap or peer_behind_nat or we_behind_nat
    ctx.behind_nat = we_behind_nat  # then we send NAT keepalives (RFC 3948 §2.3)


def sighash_notify() -> Payload:
    return notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, signature_hash_algorithms_data())


def read_peer_capabilities(ctx: SaContext, msg: Message) -> None:
    """SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4) and whether the peer asked for our cert."""
    announced = msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if announced:
        ctx.peer_hashes = parse_signature_hash_algorithms(announced[0].data)
    ctx.peer_certreq = msg.find(CertReqPayload) is not None


def encr_key_len(encr: TransformSpec) -> int:
    """Cipher key octets (without salt) of an AEAD transform."""
    if encr.id == EncrId.CHACHA20_POLY1305:
        return _CHACHA_KEY_LEN
    if encr.key_length is None:
        raise ParseError("AES-GCM transform without KEY_LENGTH (§3.3.5)")
    return encr.key_length // 8


def negotiated_prf(selected: SelectedProposal) -> Prf:
    if selected.prf is None:
        raise ParseError("IKE proposal without a PRF")
    return Prf(PrfId(selected.prf))


def check_nonce_lengths(prf: Prf, ni: bytes, nr: bytes) -> None:
    """§2.10: each nonce at least half the PRF's key size."""
    if min(len(ni), len(nr)) < prf.preferred_key_len // 2:
        raise PeerError(
            "nonce shorter than half the PRF key size (§2.10)", NotifyType.INVALID_SYNTAX
        )


def install_ike_keys(ctx: SaContext, selected: SelectedProposal, prf: Prf, keys: IkeKeys) -> None:
    """Remember the IKE SA's algorithms and keys; build the SK ciphers of both directions."""
    encr = EncrId(selected.encr.id)
    ctx.ike_proposal, ctx.prf, ctx.keys = selected, prf, keys
    ctx.cipher_out = SkCipher(encr, keys.outbound_sk_e(ctx.is_initiator))
    ctx.cipher_in = SkCipher(encr, keys.inbound_sk_e(ctx.is_initiator))


def establish_keys(ctx: SaContext, selected: SelectedProposal, g_ir: bytes) -> None:
    """SKEYSEED and the seven SK_* keys (§2.14), then the SK ciphers of both directions."""
    prf = negotiated_prf(selected)
    check_nonce_lengths(prf, ctx.nonce_i, ctx.nonce_r)
    keys = derive_ike_keys(
        prf.prf_id,
        ni=ctx.nonce_i,
        nr=ctx.nonce_r,
        g_ir=g_ir,
        spi_i=ctx.spi_i,
        spi_r=ctx.spi_r,
        encr_key_len=encr_key_len(selected.encr),
    )
    install_ike_keys(ctx, selected, prf, keys)


def _require(msg: Message) -> tuple[SaPayload, KePayload, NoncePayload]:
    sa, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
    if sa is None or ke is None or nonce is None:
        raise ParseError("IKE_SA_INIT without SA, KE or Nonce payload")
    return sa, ke, nonce


class IkeInitInitiator(Task):
    """Our IKE_SA_INIT request and the response to it."""

    critical = True

    def __init__(self, ctx: SaContext) -> None:
        group = first_dh_group(ctx.config.ike_proposals)
        if group is None:  # proposals.parse_ike_proposal requires one
            raise LocalError("no DH group configured")
        self.group = DhGroup(group)
        self.ke_retried = False
        self.cookie: bytes | None = None
        self.cookie_retries = 0
        self._dh: DhPrivate | None = None
        # force_encap: one fake NAT-D hash for every build of the request. A retry
        # (a COOKIE, or its duplicate) must not change the bytes: the responder may
        # answer either copy, and AUTH signs the request that was answered (§2.15).
        self._fake_natd: bytes | None = None

    def build_i(self, ctx: SaContext) -> list[Payload]:
        if not any(ctx.spi_i):
            ctx.spi_i = ctx.random_ike_spi()
        if not ctx.nonce_i:
            ctx.nonce_i = ctx.entropy.random_bytes(NONCE_SIZE)
        if self._dh is None or self._dh.group != self.group:
            self._dh = DhPrivate.generate(self.group, ctx.entropy)
        ctx.spi_r = bytes(SPI_LEN)
        if ctx.config.force_encap and self._fake_natd is None:
            self._fake_natd = ctx.entropy.random_bytes(NATD_HASH_LEN)
        cookie = [notify(NotifyType.COOKIE, self.cookie)] if self.cookie is not None else []
        return [
            *cookie,  # §2.6: the COOKIE notify comes first
            SaPayload(make_offer(ctx.config.ike_proposals)),
            KePayload(self.group, self._dh.public_bytes()),
            NoncePayload(ctx.nonce_i),
            *natd_payloads(ctx, bytes(SPI_LEN), ctx.local_addr, ctx.remote_addr, self._fake_natd),
            sighash_notify(),
        ]

    def process_i(self, ctx: SaContext, response: Received) -> Outcome:
        msg = response.message
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and self.cookie is not None and cookie[0].data == self.cookie:
            # the same cookie again: a duplicate, or the answer to a copy of our first
            # request that crossed our retry, which already carries it
            return Outcome.IGNORED
        if self._retry_requested(ctx, msg):
            return Outcome.RETRY
        refuse_on_error_notify(msg, "IKE_SA_INIT")
        if not any(msg.spi_r):
            raise ParseError("IKE_SA_INIT response with a zero responder SPI")
        sa, ke, nonce = _require(msg)
        selected = verify_reply(sa.proposals, ctx.config.ike_proposals)
        if selected.dh_group != self.group or ke.group != self.group:
            raise PeerError(
                f"responder answered with DH group {ke.group}, we sent KE for {self.group.name}",
                NotifyType.INVALID_SYNTAX,
            )
        if self._dh is None:
            raise ParseError("IKE_SA_INIT response before our request")
        g_ir = self._dh.shared_secret(ke.data)
        self._dh = None  # ephemeral: forget the private value as soon as it is used
        ctx.spi_r, ctx.nonce_r, ctx.init_response = msg.spi_r, nonce.nonce, msg.raw
        establish_keys(ctx, selected, g_ir)
        detect_nat(ctx, response)
        read_peer_capabilities(ctx, msg)
        check_can_sign(ctx)
        return Outcome.DONE

    def _retry_requested(self, ctx: SaContext, msg: Message) -> bool:
        """COOKIE (§2.6) or INVALID_KE_PAYLOAD (§1.2): start over, within limits."""
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie:
            if self.cookie_retries >= MAX_COOKIE_RETRIES:
                raise PeerError("responder keeps asking for a cookie")
            self.cookie, self.cookie_retries = cookie[0].data, self.cookie_retries + 1
            return True
        invalid_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if not invalid_ke:
            return False
        data = invalid_ke[0].data
        wanted = int.from_bytes(data, "big") if len(data) == 2 else None
        if (
            wanted is None
            or self.ke_retried
            or not accepts_dh_group(ctx.config.ike_proposals, wanted)
        ):
            raise InvalidKePayload(
                f"responder wants DH group {wanted}, which we did not offer or already tried",
                wanted_group=wanted or 0,
            )
        self.group, self.ke_retried = DhGroup(wanted), True
        return True


class IkeInitResponder(Answer):
    """The peer's IKE_SA_INIT request and our response."""

    critical = True

    def __init__(self) -> None:
        self._selected: SelectedProposal | None = None
        self._dh: DhPrivate | None = None

    def process_r(self, ctx: SaContext, request: Received) -> None:
        msg = request.message
        sa, ke, nonce = _require(msg)
        offered = tuple(p for cfg in ctx.configs for p in cfg.ike_proposals)
        selected = select_proposal(sa.proposals, offered, prefer_dh=int(ke.group))
        if selected.dh_group != ke.group:
            # §1.2: the KE group is not the one selected; tell the initiator which.
            group = selected.dh_group or 0
            raise InvalidKePayload(f"KE for group {ke.group}, selected {group}", group)
        dh = DhPrivate.generate(DhGroup(selected.dh_group), ctx.entropy)
        g_ir = dh.shared_secret(ke.data)
        ctx.nonce_i, ctx.init_request = nonce.nonce, msg.raw
        ctx.nonce_r = ctx.entropy.random_bytes(NONCE_SIZE)
        establish_keys(ctx, selected, g_ir)
        detect_nat(ctx, request)
        read_peer_capabilities(ctx, msg)
        self._selected, self._dh = selected, dh

    def build_r(self, ctx: SaContext) -> list[Payload]:
        if self._selected is None or self._dh is None:
            raise ParseError("IKE_SA_INIT response without a processed request")
        group = DhGroup(self._selected.dh_group or 0)
        payloads: list[Payload] = [
            SaPayload((self._selected.to_wire(),)),
            KePayload(group, self._dh.public_bytes()),
            NoncePayload(ctx.nonce_r),
            *natd_payloads(ctx, ctx.spi_r, ctx.local_addr, ctx.remote_addr),
        ]
        self._dh = None
        anchors = [
            ca
            for cfg in ctx.configs
            if isinstance(cfg.auth, PubkeyAuth)
            for ca in cfg.auth.trust_anchors
        ]
        if anchors:  # §3.7: CERTREQ in the IKE_SA_INIT response names the CAs we trust
            payloads.append(CertReqPayload(CertEncoding.X509_CERT_SIG, certreq_data(anchors)))
        payloads.append(sighash_notify())
        return payloads
