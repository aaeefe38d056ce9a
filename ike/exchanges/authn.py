"""Who the peer is: ID, CERT, CERTREQ and AUTH payloads (RFC 7296 §2.15, §3.5-§3.8).

Both roles sign (or MAC) the same shape of octets (§2.15)::

    initiator: IKE_SA_INIT request  | Nr | prf(SK_pi, IDi')
    responder: IKE_SA_INIT response | Ni | prf(SK_pr, IDr')

Checking the peer, in this order, each failure AUTHENTICATION_FAILED:

1. pick the configuration whose ``remote_id`` matches the peer's ID payload
   (a responder may hold several candidates, or ask its ``lookup``, which
   the daemon answers from the identity, the address and the proposed TSi)
   and whose method is the AUTH payload's: signatures (14, or legacy 9-11)
   for ``pubkey``, 2 for ``psk``; a looked-up configuration must also accept
   the IKE proposal IKE_SA_INIT selected (from the union of the candidates'
   proposals, before anyone's identity was known);
2. pubkey: the first CERT is the leaf; the chain must end at a configured
   trust anchor and be valid at ``wall_clock(now)``; the ID must match the
   leaf's SAN or subject; the AUTH signature must verify with the leaf's key;
3. psk: the AUTH MAC must equal ours (constant time).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from ike.auth import (
    Identity,
    PublicKey,
    choose_algorithm,
    identity_matches,
    sign_auth,
    verify_auth,
    verify_psk,
)
from ike.certs import CHAIN_CACHE, certreq_data, malformed_certificates_refused
from ike.constants import AuthMethod, CertEncoding, PayloadType
from ike.crypto import auth_octets, psk_auth
from ike.errors import AuthenticationFailed, LocalError, NoProposalChosen, ParseError
from ike.exchanges import selectors
from ike.exchanges.base import Received
from ike.exchanges.context import SaContext
from ike.payloads import AuthPayload, CertPayload, CertReqPayload, IdPayload, Payload, TsPayload
from ike.proposals import select_proposal
from ike.sessionconfig import PeerQuery, PskAuth, PubkeyAuth, SessionConfig

_SIGNATURE_METHODS = (
    AuthMethod.DIGITAL_SIGNATURE,
    AuthMethod.ECDSA_256,
    AuthMethod.ECDSA_384,
    AuthMethod.ECDSA_521,
)


def id_payload(identity: Identity, payload_type: PayloadType) -> IdPayload:
    return IdPayload(payload_type, identity.id_type, identity.data)


def cert_payloads(config: SessionConfig) -> list[Payload]:
    """Our certificate, then the intermediates (§3.6: the first CERT holds the signing key)."""
    auth = config.auth
    if not isinstance(auth, PubkeyAuth):
        return []
    certs = (auth.certificate, *auth.intermediates)
    return [CertPayload(CertEncoding.X509_CERT_SIG, c.public_bytes(Encoding.DER)) for c in certs]


def certreq_payloads(config: SessionConfig) -> list[Payload]:
    """§3.7: the CAs we trust, so that the peer sends the matching certificate."""
    auth = config.auth
    if not isinstance(auth, PubkeyAuth):
        return []
    return [CertReqPayload(CertEncoding.X509_CERT_SIG, certreq_data(auth.trust_anchors))]


def _octets(ctx: SaContext, ours: bool, id_body: bytes) -> bytes:
    """The §2.15 octets of our AUTH (``ours``) or of the peer's."""
    prf, keys = ctx.require_keys()
    signer_is_initiator = ctx.is_initiator if ours else not ctx.is_initiator
    message = ctx.init_request if signer_is_initiator else ctx.init_response
    nonce = ctx.nonce_r if signer_is_initiator else ctx.nonce_i
    sk_p = keys.sk_pi if signer_is_initiator else keys.sk_pr
    return auth_octets(message, nonce, prf, sk_p, id_body)


def build_auth(ctx: SaContext, our_id: IdPayload) -> AuthPayload:
    """Our AUTH payload over our ID payload."""
    octets = _octets(ctx, True, our_id.body())
    auth = ctx.config.auth
    if isinstance(auth, PskAuth):
        prf, _keys = ctx.require_keys()
        return AuthPayload(AuthMethod.SHARED_KEY_MIC, psk_auth(prf, auth.secret.reveal(), octets))
    return AuthPayload(AuthMethod.DIGITAL_SIGNATURE, _sign(ctx, auth, octets))


def _sign(ctx: SaContext, auth: PubkeyAuth, octets: bytes) -> bytes:
    try:
        return sign_auth(auth.private_key, octets, ctx.peer_hashes)
    except LocalError as err:  # RFC 7427 §4: the peer accepts no hash our key can use
        raise AuthenticationFailed(f"cannot sign for this peer: {err}") from None


def check_can_sign(ctx: SaContext) -> None:
    """Fail IKE_SA_INIT early if the peer's SIGNATURE_HASH_ALGORITHMS exclude our key."""
    auth = ctx.config.auth
    if isinstance(auth, PubkeyAuth):
        try:
            choose_algorithm(auth.private_key, ctx.peer_hashes)
        except LocalError as err:
            raise AuthenticationFailed(f"cannot sign for this peer: {err}") from None


