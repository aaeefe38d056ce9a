"""Identities (RFC 7296 §3.5) from strongSwan-style strings and their match to certificates."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from ike import der
from ike.auth import Identity, identity_matches
from ike.constants import IdType
from ike.errors import LocalError, ParseError
from ike.identity import dn_string

C, ORG, CN, OU = (
    NameOID.COUNTRY_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
)


def dn(*attrs: tuple[x509.ObjectIdentifier, str]) -> bytes:
    """DER Name with one attribute per RDN, in the order given (first = outermost)."""
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]).public_bytes()


PARSE_TABLE = [
    ("gw-a.example.org", IdType.ID_FQDN, b"gw-a.example.org"),
    ("@gw-a.example.org", IdType.ID_FQDN, b"gw-a.example.org"),
    ("fqdn:192.0.2.1", IdType.ID_FQDN, b"192.0.2.1"),
    ("192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    ("2001:db8::1", IdType.ID_IPV6_ADDR, ipaddress.IPv6Address("2001:db8::1").packed),
    ("user@example.org", IdType.ID_RFC822_ADDR, b"user@example.org"),
    ("email:ops@example.org", IdType.ID_RFC822_ADDR, b"ops@example.org"),
    # strongSwan order: the leftmost RDN is the first one in the DER SEQUENCE.
    ("CN=gw-a, O=Example", IdType.ID_DER_ASN1_DN, dn((CN, "gw-a"), (ORG, "Example"))),
    ("C=CH, O=Example, CN=x", IdType.ID_DER_ASN1_DN, dn((C, "CH"), (ORG, "Example"), (CN, "x"))),
    ("c=CH,o=Example,cn=x", IdType.ID_DER_ASN1_DN, dn((C, "CH"), (ORG, "Example"), (CN, "x"))),
    ("asn1dn:CN=a\\, b", IdType.ID_DER_ASN1_DN, dn((CN, "a, b"))),
    ('CN="a, b", OU=ops', IdType.ID_DER_ASN1_DN, dn((CN, "a, b"), (OU, "ops"))),
    ("E=ops@example.org", IdType.ID_DER_ASN1_DN, dn((NameOID.EMAIL_ADDRESS, "ops@example.org"))),
    ("2.5.4.3=gw", IdType.ID_DER_ASN1_DN, dn((CN, "gw"))),
    ("keyid:#0a0b0c", IdType.ID_KEY_ID, b"\x0a\x0b\x0c"),
    ("keyid:gw", IdType.ID_KEY_ID, b"gw"),
]


@pytest.mark.parametrize(("text", "id_type", "data"), PARSE_TABLE)
def test_parse(text: str, id_type: IdType, data: bytes) -> None:
    ident = Identity.parse(text)
    assert (ident.id_type, ident.data) == (id_type, data)
    assert Identity.parse(str(ident)) == ident  # str() reads back


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("gw-a.example.org", "gw-a.example.org"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:0db8:0:0::1", "2001:db8::1"),
        ("user@example.org", "user@example.org"),
        ("C=CH,  O=Example,CN=x", "C=CH, O=Example, CN=x"),
        ("CN=a\\, b", "CN=a\\, b"),
        ("E=ops@example.org, serialNumber=42", "E=ops@example.org, serialNumber=42"),
        ("keyid:#0a0b", "keyid:#0a0b"),
        ("fqdn:192.0.2.1", "fqdn:192.0.2.1"),
        ("fqdn:a@b", "fqdn:a@b"),
        ("email:ops", "email:ops"),
        ("@@gw", "fqdn:@gw"),
    ],
)
def test_str(text: str, shown: str) -> None:
    assert str(Identity.parse(text)) == shown


@pytest.mark.parametrize(
    "text", ["", "   ", "C=CH, FOO=bar", "=x", "CN=a, =b", 'CN="open', "keyid:#xyz", "gw-ä.org"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(LocalError):
        Identity.parse(text)


@given(st.text(max_size=40))
def test_parse_fuzz_only_local_error(text: str) -> None:
    try:
        ident = Identity.parse(text)
    except LocalError:
        return
    assert Identity.parse(str(ident)).matches(ident)


def test_parse_multi_valued_rdn() -> None:
    ident = Identity.parse("O=Example, CN=gw+OU=ops")
    assert (
        ident.data
        == x509.Name(
            [
                x509.RelativeDistinguishedName([x509.NameAttribute(ORG, "Example")]),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(CN, "gw"), x509.NameAttribute(OU, "ops")]
                ),
            ]
        ).public_bytes()
    )
    with pytest.raises(LocalError):
        Identity.parse("CN=a+CN=a")


def test_payload_body_is_idx_prime() -> None:
    # §2.15: IDx' = ID Type | 3 RESERVED octets | Identification Data.
    assert Identity.parse("192.0.2.1").payload_body() == bytes([1, 0, 0, 0, 192, 0, 2, 1])
    assert Identity.parse("gw").payload_body() == b"\x02\x00\x00\x00gw"


@pytest.mark.parametrize(
    ("id_type", "data"),
    [
        (IdType.ID_IPV4_ADDR, b"\x01\x02\x03"),
        (IdType.ID_IPV6_ADDR, bytes(4)),
        (IdType.ID_FQDN, b""),
        (IdType.ID_FQDN, b"gw example"),
        (IdType.ID_RFC822_ADDR, b"a@b\x00"),
        (IdType.ID_DER_ASN1_DN, b"\x30\x05\x31\x03"),
        (IdType.ID_DER_ASN1_DN, b"\x30\x00"),
        (IdType.ID_KEY_ID, b""),
        (4, b"x"),  # ID type 4 is not assigned
    ],
)
def test_from_payload_rejects(id_type: int, data: bytes) -> None:
    with pytest.raises(ParseError):
        Identity.from_payload(id_type, data)


@given(st.sampled_from([1, 2, 3, 5, 9, 10, 11, 0, 200]), st.binary(max_size=40))
def test_from_payload_fuzz(id_type: int, data: bytes) -> None:
    try:
        ident = Identity.from_payload(id_type, data)
    except ParseError:
        return
    str(ident)  # anything accepted can be shown
    assert ident.matches(ident)


def test_equality_is_by_wire_bytes_matches_is_semantic() -> None:
    ours = Identity.parse("C=CH, O=Example, CN=gw")
    # The same DN with PrintableString values, as strongSwan encodes it.
    printable = der.encode(
        der.SEQUENCE,
        b"".join(
            der.encode(
                der.SET,
                der.encode(der.SEQUENCE, der.encode_oid(oid) + der.encode(der.PRINTABLE_STRING, v)),
            )
            for oid, v in (("2.5.4.6", b"CH"), ("2.5.4.10", b"Example"), ("2.5.4.3", b"GW"))
        ),
    )
    theirs = Identity.from_payload(IdType.ID_DER_ASN1_DN, printable)
    assert ours != theirs
    assert ours.matches(theirs) and theirs.matches(ours)
    assert not ours.matches(Identity.parse("CN=gw, O=Example, C=CH"))  # order matters
    assert Identity.parse("GW.Example.org").matches(Identity.parse("gw.example.org"))
    assert Identity.parse("gw.example.org") == Identity(IdType.ID_FQDN, b"gw.example.org")
    assert not Identity.parse("192.0.2.1").matches(Identity.parse("192.0.2.2"))
    assert not Identity.parse("gw").matches(Identity.parse("keyid:gw"))


# --- identity vs certificate -----------------------------------------------------------


@pytest.fixture(scope="module")
def cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(C, "CH"),
            x509.NameAttribute(ORG, "Example"),
            x509.NameAttribute(CN, "gw"),
        ]
    )
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("gw.example.org"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.RFC822Name("ops@example.org"),
            x509.DirectoryName(x509.Name([x509.NameAttribute(CN, "alias")])),
        ]
    )
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )


MATCH_TABLE = [
    ("gw.example.org", True),
    ("GW.EXAMPLE.ORG", True),
    ("other.example.org", False),
    ("example.org", False),
    ("192.0.2.1", True),
    ("192.0.2.2", False),
    ("2001:db8::1", True),
    ("2001:db8::2", False),
    ("ops@example.org", True),
    ("OPS@Example.org", True),
    ("root@example.org", False),
    ("C=CH, O=Example, CN=gw", True),
    ("C=ch, O=example, CN=GW", True),
    ("CN=gw, O=Example, C=CH", False),  # reversed RDN order is another name
    ("C=CH, O=Example, CN=gw2", False),
    ("C=CH, O=Example", False),
    ("CN=alias", True),  # directoryName SAN
    ("keyid:gw.example.org", False),
]


@pytest.mark.parametrize(("text", "expected"), MATCH_TABLE)
def test_identity_matches_certificate(cert: x509.Certificate, text: str, expected: bool) -> None:
    ident = Identity.parse(text)
    assert identity_matches(ident.id_type, ident.data, cert) is expected


def test_identity_matches_without_san_and_malformed(cert: x509.Certificate) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bare = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    assert identity_matches(IdType.ID_DER_ASN1_DN, bare.subject.public_bytes(), bare)
    assert not identity_matches(IdType.ID_FQDN, b"gw.example.org", bare)
    assert not identity_matches(IdType.ID_IPV4_ADDR, b"\xc0\x00\x02", cert)  # 3 octets
    assert not identity_matches(IdType.ID_DER_ASN1_DN, b"\x30\x80", cert)
    assert not identity_matches(77, b"gw", cert)  # type: ignore[arg-type]


def test_from_certificate_subject_and_dn_string(cert: x509.Certificate) -> None:
    ident = Identity.from_certificate_subject(cert)
    assert ident.id_type == IdType.ID_DER_ASN1_DN
    assert str(ident) == dn_string(cert.subject) == "C=CH, O=Example, CN=gw"
    assert identity_matches(ident.id_type, ident.data, cert)
