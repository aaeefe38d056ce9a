"""Peer authentication: signatures in the AUTH payload, PSK, and (re-exported)
certificate chains and identities.

AUTH method 14 (RFC 7427 §3) carries::

    ASN.1 Length (1 octet) | AlgorithmIdentifier (DER) | Signature Value

signed over the §2.15 octets (:func:`ike.crypto.auth_octets`). Supported:

==========================  ===============================================
ECDSA P-256/384/521          ecdsa-with-SHA256/384/512; signature is the DER
                             Ecdsa-Sig-Value (RFC 7427 §3, as strongSwan)
Ed25519, Ed448 (RFC 8420)    id-Ed25519/id-Ed448; the octets are signed as
                             they are (hash "Identity", RFC 8420 §2)
RSASSA-PSS (RFC 7427 A.4.3)  SHA-256/384/512 with MGF1 of the same hash
sha256/384/512WithRSA        PKCS#1 v1.5: verify only by default, for peers
                             that do not use PSS (strongSwan's default)
==========================  ===============================================

Legacy methods 9/10/11 (RFC 4754: raw ``r | s`` with SHA-256/384/512 on
P-256/384/521) are accepted on verify. Certificate chains live in
:mod:`ike.certs`, identities in :mod:`ike.identity`; both are re-exported here.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ike import der
from ike.certs import certreq_data, certreq_hashes, certreq_matches, verify_chain
from ike.constants import AuthMethod, HashAlgorithm
from ike.crypto import Prf, psk_auth
from ike.errors import AuthenticationFailed, LocalError, ParseError
from ike.identity import Identity, identity_matches

__all__ = [
    "SUPPORTED_HASHES",
    "Identity",
    "PrivateKey",
    "PublicKey",
    "SignatureAlgorithm",
    "certreq_data",
    "certreq_hashes",
    "certreq_matches",
    "identity_matches",
    "parse_auth_data",
    "parse_signature_hash_algorithms",
    "sign_auth",
    "signature_hash_algorithms_data",
    "verify_auth",
    "verify_chain",
    "verify_psk",
]

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
PublicKey = (
    ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey
)

# RFC 7427 §4 hash values we can sign and verify with; announced in our
# SIGNATURE_HASH_ALGORITHMS notify. IDENTITY (5) is RFC 8420's EdDSA marker.
SUPPORTED_HASHES: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)

_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}

# OIDs: RFC 5758 §3.2 (ECDSA), RFC 8410 §3 (EdDSA), RFC 4055 §2.1/§5 (RSA, SHA-2).
_ECDSA_OIDS = {
    "1.2.840.10045.4.3.2": HashAlgorithm.SHA2_256,
    "1.2.840.10045.4.3.3": HashAlgorithm.SHA2_384,
    "1.2.840.10045.4.3.4": HashAlgorithm.SHA2_512,
}
_PKCS1_OIDS = {
    "1.2.840.113549.1.1.11": HashAlgorithm.SHA2_256,
    "1.2.840.113549.1.1.12": HashAlgorithm.SHA2_384,
    "1.2.840.113549.1.1.13": HashAlgorithm.SHA2_512,
}
_HASH_OIDS = {
    "2.16.840.1.101.3.4.2.1": HashAlgorithm.SHA2_256,
    "2.16.840.1.101.3.4.2.2": HashAlgorithm.SHA2_384,
    "2.16.840.1.101.3.4.2.3": HashAlgorithm.SHA2_512,
}
_ED25519_OID = "1.3.101.112"
_ED448_OID = "1.3.101.113"
_RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"

ECDSA, EDDSA, RSA_PSS, RSA_PKCS1 = "ecdsa", "eddsa", "rsa-pss", "rsa-pkcs1"


@dataclass(frozen=True, slots=True)
class SignatureAlgorithm:
    """One signature algorithm as named by an RFC 7427 AlgorithmIdentifier."""

    family: str  # ECDSA, EDDSA, RSA_PSS or RSA_PKCS1
    hash: HashAlgorithm  # IDENTITY for EdDSA
    salt_len: int = 0  # RSASSA-PSS only
    curve: str = ""  # EdDSA only: "Ed25519" or "Ed448"

    def algorithm_identifier(self) -> bytes:
        """The DER AlgorithmIdentifier, encoded as strongSwan does."""
        if self.family == EDDSA:  # RFC 8410 §3: parameters absent
            return der.encode(der.SEQUENCE, der.encode_oid(_oid_for(self)))
        if self.family == ECDSA:  # RFC 5758 §3.2: parameters absent
            return der.encode(der.SEQUENCE, der.encode_oid(_oid_for(self)))
        if self.family == RSA_PKCS1:  # RFC 4055 §5: parameters NULL
            return der.encode(der.SEQUENCE, der.encode_oid(_oid_for(self)) + der.encode_null())
        return _pss_algorithm_identifier(self.hash, self.salt_len)

    def __str__(self) -> str:
        if self.family == EDDSA:
            return self.curve
        name = {ECDSA: "ECDSA", RSA_PSS: "RSASSA-PSS", RSA_PKCS1: "RSA-PKCS1"}[self.family]
        return f"{name}/{self.hash.name}"


def _oid_for(alg: SignatureAlgorithm) -> str:
    if alg.family == EDDSA:
        return _ED25519_OID if alg.curve == "Ed25519" else _ED448_OID
    table = _ECDSA_OIDS if alg.family == ECDSA else _PKCS1_OIDS
    return next(oid for oid, h in table.items() if h == alg.hash)


def _hash_algorithm_identifier(h: HashAlgorithm) -> bytes:
    oid = next(o for o, v in _HASH_OIDS.items() if v == h)
    return der.encode(der.SEQUENCE, der.encode_oid(oid) + der.encode_null())


def _pss_algorithm_identifier(h: HashAlgorithm, salt_len: int) -> bytes:
    # RSASSA-PSS-params (RFC 4055 §3.1) with every field explicit, as in the
    # RFC 7427 appendix A.4.3 example; trailerField keeps its default.
    hash_id = _hash_algorithm_identifier(h)
    mgf = der.encode(der.SEQUENCE, der.encode_oid(_MGF1_OID) + hash_id)
    params = der.encode(
        der.SEQUENCE,
        der.encode(der.context(0), hash_id)
        + der.encode(der.context(1), mgf)
        + der.encode(der.context(2), der.encode_integer(salt_len)),
    )
    return der.encode(der.SEQUENCE, der.encode_oid(_RSASSA_PSS_OID) + params)


# --- parsing the AlgorithmIdentifier -------------------------------------------


def parse_auth_data(auth_data: bytes) -> tuple[SignatureAlgorithm, bytes]:
    """Split method-14 AUTH data into (algorithm, signature value).

    Malformed framing raises :class:`~ike.errors.ParseError`; an algorithm we
    do not support raises :class:`~ike.errors.AuthenticationFailed`.
    """
    if len(auth_data) < 1:
        raise ParseError("AUTH data is empty")
    alg_len = auth_data[0]
    alg_der, signature = auth_data[1 : 1 + alg_len], auth_data[1 + alg_len :]
    if len(alg_der) != alg_len or not signature:
        raise ParseError("AUTH data shorter than its ASN.1 length octet says")
    return _parse_algorithm_identifier(alg_der), signature


def _parse_algorithm_identifier(alg_der: bytes) -> SignatureAlgorithm:
    fields = der.read_all(der.read_one(alg_der, der.SEQUENCE).value)
    if not fields or fields[0].tag != der.OID or len(fields) > 2:
        raise ParseError("AlgorithmIdentifier is not SEQUENCE { OID, params }")
    oid = der.decode_oid(fields[0].value)
    params = fields[1] if len(fields) == 2 else None
    if oid == _RSASSA_PSS_OID:
        if params is None:
            raise AuthenticationFailed("RSASSA-PSS without parameters is not supported")
        return _parse_pss_params(params)
    if params is not None and params.raw != der.encode_null():
        raise ParseError(f"unexpected parameters for signature algorithm {oid}")
    if oid in _ECDSA_OIDS:
        return SignatureAlgorithm(ECDSA, _ECDSA_OIDS[oid])
    if oid in _PKCS1_OIDS:
        return SignatureAlgorithm(RSA_PKCS1, _PKCS1_OIDS[oid])
    if oid in (_ED25519_OID, _ED448_OID):
        curve = "Ed25519" if oid == _ED25519_OID else "Ed448"
        return SignatureAlgorithm(EDDSA, HashAlgorithm.IDENTITY, curve=curve)
    raise AuthenticationFailed(f"signature algorithm {oid} is not supported")


def _parse_hash_id(tlv: der.Tlv) -> HashAlgorithm:
    fields = der.read_all(der.read_one(tlv.raw, der.SEQUENCE).value)
    if not fields or fields[0].tag != der.OID or len(fields) > 2:
        raise ParseError("malformed hash AlgorithmIdentifier")
    if len(fields) == 2 and fields[1].raw != der.encode_null():
        raise ParseError("unexpected hash parameters")
    oid = der.decode_oid(fields[0].value)
    if oid not in _HASH_OIDS:
        raise AuthenticationFailed(f"RSASSA-PSS hash {oid} is not supported")
    return _HASH_OIDS[oid]


def _parse_pss_params(params: der.Tlv) -> SignatureAlgorithm:
    """RSASSA-PSS-params (RFC 4055 §3.1); SHA-1 defaults are refused."""
    if params.tag != der.SEQUENCE:
        raise ParseError("RSASSA-PSS parameters are not a SEQUENCE")
    found = {f.tag: f for f in der.read_all(params.value)}
    if set(found) - {der.context(n) for n in range(4)}:
        raise ParseError("unknown field in RSASSA-PSS parameters")
    if der.context(0) not in found or der.context(1) not in found:
        raise AuthenticationFailed("RSASSA-PSS with the SHA-1 default is not accepted")
    h = _parse_hash_id(der.read_one(found[der.context(0)].value, der.SEQUENCE))
    mgf = der.read_all(der.read_one(found[der.context(1)].value, der.SEQUENCE).value)
    if len(mgf) != 2 or mgf[0].tag != der.OID or der.decode_oid(mgf[0].value) != _MGF1_OID:
        raise AuthenticationFailed("RSASSA-PSS mask generation other than MGF1")
    if _parse_hash_id(mgf[1]) != h:
        raise AuthenticationFailed("RSASSA-PSS with an MGF1 hash unlike the message hash")
    salt_len = 20  # RFC 4055 §3.1 default
    if der.context(2) in found:
        salt_len = der.decode_integer(der.read_one(found[der.context(2)].value, der.INTEGER).value)
    if der.context(3) in found:
        trailer = der.read_one(found[der.context(3)].value, der.INTEGER).value
        if der.decode_integer(trailer) != 1:
            raise AuthenticationFailed("RSASSA-PSS trailerField other than 1")
    if salt_len < 0:
        raise ParseError("negative RSASSA-PSS salt length")
    return SignatureAlgorithm(RSA_PSS, h, salt_len=salt_len)


# --- signing ---------------------------------------------------------------------

# Default hash per ECDSA curve, matching the key strength (as strongSwan does).
_CURVE_HASH = {
    "secp256r1": HashAlgorithm.SHA2_256,
    "secp384r1": HashAlgorithm.SHA2_384,
    "secp521r1": HashAlgorithm.SHA2_512,
}


def choose_algorithm(
    private_key: PrivateKey,
    peer_hashes: Collection[HashAlgorithm] | None = None,
    *,
    rsa_pss: bool = True,
) -> SignatureAlgorithm:
    """The algorithm :func:`sign_auth` uses for this key.

    ``peer_hashes`` is what the peer announced in SIGNATURE_HASH_ALGORITHMS
    (RFC 7427 §4); ``None`` means no restriction.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        if peer_hashes is not None and HashAlgorithm.IDENTITY not in peer_hashes:
            raise LocalError("peer did not announce the Identity hash needed for EdDSA")
        curve = "Ed25519" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "Ed448"
        return SignatureAlgorithm(EDDSA, HashAlgorithm.IDENTITY, curve=curve)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        preferred = _CURVE_HASH.get(private_key.curve.name, HashAlgorithm.SHA2_512)
        return SignatureAlgorithm(ECDSA, _pick_hash(preferred, peer_hashes))
    if isinstance(private_key, rsa.RSAPrivateKey):
        h = _pick_hash(HashAlgorithm.SHA2_256, peer_hashes)
        if rsa_pss:  # salt as long as the hash (RFC 7427 A.4.3, strongSwan's default)
            return SignatureAlgorithm(RSA_PSS, h, salt_len=_HASHES[h]().digest_size)
        return SignatureAlgorithm(RSA_PKCS1, h)
    raise LocalError(f"cannot sign with a {type(private_key).__name__}")


