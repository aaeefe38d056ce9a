"""Certificate path validation, its cache (ChainCache) and CERTREQ (ike.certs, re-exported
by ike.auth).

Every certificate is made here with ``cryptography``: a root CA, an
intermediate CA and gateway leaves, in EC P-256 and Ed25519.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from dataclasses import dataclass, field
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ike import certs
from ike.auth import certreq_data, certreq_matches, verify_chain
from ike.certs import ChainCache, certreq_hashes, load_certificate
from ike.errors import AuthenticationFailed, ParseError

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)

Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# keyUsage presets (digital_signature, content_commitment, key_encipherment,
# data_encipherment, key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only)
KU_CA = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
KU_CA_NO_CERTSIGN = x509.KeyUsage(True, False, False, False, False, False, True, False, False)
KU_LEAF = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
KU_LEAF_ENCIPHER_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Spec:
    cn: str
    ca: bool | None = False  # None: no basicConstraints at all
    path_length: int | None = None
    key_usage: x509.KeyUsage | None = None
    not_before: datetime.datetime = NOW - 30 * DAY
    not_after: datetime.datetime = NOW + 365 * DAY
    extra: list[tuple[x509.ExtensionType, bool]] = field(default_factory=list)


def make(
    spec: Spec, key: Key, issuer: x509.Name | None = None, issuer_key: Key | None = None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(spec.cn))
        .issuer_name(issuer or name(spec.cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    if spec.ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=spec.ca, path_length=spec.path_length), critical=True
        )
    if spec.key_usage is not None:
        builder = builder.add_extension(spec.key_usage, critical=True)
    for ext, critical in spec.extra:
        builder = builder.add_extension(ext, critical=critical)
    signer = issuer_key or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    root_key: Key
    root: x509.Certificate
    mid_key: Key
    mid: x509.Certificate
    leaf_key: Key

    def leaf(self, spec: Spec | None = None, issuer: str = "mid") -> x509.Certificate:
        spec = spec or Spec("gw-a", key_usage=KU_LEAF)
        if issuer == "root":
            return make(spec, self.leaf_key, self.root.subject, self.root_key)
        return make(spec, self.leaf_key, self.mid.subject, self.mid_key)


def new_pki(kind: str = "ec", root_spec: Spec | None = None, mid_spec: Spec | None = None) -> Pki:
    def key() -> Key:
        if kind == "ec":
            return ec.generate_private_key(ec.SECP256R1())
        return ed25519.Ed25519PrivateKey.generate()

    root_key, mid_key = key(), key()
    root = make(root_spec or Spec("Root CA", ca=True, key_usage=KU_CA), root_key)
    mid = make(
        mid_spec or Spec("Intermediate CA", ca=True, key_usage=KU_CA),
        mid_key,
        root.subject,
        root_key,
    )
    return Pki(root_key, root, mid_key, mid, key())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return new_pki()


def test_valid_chain_with_intermediate(pki: Pki) -> None:
    leaf = pki.leaf()
    assert verify_chain(der(leaf), [der(pki.mid)], [pki.root], NOW) == leaf


def test_valid_chain_directly_under_root_and_extra_certs_ignored(pki: Pki) -> None:
    leaf = pki.leaf(issuer="root")
    unrelated = new_pki().mid
    assert verify_chain(der(leaf), [der(unrelated), der(pki.mid)], [pki.root], NOW) == leaf


def test_ed25519_chain() -> None:
    # cryptography's PolicyBuilder refuses Ed25519; our own checks must not.
    ed = new_pki("ed25519")
    leaf = ed.leaf()
    assert verify_chain(der(leaf), [der(ed.mid)], [ed.root], NOW) == leaf


def test_leaf_without_key_usage_or_eku_is_fine(pki: Pki) -> None:
    leaf = pki.leaf(Spec("gw-b"))
    assert verify_chain(der(leaf), [der(pki.mid)], [pki.root], NOW) == leaf


def test_naive_time_means_utc(pki: Pki) -> None:
    leaf = pki.leaf()
    verify_chain(der(leaf), [der(pki.mid)], [pki.root], NOW.replace(tzinfo=None))


def fails(pki: Pki, leaf: x509.Certificate, reason: str, **kw: object) -> None:
    intermediates = kw.get("intermediates", [der(pki.mid)])
    anchors = kw.get("anchors", [pki.root])
    at = kw.get("at", NOW)
    with pytest.raises(AuthenticationFailed, match=reason):
        verify_chain(der(leaf), intermediates, anchors, at)  # type: ignore[arg-type]


def test_wrong_ca(pki: Pki) -> None:
    other = new_pki()
    fails(pki, pki.leaf(), "no trusted CA", anchors=[other.root])
    fails(pki, pki.leaf(), "no trusted CA", anchors=[])


def test_missing_intermediate(pki: Pki) -> None:
    fails(pki, pki.leaf(), "no trusted CA", intermediates=[])


def test_forged_signature_with_right_issuer_name(pki: Pki) -> None:
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    forged = make(Spec("gw-a", key_usage=KU_LEAF), pki.leaf_key, pki.mid.subject, impostor_key)
    fails(pki, forged, "no trusted CA")


def test_expired_and_not_yet_valid_leaf(pki: Pki) -> None:
    leaf = pki.leaf()
    fails(pki, leaf, "has expired", at=NOW + 400 * DAY)
    fails(pki, leaf, "not yet valid", at=NOW - 40 * DAY)
    old = pki.leaf(Spec("gw-a", not_before=NOW - 20 * DAY, not_after=NOW - DAY))
    fails(pki, old, "'C=CH, O=Example, CN=gw-a' has expired")


def test_expired_intermediate() -> None:
    stale = new_pki(mid_spec=Spec("Intermediate CA", ca=True, not_after=NOW - DAY))
    fails(stale, stale.leaf(), "Intermediate CA' has expired")


def test_issuer_must_be_a_ca() -> None:
    for spec in (Spec("Intermediate CA", ca=False), Spec("Intermediate CA", ca=None)):
        not_ca = new_pki(mid_spec=spec)
        fails(not_ca, not_ca.leaf(), "is not a CA")
    root_not_ca = new_pki(root_spec=Spec("Root CA", ca=None))
    fails(root_not_ca, root_not_ca.leaf(issuer="root"), "Root CA' is not a CA")


def test_path_length_constraint() -> None:
    strict = new_pki(root_spec=Spec("Root CA", ca=True, path_length=0))
    fails(strict, strict.leaf(), "path length")
    verify_chain(der(strict.leaf(issuer="root")), [], [strict.root], NOW)
    loose = new_pki(root_spec=Spec("Root CA", ca=True, path_length=1))
    verify_chain(der(loose.leaf()), [der(loose.mid)], [loose.root], NOW)


def test_ca_key_usage_needs_key_cert_sign() -> None:
    bad = new_pki(mid_spec=Spec("Intermediate CA", ca=True, key_usage=KU_CA_NO_CERTSIGN))
    fails(bad, bad.leaf(), "keyCertSign")


def test_leaf_key_usage_needs_digital_signature(pki: Pki) -> None:
    leaf = pki.leaf(Spec("gw-a", key_usage=KU_LEAF_ENCIPHER_ONLY))
    fails(pki, leaf, "digitalSignature")


def test_unknown_critical_extension(pki: Pki) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = pki.leaf(Spec("gw-a", key_usage=KU_LEAF, extra=[(odd, True)]))
    fails(pki, leaf, "unsupported critical extension 1.3.6.1.4.1.99999.1")
    tolerated = pki.leaf(Spec("gw-a", key_usage=KU_LEAF, extra=[(odd, False)]))
    verify_chain(der(tolerated), [der(pki.mid)], [pki.root], NOW)


def test_malformed_certificate(pki: Pki) -> None:
    with pytest.raises(AuthenticationFailed, match="malformed"):
        verify_chain(b"\x30\x03\x02\x01\x00", [], [pki.root], NOW)
    with pytest.raises(AuthenticationFailed, match="malformed"):
        verify_chain(der(pki.leaf()), [b"junk"], [pki.root], NOW)
    with pytest.raises(ParseError):
        load_certificate(b"junk")
    assert load_certificate(der(pki.root)) == pki.root


def test_errors_carry_no_key_material(pki: Pki) -> None:
    leaf = pki.leaf()
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(AuthenticationFailed) as info:
        verify_chain(der(leaf), [], [pki.root], NOW)
    text = str(info.value)
    assert spki.hex() not in text and spki[-32:].hex() not in text
    assert "gw-a" in text  # it does say which certificate


# --- CERTREQ -------------------------------------------------------------------------


def test_certreq_hashes_spki_sha1(pki: Pki) -> None:
    other = new_pki()
    data = certreq_data([pki.root, other.root])
    spki = pki.root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(data) == 40
    assert data[:20] == hashlib.sha1(spki).digest()  # RFC 7296 §3.7
    assert certreq_hashes(data) == [data[:20], data[20:]]
    assert certreq_matches(data, pki.root)
    assert certreq_matches(data, other.root)
    assert not certreq_matches(data, pki.mid)
    assert certreq_data([]) == b""
    with pytest.raises(ParseError):
        certreq_matches(data[:-1], pki.root)


# --- ChainCache: a verified path remembered by its certificates and the trust anchors;
# a changed trust store, a time outside the path's validity or another certificate is
# verified again; the cache stays within its bound.


def counting() -> contextlib.AbstractContextManager[mock.MagicMock]:
    """A spy on the full path validation (the work the cache saves)."""
    return mock.patch.object(certs, "_build_path", wraps=certs._build_path)


def test_second_verification_is_a_hit_and_returns_the_same_leaf(pki: Pki) -> None:
    cache = ChainCache()
    leaf = pki.leaf()
    with counting() as build:
        first = cache.verify(der(leaf), [der(pki.mid)], [pki.root], NOW)
        second = cache.verify(der(leaf), [der(pki.mid)], (pki.root,), NOW + DAY)
    assert first == leaf and second is first
    assert build.call_count == 1 and (cache.hits, cache.misses) == (1, 1)


def test_changed_trust_store_is_a_miss_and_can_refuse(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    other = new_pki()
    with pytest.raises(AuthenticationFailed, match="no trusted CA"):
        cache.verify(leaf, [der(pki.mid)], [other.root], NOW)
    # both anchors: a new key again, verified (and accepted) anew
    with counting() as build:
        cache.verify(leaf, [der(pki.mid)], [other.root, pki.root], NOW)
    assert build.call_count == 1 and cache.misses == 3 and cache.hits == 0


def test_time_outside_the_validity_window_is_verified_again(pki: Pki) -> None:
    cache = ChainCache()
    short = pki.leaf(Spec("gw-short", key_usage=KU_LEAF, not_after=NOW + 2 * DAY))
    cache.verify(der(short), [der(pki.mid)], [pki.root], NOW)
    with pytest.raises(AuthenticationFailed, match="has expired"):
        cache.verify(der(short), [der(pki.mid)], [pki.root], NOW + 3 * DAY)
    with pytest.raises(AuthenticationFailed, match="not yet valid"):
        cache.verify(der(short), [der(pki.mid)], [pki.root], NOW - 60 * DAY)
    assert cache.hits == 0


def test_failures_are_not_remembered_and_other_certificates_miss(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    with pytest.raises(AuthenticationFailed):
        cache.verify(leaf, [], [pki.root], NOW)  # the intermediate is missing
    assert len(cache) == 0
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    other = der(pki.leaf(Spec("gw-b", key_usage=KU_LEAF)))
    assert cache.verify(other, [der(pki.mid)], [pki.root], NOW).subject != x509.Name([])
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 2)


def test_bounded_least_recently_used_goes_first(pki: Pki) -> None:
    cache = ChainCache(max_entries=3)
    leaves = [der(pki.leaf(Spec(f"gw-{k}", key_usage=KU_LEAF))) for k in range(5)]
    for leaf in leaves[:3]:
        cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    cache.verify(leaves[0], [der(pki.mid)], [pki.root], NOW)  # 0 used again
    cache.verify(leaves[3], [der(pki.mid)], [pki.root], NOW)  # 1 goes
    cache.verify(leaves[4], [der(pki.mid)], [pki.root], NOW)  # 2 goes
    assert len(cache) == 3
    with counting() as build:
        cache.verify(leaves[0], [der(pki.mid)], [pki.root], NOW)
        cache.verify(leaves[1], [der(pki.mid)], [pki.root], NOW)
    assert build.call_count == 1 and len(cache) == 3


def test_naive_time_is_utc(pki: Pki) -> None:
    cache = ChainCache()
    leaf = der(pki.leaf())
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW)
    cache.verify(leaf, [der(pki.mid)], [pki.root], NOW.replace(tzinfo=None))
    assert cache.hits == 1
    assert NOW.tzinfo is datetime.UTC
