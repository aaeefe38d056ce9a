"""Fuzz profile: identities, DER and certificates from a peer.

Decoders: the ID payload's type and data (Identity.from_payload, its DER DN
parser, printing, matching, and matching against certificates), the small
DER codec (ike/der.py: every TLV, OID, INTEGER and string in the input), and
CERT payload data (load_certificate, dn_string, verify_chain as leaf and as
intermediate, CERTREQ hashes). Allowed: ParseError and AuthenticationFailed.
"""

from __future__ import annotations

import contextlib
import datetime
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from fuzzing import Target, profile
from genuine import cert_corpus, certificates, der_corpus, identity_corpus

from ike import der
from ike.certs import certreq_hashes, load_certificate, verify_chain
from ike.constants import IdType
from ike.errors import AuthenticationFailed, ParseError
from ike.identity import Identity, identity_matches
from tests.unit.sessionpair import WALL_T0, make_ca, make_leaf

pytestmark = pytest.mark.fuzz

STRING_TAGS = frozenset(
    {
        der.UTF8_STRING,
        der.NUMERIC_STRING,
        der.PRINTABLE_STRING,
        der.TELETEX_STRING,
        der.IA5_STRING,
        der.VISIBLE_STRING,
        der.UNIVERSAL_STRING,
        der.BMP_STRING,
    }
)


def identity_target() -> Target:
    certs = certificates()
    references = [Identity.from_payload(c[0], c[1:]) for c in identity_corpus()]

    def run(data: bytes) -> bool:
        if not data:
            raise ParseError("fuzz harness: no ID type")  # not a decoder input
        ident = Identity.from_payload(data[0], data[1:])
        str(ident)
        assert ident.matches(ident)
        for other in references:
            if other.id_type == ident.id_type:
                ident.matches(other)
        for cert in certs[2:]:
            identity_matches(ident.id_type, ident.data, cert)
        return True

    return Target("identity", identity_corpus(), run, (ParseError,))


def walk(data: bytes) -> int:
    """Decode every TLV (iteratively: the nesting depth is the input's business)."""
    count = 0
    stack = [data]
    while stack:
        for tlv in der.read_all(stack.pop()):
            count += 1
            if tlv.tag & 0x20:  # constructed
                stack.append(tlv.value)
            elif tlv.tag == der.OID:
                der.decode_oid(tlv.value)
            elif tlv.tag == der.INTEGER:
                der.decode_integer(tlv.value)
            elif tlv.tag in STRING_TAGS:
                der.decode_string(tlv)
    return count


def der_target() -> Target:
    def run(data: bytes) -> bool:
        with contextlib.suppress(ParseError):
            der.read_one(data, der.SEQUENCE)
        return walk(data) > 0

    # Large DER is the identity target's (a DN of up to 64 KiB); here up to 16 KiB.
    return Target("der", der_corpus(), run, (ParseError,), max_len=16 * 1024)


def certs_target() -> Target:
    certs = certificates()
    anchors = list(certs[:2])
    leaf = certs[2].public_bytes(Encoding.DER)
    at = WALL_T0

    def run(data: bytes) -> bool:
        with contextlib.suppress(ParseError):
            certreq_hashes(data)
        cert = load_certificate(data)
        identity_matches(IdType.ID_FQDN, b"gw-a.example.org", cert)
        with contextlib.suppress(AuthenticationFailed):
            verify_chain(leaf, [data], anchors, at)  # as an intermediate
        verify_chain(data, [], anchors, at + datetime.timedelta(days=1))
        return True

    return Target(
        "certs",
        cert_corpus(),
        run,
        (ParseError, AuthenticationFailed),
    )