def _pick_hash(
    preferred: HashAlgorithm, peer_hashes: Collection[HashAlgorithm] | None
) -> HashAlgorithm:
    if peer_hashes is None or preferred in peer_hashes:
        return preferred
    for h in _HASHES:
        if h in peer_hashes:
            return h
    raise LocalError("no signature hash in common with the peer")


def sign_auth(
    private_key: PrivateKey,
    octets: bytes,
    peer_hashes: Collection[HashAlgorithm] | None = None,
    *,
    rsa_pss: bool = True,
) -> bytes:
    """AUTH data for method 14 (RFC 7427 §3) over the §2.15 ``octets``."""
    alg = choose_algorithm(private_key, peer_hashes, rsa_pss=rsa_pss)
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        signature = private_key.sign(octets)  # RFC 8420 §2: no pre-hash
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(octets, ec.ECDSA(_HASHES[alg.hash]()))  # DER
    else:
        signature = private_key.sign(octets, _rsa_padding(alg), _HASHES[alg.hash]())
    alg_der = alg.algorithm_identifier()
    return bytes([len(alg_der)]) + alg_der + signature


def _rsa_padding(alg: SignatureAlgorithm) -> padding.AsymmetricPadding:
    if alg.family == RSA_PKCS1:
        return padding.PKCS1v15()
    return padding.PSS(mgf=padding.MGF1(_HASHES[alg.hash]()), salt_length=alg.salt_len)


