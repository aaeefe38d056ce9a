"""AUTH payload signatures: RFC 7427 (method 14), RFC 8420 EdDSA, RFC 4754 legacy ECDSA,
PSK (method 2) and the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4)."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from ike import der
from ike.auth import (
    PrivateKey,
    parse_auth_data,
    parse_signature_hash_algorithms,
    sign_auth,
    signature_hash_algorithms_data,
    verify_auth,
    verify_psk,
)
from ike.constants import AuthMethod, HashAlgorithm, PrfId
from ike.crypto import Prf, psk_auth
from ike.errors import AuthenticationFailed, LocalError, ParseError

OCTETS = b"IKE_SA_INIT request | Nr | prf(SK_pi, IDi')"


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# AlgorithmIdentifier DER, worked out by hand from RFC 5758 §3.2, RFC 8410 §3
# and RFC 4055 §3.1/§5 (the RFC 7427 appendix A examples have the same shape).
ALG_ECDSA_SHA256 = h("300a 0608 2a8648ce3d040302")
ALG_ECDSA_SHA384 = h("300a 0608 2a8648ce3d040303")
ALG_ECDSA_SHA512 = h("300a 0608 2a8648ce3d040304")
ALG_ED25519 = h("3005 0603 2b6570")
ALG_ED448 = h("3005 0603 2b6571")
ALG_SHA256_RSA = h("300d 0609 2a864886f70d01010b 0500")
ALG_RSA_PSS_SHA256 = h(
    "3041 0609 2a864886f70d01010a"  # id-RSASSA-PSS
    " 3034"  # RSASSA-PSS-params
    "  a00f 300d 0609 608648016503040201 0500"  # [0] sha256, NULL
    "  a11c 301a 0609 2a864886f70d010108"  # [1] id-mgf1
    "       300d 0609 608648016503040201 0500"  #     sha256, NULL
    "  a203 0201 20"  # [2] saltLength 32
)


def _keys() -> list[tuple[str, PrivateKey, bytes]]:
    return [
        ("p256", ec.generate_private_key(ec.SECP256R1()), ALG_ECDSA_SHA256),
        ("p384", ec.generate_private_key(ec.SECP384R1()), ALG_ECDSA_SHA384),
        ("p521", ec.generate_private_key(ec.SECP521R1()), ALG_ECDSA_SHA512),
        ("ed25519", ed25519.Ed25519PrivateKey.generate(), ALG_ED25519),
        ("ed448", ed448.Ed448PrivateKey.generate(), ALG_ED448),
        ("rsa-pss", rsa_key(), ALG_RSA_PSS_SHA256),
    ]


@pytest.mark.parametrize(("name", "key", "alg_der"), _keys(), ids=lambda v: str(v)[:12])
def test_round_trip_and_tamper(name: str, key: PrivateKey, alg_der: bytes) -> None:
    auth = sign_auth(key, OCTETS)
    # RFC 7427 §3: length octet | AlgorithmIdentifier | signature value.
    assert auth[0] == len(alg_der)
    assert auth[1 : 1 + len(alg_der)] == alg_der
    alg = verify_auth(key.public_key(), auth, OCTETS)
    assert alg.algorithm_identifier() == alg_der

    with pytest.raises(AuthenticationFailed):
        verify_auth(key.public_key(), auth, OCTETS + b"x")
    flipped = bytearray(auth)
    flipped[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        verify_auth(key.public_key(), bytes(flipped), OCTETS)
    with pytest.raises(AuthenticationFailed):
        verify_auth(_another(key).public_key(), auth, OCTETS)


def _another(key: PrivateKey) -> PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    return ed448.Ed448PrivateKey.generate()


def test_ecdsa_signature_value_is_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = sign_auth(key, OCTETS)
    signature = auth[1 + auth[0] :]
    r, s = decode_dss_signature(signature)  # Ecdsa-Sig-Value, not raw r|s
    assert r > 0 and s > 0


def test_ed25519_signs_the_octets_directly() -> None:
    # RFC 8420 §2: no pre-hash; the signature value verifies over the octets.
    key = ed25519.Ed25519PrivateKey.generate()
    auth = sign_auth(key, OCTETS)
    key.public_key().verify(auth[1 + auth[0] :], OCTETS)


def test_rsa_pkcs1_when_pss_is_off() -> None:
    key = rsa_key()
    auth = sign_auth(key, OCTETS, rsa_pss=False)
    assert auth[1 : 1 + auth[0]] == ALG_SHA256_RSA
    assert str(verify_auth(key.public_key(), auth, OCTETS)) == "RSA-PKCS1/SHA2_256"


def test_key_type_must_fit_algorithm() -> None:
    ed_auth = sign_auth(ed25519.Ed25519PrivateKey.generate(), OCTETS)
    with pytest.raises(AuthenticationFailed):
        verify_auth(ec.generate_private_key(ec.SECP256R1()).public_key(), ed_auth, OCTETS)
    with pytest.raises(AuthenticationFailed):
        verify_auth(ed448.Ed448PrivateKey.generate().public_key(), ed_auth, OCTETS)
    ec_auth = sign_auth(ec.generate_private_key(ec.SECP256R1()), OCTETS)
    with pytest.raises(AuthenticationFailed):
        verify_auth(rsa_key().public_key(), ec_auth, OCTETS)


def test_peer_hash_preferences() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = sign_auth(key, OCTETS, peer_hashes={HashAlgorithm.SHA2_384})
    assert auth[1 : 1 + auth[0]] == ALG_ECDSA_SHA384
    verify_auth(key.public_key(), auth, OCTETS)
    with pytest.raises(LocalError):
        sign_auth(key, OCTETS, peer_hashes={HashAlgorithm.SHA1})
    with pytest.raises(LocalError):  # RFC 8420: EdDSA needs "Identity" announced
        sign_auth(
            ed25519.Ed25519PrivateKey.generate(), OCTETS, peer_hashes={HashAlgorithm.SHA2_256}
        )


# --- malformed or unsupported AUTH data ---------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        b"",
        b"\x0c" + ALG_ECDSA_SHA256[:-1],  # length octet longer than what follows
        b"\x0c" + ALG_ECDSA_SHA256,  # no signature value
        b"\x03\x30\x01\x06" + b"sig",  # broken DER inside
        b"\x04\x31\x02\x06\x00" + b"sig",  # not a SEQUENCE
        b"\x0e" + h("300c 0608 2a8648ce3d040302 0101") + b"sig",  # BOOLEAN as params
    ],
)
def test_malformed_auth_data_is_parse_error(auth: bytes) -> None:
    with pytest.raises(ParseError):
        parse_auth_data(auth)


def _pss_alg(params: bytes) -> bytes:
    return der.encode(der.SEQUENCE, der.encode_oid("1.2.840.113549.1.1.10") + params)


def _hash_id(oid: str) -> bytes:
    return der.encode(der.SEQUENCE, der.encode_oid(oid) + der.encode_null())


SHA256_OID, SHA384_OID = "2.16.840.1.101.3.4.2.1", "2.16.840.1.101.3.4.2.2"
MGF1 = "1.2.840.113549.1.1.8"


@pytest.mark.parametrize(
    "alg_der",
    [
        h("300d 0609 2a864886f70d010105 0500"),  # sha1WithRSAEncryption
        h("3006 0604 2a030405"),  # 1.2.3.4.5
        _pss_alg(der.encode(der.SEQUENCE, b"")),  # all defaults: SHA-1
        _pss_alg(
            der.encode(
                der.SEQUENCE,
                der.encode(der.context(0), _hash_id(SHA256_OID))
                + der.encode(
                    der.context(1),
                    der.encode(der.SEQUENCE, der.encode_oid(MGF1) + _hash_id(SHA384_OID)),
                ),
            )
        ),  # MGF1 hash differs from the message hash
    ],
)
def test_unsupported_algorithms_fail_authentication(alg_der: bytes) -> None:
    auth = bytes([len(alg_der)]) + alg_der + b"signature"
    with pytest.raises(AuthenticationFailed):
        verify_auth(rsa_key().public_key(), auth, OCTETS)


def test_pss_salt_length_follows_parameters() -> None:
    # A peer may choose another salt length; the parameters say which.
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa_key()
    signature = key.sign(
        OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256()
    )
    params = der.encode(
        der.SEQUENCE,
        der.encode(der.context(0), _hash_id(SHA256_OID))
        + der.encode(
            der.context(1), der.encode(der.SEQUENCE, der.encode_oid(MGF1) + _hash_id(SHA256_OID))
        )
        + der.encode(der.context(2), der.encode_integer(20)),
    )
    alg_der = _pss_alg(params)
    alg = verify_auth(key.public_key(), bytes([len(alg_der)]) + alg_der + signature, OCTETS)
    assert alg.salt_len == 20


@given(st.binary(max_size=120))
def test_fuzzed_auth_data_only_raises_ike_errors(data: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    try:
        verify_auth(key, data, OCTETS)
    except (ParseError, AuthenticationFailed):
        pass
    else:  # pragma: no cover - a random forgery would be a real bug
        raise AssertionError("random AUTH data verified")


# --- legacy ECDSA methods (RFC 4754) --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "curve", "algo", "coord"),
    [
        (AuthMethod.ECDSA_256, ec.SECP256R1(), hashes.SHA256(), 32),
        (AuthMethod.ECDSA_384, ec.SECP384R1(), hashes.SHA384(), 48),
        (AuthMethod.ECDSA_521, ec.SECP521R1(), hashes.SHA512(), 66),
    ],
)
def test_legacy_ecdsa_raw_r_s(
    method: AuthMethod, curve: ec.EllipticCurve, algo: hashes.HashAlgorithm, coord: int
) -> None:
    key = ec.generate_private_key(curve)
    r, s = decode_dss_signature(key.sign(OCTETS, ec.ECDSA(algo)))
    raw = r.to_bytes(coord, "big") + s.to_bytes(coord, "big")
    verify_auth(key.public_key(), raw, OCTETS, method)
    with pytest.raises(AuthenticationFailed):
        verify_auth(key.public_key(), raw, OCTETS + b"!", method)
    with pytest.raises(AuthenticationFailed):
        verify_auth(key.public_key(), raw[:-1], OCTETS, method)
    wrong_curve = ec.generate_private_key(
        ec.SECP384R1() if coord != 48 else ec.SECP256R1()
    ).public_key()
    with pytest.raises(AuthenticationFailed):
        verify_auth(wrong_curve, raw, OCTETS, method)


def test_unsupported_key_type() -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa, x25519

    auth = sign_auth(ec.generate_private_key(ec.SECP256R1()), OCTETS)
    for key in (
        dsa.generate_private_key(key_size=1024).public_key(),
        x25519.X25519PrivateKey.generate().public_key(),
    ):
        with pytest.raises(AuthenticationFailed):
            verify_auth(key, auth, OCTETS)
        with pytest.raises(AuthenticationFailed):
            verify_auth(key, bytes(64), OCTETS, AuthMethod.ECDSA_256)


def test_unsupported_method() -> None:
    with pytest.raises(AuthenticationFailed):
        verify_auth(rsa_key().public_key(), b"x" * 256, OCTETS, AuthMethod.RSA_SIG)


# --- PSK -------------------------------------------------------------------------------------


def test_verify_psk() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    auth = psk_auth(prf, b"correct horse", OCTETS)
    verify_psk(prf, b"correct horse", OCTETS, auth)
    with pytest.raises(AuthenticationFailed) as info:
        verify_psk(prf, b"battery staple", OCTETS, auth)
    assert "correct horse" not in str(info.value)
    with pytest.raises(AuthenticationFailed):
        verify_psk(prf, b"correct horse", OCTETS, auth[:-1])


# --- SIGNATURE_HASH_ALGORITHMS ------------------------------------------------------------------


def test_signature_hash_algorithms_notify() -> None:
    assert signature_hash_algorithms_data() == h("0002 0003 0004 0005")
    assert signature_hash_algorithms_data([HashAlgorithm.SHA2_256]) == h("0002")
    parsed = parse_signature_hash_algorithms(h("0001 0002 00ff 0005 8000"))
    assert parsed == {HashAlgorithm.SHA1, HashAlgorithm.SHA2_256, HashAlgorithm.IDENTITY}
    assert parse_signature_hash_algorithms(b"") == frozenset()
    with pytest.raises(ParseError):
        parse_signature_hash_algorithms(h("000200"))