TARGETS = {
    "identity": identity_target,
    "der": der_target,
    "certs": certs_target,
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    profile(name, TARGETS[name])


# Crashes this profile found (fixed): cryptography parses certificates lazily, and
# its errors escaped verify_chain (through IKE_AUTH, out of receive_datagram).
LEAF_SUBJECT_CN = b"\x06\x03\x55\x04\x03\x0c\x10gw-c.example.org"
ISSUER_CN = b"\x06\x03\x55\x04\x03\x0c\x07Test CA"
VERSION_V3 = b"\xa0\x03\x02\x01\x02"
VERSION_V4 = b"\xa0\x03\x02\x01\x03"

MUTATIONS = {
    "subject-unknown-string-tag": (LEAF_SUBJECT_CN, LEAF_SUBJECT_CN.replace(b"\x0c", b"\x49")),
    "subject-not-utf8": (LEAF_SUBJECT_CN, LEAF_SUBJECT_CN.replace(b"gw-c", b"\xffw-c")),
    "subject-bit-string": (LEAF_SUBJECT_CN, LEAF_SUBJECT_CN.replace(b"\x0c", b"\x03")),
    "issuer-unknown-string-tag": (ISSUER_CN, ISSUER_CN.replace(b"\x0c", b"\x49")),
    "version-v4": (VERSION_V3, VERSION_V4),
}  # KeyError, ValueError, TypeError, KeyError, InvalidVersion before the fix


def _mutated_leaf(old: bytes, new: bytes) -> bytes:
    leaf = certificates()[4].public_bytes(Encoding.DER)  # gw-c, issued by Test CA
    assert leaf.count(old) == 1
    return leaf.replace(old, new)


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_a_malformed_leaf_fails_authentication(case: str) -> None:
    with pytest.raises(AuthenticationFailed):
        verify_chain(_mutated_leaf(*MUTATIONS[case]), [], list(certificates()[:2]), WALL_T0)


def test_load_certificate_of_a_v4_certificate_raises_parse_error() -> None:
    with pytest.raises(ParseError):  # was cryptography's InvalidVersion
        load_certificate(_mutated_leaf(VERSION_V3, VERSION_V4))


def test_a_64_kib_dn_identity_is_refused_in_under_50_ms() -> None:
    """Found by this profile: a 64 KiB DN took ~0.1 s to parse (before AUTH is
    verified) and as long again to print and to match; IDs are now bounded."""
    attribute = der.encode_oid("2.5.4.3") + der.encode(der.UTF8_STRING, b"")
    rdn = der.encode(der.SET, der.encode(der.SEQUENCE, attribute))
    dn = der.encode(der.SEQUENCE, rdn * ((65_000 - 8) // len(rdn)))
    start = time.thread_time()
    with pytest.raises(ParseError):
        Identity.from_payload(IdType.ID_DER_ASN1_DN, dn)
    assert time.thread_time() - start < 0.05


# Found by this profile and fixed (DuplicateExtension and UnsupportedGeneralNameType
# are among ike.identity.CERT_PARSE_ERRORS now): regression tests.


def _resigned(tbs: bytes, old: bytes, new: bytes) -> bytes:
    """Our test CA's certificate with ``old`` replaced in its TBS, signed again."""
    fields = der.read_all(der.read_one(tbs, der.SEQUENCE).value)
    body = b"".join(f.raw for f in fields[:-1])
    extensions = fields[-1]  # [3] { SEQUENCE OF Extension }
    inner = der.read_one(extensions.value, der.SEQUENCE).value
    assert inner.count(old) == 1
    inner = inner.replace(old, new)
    tbs = der.encode(
        der.SEQUENCE, body + der.encode(der.context(3), der.encode(der.SEQUENCE, inner))
    )
    ca = make_ca()
    signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = der.encode(der.SEQUENCE, der.encode_oid("1.2.840.10045.4.3.2"))
    return der.encode(der.SEQUENCE, tbs + algorithm + der.encode(0x03, b"\x00" + signature))


def _trusted_leaf() -> tuple[bytes, bytes]:
    """(TBS of gw-a's certificate from Test CA, its SAN extension)."""
    leaf = make_leaf(make_ca(), "gw-a.example.org")[1]
    san = b"\x30\x1b\x06\x03\x55\x1d\x11\x04\x14\x30\x12\x82\x10gw-a.example.org"
    return leaf.tbs_certificate_bytes, san


def test_a_trusted_certificate_with_an_edi_party_name_san() -> None:
    tbs, san = _trusted_leaf()
    edi = san.replace(b"\x82\x10gw-a", b"\xa5\x10gw-a")  # [5] ediPartyName
    with pytest.raises(AuthenticationFailed):
        verify_chain(_resigned(tbs, san, edi), [], [make_ca().cert], WALL_T0)


def test_a_trusted_certificate_with_a_duplicate_extension() -> None:
    tbs, san = _trusted_leaf()
    with pytest.raises(AuthenticationFailed):
        verify_chain(_resigned(tbs, san, san + san), [], [make_ca().cert], WALL_T0)


# The fuzz inputs (unsigned, so only identity_matches reaches the extensions).
DUPLICATE_BASIC_CONSTRAINTS = (
    "3081f13081a4a003020102020109300506032b65703010310e300c06035504030c054564204341301e170d"
    "3234303630313132303030305a170d3335303533303132303030305a3010310e300c06035504030c0545"
    "64204341302a300506032b6570032100dd7e84d010aed28a416e928f50c4c09ac0f94a8f5b3465483d8b"
    "ddb61cdb7263a3233021300f0603551d130101ff040530030101ff300e0603551d130101ff0404030201"
    "06300506032b6570034100a21a0b2e6cb39266a60a1655cd218b082b3b947ea14f7c1b183081d4ea129c"
    "befd39143902b2ccbdbb7258b3766e2d5199759fcc3c32dc92986821c390a5580a"
)


def test_identity_matches_a_certificate_with_a_duplicate_extension() -> None:
    cert = load_certificate(bytes.fromhex(DUPLICATE_BASIC_CONSTRAINTS))
    assert not identity_matches(IdType.ID_FQDN, b"gw-a.example.org", cert)