# --- verifying -------------------------------------------------------------------

# RFC 4754 §3 / §7: legacy ECDSA methods fix curve, hash and raw r|s encoding.
_LEGACY_ECDSA = {
    AuthMethod.ECDSA_256: ("secp256r1", HashAlgorithm.SHA2_256, 32),
    AuthMethod.ECDSA_384: ("secp384r1", HashAlgorithm.SHA2_384, 48),
    AuthMethod.ECDSA_521: ("secp521r1", HashAlgorithm.SHA2_512, 66),
}


def verify_auth(
    public_key: PublicKey | CertificatePublicKeyTypes,
    auth_data: bytes,
    octets: bytes,
    method: AuthMethod = AuthMethod.DIGITAL_SIGNATURE,
) -> SignatureAlgorithm:
    """Check the peer's AUTH payload; returns the algorithm it used.

    Raises :class:`~ike.errors.AuthenticationFailed` for a bad or unsupported
    signature or key type (e.g. a DSA certificate), :class:`~ike.errors.ParseError`
    for malformed AUTH data.
    """
    if method == AuthMethod.DIGITAL_SIGNATURE:
        alg, signature = parse_auth_data(auth_data)
    elif method in _LEGACY_ECDSA:
        alg, signature = _legacy_ecdsa(method, public_key, auth_data)
    else:
        raise AuthenticationFailed(f"AUTH method {method} is not a supported signature method")
    _check_key_fits(alg, public_key)
    try:
        _verify(alg, public_key, signature, octets)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        raise AuthenticationFailed(f"{alg} signature in AUTH does not verify") from None
    return alg