def peer_identity(received: Received, payload_type: PayloadType) -> tuple[IdPayload, Identity]:
    found = [p for p in received.message.find_all(IdPayload) if p.payload_type == payload_type]
    if not found:
        raise ParseError(f"IKE_AUTH without {payload_type.name}")
    return found[0], Identity.from_payload(found[0].id_type, found[0].data)


def choose_config(ctx: SaContext, identity: Identity, method: int) -> SessionConfig:
    """Rule 1: the first candidate that expects this identity with this method."""
    for config in ctx.configs:
        if config.remote_id is not None and not config.remote_id.matches(identity):
            continue
        if not _method_fits(config, method):
            continue
        return config
    expected = ", ".join(str(c.remote_id or "any") for c in ctx.configs)
    raise AuthenticationFailed(
        f"peer identity '{identity}' with AUTH method {method} is not configured"
        f" (expected {expected})"
    )


def _method_fits(config: SessionConfig, method: int) -> bool:
    return isinstance(config.auth, PskAuth) == (method == AuthMethod.SHARED_KEY_MIC)


def look_up_config(
    ctx: SaContext, received: Received, identity: Identity, method: int
) -> SessionConfig:
    """Rule 1 with a lookup (responder): the daemon names the configuration of this
    identity; AuthenticationFailed when it names none, or one that does not fit."""
    if ctx.lookup is None:
        return choose_config(ctx, identity, method)
    idr = [p for p in received.message.find_all(IdPayload) if p.payload_type == PayloadType.IDr]
    tsi = [p for p in received.message.find_all(TsPayload) if p.payload_type == PayloadType.TSi]
    query = PeerQuery(
        idi=identity,
        idr=Identity.from_payload(idr[0].id_type, idr[0].data) if idr else None,
        remote_addr=ctx.remote_addr,
        tsi=selectors.to_networks(tsi[0].selectors) if tsi else (),
    )
    found = ctx.lookup(query)
    if isinstance(found, str):
        raise AuthenticationFailed(found)
    if found.remote_id is not None and not found.remote_id.matches(identity):
        raise LocalError(f"peer lookup for '{identity}' returned one for '{found.remote_id}'")
    if not _method_fits(found, method):
        raise AuthenticationFailed(
            f"peer identity '{identity}' used AUTH method {method}, not the one configured"
        )
    if ctx.ike_proposal is not None:
        try:
            select_proposal((ctx.ike_proposal.to_wire(),), found.ike_proposals)
        except NoProposalChosen:
            raise AuthenticationFailed(
                f"IKE proposal {ctx.ike_proposal} (selected at IKE_SA_INIT) is not "
                f"configured for peer identity '{identity}'"
            ) from None
    return found


def verify_peer(ctx: SaContext, received: Received, peer_id: IdPayload, identity: Identity) -> None:
    """Rules 2 and 3 for the configuration in use; AuthenticationFailed if anything is off."""
    auth = received.message.find(AuthPayload)
    if auth is None:  # §2.16: no AUTH means EAP, which the profile does not do
        raise AuthenticationFailed("IKE_AUTH without AUTH payload (EAP is not supported)")
    config = ctx.config
    octets = _octets(ctx, False, peer_id.body())
    if isinstance(config.auth, PskAuth):
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(f"peer used AUTH method {auth.method}, we expect PSK")
        prf, _keys = ctx.require_keys()
        verify_psk(prf, config.auth.secret.reveal(), octets, auth.data)
        return
    if auth.method not in _SIGNATURE_METHODS:
        raise AuthenticationFailed(f"peer used AUTH method {auth.method}, we expect a signature")
    leaf_key = _verified_leaf_key(ctx, received, identity, config.auth)
    verify_auth(leaf_key, auth.data, octets, AuthMethod(auth.method))


def _verified_leaf_key(
    ctx: SaContext, received: Received, identity: Identity, auth: PubkeyAuth
) -> PublicKey:
    certs = [
        c.data
        for c in received.message.find_all(CertPayload)
        if c.encoding == CertEncoding.X509_CERT_SIG
    ]
    if not certs:
        raise AuthenticationFailed("peer sent no X.509 certificate")
    ours = [c.public_bytes(Encoding.DER) for c in auth.intermediates]
    at = ctx.config.wall_clock(received.now)
    leaf = CHAIN_CACHE.verify(certs[0], [*certs[1:], *ours], auth.trust_anchors, at)
    with malformed_certificates_refused():  # the SAN and key are parsed only now
        matches = identity_matches(identity.id_type, identity.data, leaf)
        key = leaf.public_key()
    if not matches:
        raise AuthenticationFailed(f"peer identity '{identity}' is not in its certificate")
    if not isinstance(key, PublicKey):
        raise AuthenticationFailed(f"peer certificate key type {type(key).__name__} unsupported")
    return key