def _legacy_ecdsa(
    method: AuthMethod, public_key: CertificatePublicKeyTypes, auth_data: bytes
) -> tuple[SignatureAlgorithm, bytes]:
    curve, h, coord_len = _LEGACY_ECDSA[method]
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve:
        raise AuthenticationFailed(f"AUTH method {method.name} needs a {curve} key")
    if len(auth_data) != 2 * coord_len:
        raise AuthenticationFailed(f"{method.name} signature is not {2 * coord_len} octets")
    r = int.from_bytes(auth_data[:coord_len], "big")
    s = int.from_bytes(auth_data[coord_len:], "big")
    return SignatureAlgorithm(ECDSA, h), encode_dss_signature(r, s)


def _check_key_fits(alg: SignatureAlgorithm, public_key: CertificatePublicKeyTypes) -> None:
    fits = {
        ECDSA: isinstance(public_key, ec.EllipticCurvePublicKey),
        RSA_PSS: isinstance(public_key, rsa.RSAPublicKey),
        RSA_PKCS1: isinstance(public_key, rsa.RSAPublicKey),
        EDDSA: isinstance(
            public_key,
            ed25519.Ed25519PublicKey if alg.curve == "Ed25519" else ed448.Ed448PublicKey,
        ),
    }[alg.family]
    if not fits:
        raise AuthenticationFailed(f"{alg} does not fit the peer's {type(public_key).__name__}")


def _verify(
    alg: SignatureAlgorithm, key: CertificatePublicKeyTypes, signature: bytes, octets: bytes
) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, octets)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, octets, ec.ECDSA(_HASHES[alg.hash]()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, octets, _rsa_padding(alg), _HASHES[alg.hash]())
    else:  # _check_key_fits already refused anything else
        raise InvalidSignature


def verify_psk(prf: Prf, psk: bytes, octets: bytes, auth_data: bytes) -> None:
    """Check AUTH method 2 data in constant time (§2.15)."""
    if not constant_time.bytes_eq(psk_auth(prf, psk, octets), auth_data):
        raise AuthenticationFailed("shared-key AUTH does not verify")


# --- SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4) ------------------------------


def signature_hash_algorithms_data(algs: Iterable[HashAlgorithm] = SUPPORTED_HASHES) -> bytes:
    """Notification Data: a list of 2-octet hash algorithm identifiers."""
    if algs is SUPPORTED_HASHES:  # every IKE_SA_INIT sends this one
        return _SUPPORTED_HASHES_DATA
    return b"".join(int(h).to_bytes(2, "big") for h in algs)


_SUPPORTED_HASHES_DATA = b"".join(int(h).to_bytes(2, "big") for h in SUPPORTED_HASHES)
# (identifier, algorithm) of every algorithm we know, looked up per IKE_SA_INIT
# (iterating the enum class and reading ``.value`` costs more than the lookups)
_HASHES_BY_VALUE = tuple((int(h), h) for h in HashAlgorithm)


def parse_signature_hash_algorithms(data: bytes) -> frozenset[HashAlgorithm]:
    """The hash algorithms a peer announced; identifiers we do not know are skipped.

    Unauthenticated input of up to 64 KiB: one set of distinct 16-bit values,
    then a lookup per known algorithm (no exception per unknown value).
    """
    if len(data) % 2:
        raise ParseError("SIGNATURE_HASH_ALGORITHMS data has an odd length")
    announced = set(struct.unpack(f">{len(data) // 2}H", data))
    return frozenset(h for value, h in _HASHES_BY_VALUE if value in announced)  # RFC 7427 §4
