"""Seed corpora: genuine messages made by the project's own builders and sessions.

Everything is deterministic (DeterministicEntropy, fixed keys) and cached
per process. The IKE traffic comes from a SessionPair (tests/unit/sessionpair.py)
run through a whole life: IKE_SA_INIT (also with a COOKIE round and with an
INVALID_KE_PAYLOAD retry), IKE_AUTH, liveness checks both ways, a Child SA
rekey, another Child SA, an IKE SA rekey, a Child SA delete and the close.
Each encrypted message is also kept in *plain form*: the 28-byte header,
the SK payload header and IV, then the decrypted plaintext (inner payloads,
padding, pad length), which a fuzzer mutates and seals again with a real key.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ike import der
from ike.auth import (
    ECDSA,
    EDDSA,
    RSA_PKCS1,
    RSA_PSS,
    SignatureAlgorithm,
    signature_hash_algorithms_data,
)
from ike.constants import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from ike.cookies import CookieJar, cookie_challenge
from ike.crypto import SkCipher
from ike.entropy import DeterministicEntropy
from ike.errors import IntegrityError
from ike.identity import Identity
from ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)
from ike.session import IkeSession
from ike.wire import (
    IKE_HEADER_LEN,
    Message,
    decrypt_message,
    encrypt_message,
    parse_header,
    parse_message,
)
from tests.helpers.packets import TCP, ipv4, ipv6, udp_packet
from tests.unit.sessionpair import (
    ADDR_I,
    ADDR_R,
    GW_I,
    T0,
    SessionPair,
    config_pair,
    make_ca,
    make_config,
    make_leaf,
    pubkey,
)
from tunneld.dataplane.esp import ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305
from tunneld.dataplane.sa import OutboundSA

SK_PREFIX = IKE_HEADER_LEN + 4 + 8  # IKE header, SK generic header, IV
SPI_I, SPI_R = bytes(range(1, 9)), bytes(range(9, 17))


# -- IKE: the life of a session pair ---------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    sender: str  # "i" or "r" (the side of the reference pair that sent it)
    data: bytes
    plain: bytes | None  # plain form of an SK message (see the module docstring)

    @property
    def exchange(self) -> int:
        return self.data[18]


def _ciphers(pair: SessionPair) -> list[SkCipher]:
    found = []
    for _side, session in pair.sessions():
        for sa in session._core.sas:
            if sa.ctx.cipher_in is not None:
                found.append(sa.ctx.cipher_in)
    return found


def _plain_form(data: bytes, ciphers: list[SkCipher]) -> bytes | None:
    if parse_header(data).exchange_type == ExchangeType.IKE_SA_INIT:
        return None
    for cipher in ciphers:
        try:
            plaintext = cipher.open(data[32:40], data[:32], data[40:])
        except IntegrityError:
            continue
        return data[:40] + plaintext
    raise AssertionError("no cipher of the reference pair opens a message it sent")


@cache
def reference_pair_wire() -> tuple[Datagram, ...]:
    """Every datagram of the reference pair's life, with plain forms."""
    pair = SessionPair(*config_pair())
    pair.start()
    ciphers: list[SkCipher] = []

    def settle(until: float) -> None:
        pair.run(until=until)
        ciphers.extend(c for c in _ciphers(pair) if c not in ciphers)

    settle(T0 + 1)
    assert pair.established()
    pair.initiator.check_liveness(pair.now)
    settle(pair.now + 1)
    pair.responder.check_liveness(pair.now)
    settle(pair.now + 1)
    (child,) = pair.initiator.children
    pair.initiator.rekey_child(child.inbound_spi, pair.now)
    settle(pair.now + 1)
    pair.responder.create_child(pair.now)
    settle(pair.now + 1)
    pair.initiator.rekey_ike(pair.now)
    settle(pair.now + 1)
    pair.responder.delete_child(pair.responder.children[0].inbound_spi, pair.now)
    settle(pair.now + 1)
    pair.initiator.check_liveness(pair.now)
    settle(pair.now + 1)
    pair.responder.close(pair.now)
    settle(pair.now + 30)
    return tuple(Datagram(s.sender, s.data, _plain_form(s.data, ciphers)) for s in pair.wire)


def initiator_first_messages() -> list[bytes]:
    """IKE_SA_INIT of differently configured initiators, COOKIE and INVALID_KE rounds."""
    i_cfg, r_cfg = config_pair()
    multi = make_config(GW_I, None, pubkey(GW_I), ike=("aes128gcm16-prfsha256-ecp256",
                        "aes256gcm16-prfsha256-x25519"))  # fmt: skip
    out = []
    for pair in (
        SessionPair(multi, r_cfg),
        SessionPair(i_cfg, r_cfg, cookies=CookieJar(bytes(32))),
    ):
        pair.start()
        pair.run(until=T0 + 1)
        out += [s.data for s in pair.wire if s.data[18] == ExchangeType.IKE_SA_INIT]
    configs = [
        config_pair()[0],
        config_pair("ed25519")[0],
        make_config(GW_I, None, pubkey(GW_I), ike=("aes128gcm16-prfsha256-ecp256",
                    "aes256gcm16-prfsha384-x25519", "chacha20poly1305-prfsha512-ecp384")),
    ]  # fmt: skip
    for seed, config in enumerate(configs):
        session = IkeSession.initiator(config, DeterministicEntropy(seed), T0, ADDR_I, ADDR_R)
        session.initiate(T0)
        ((request, _src, _dst),) = session.datagrams_to_send()
        out.append(request)
        # A COOKIE round (§2.6): the retry starts with N(COOKIE).
        jar = CookieJar(bytes(32))
        parsed = parse_message(request)
        challenge = cookie_challenge(parsed, jar.cookie(parsed, ADDR_I[0]))
        out.append(challenge)
        session.receive_datagram(challenge, ADDR_R, ADDR_I, T0 + 0.1)
        out += [d for d, _s, _d in session.datagrams_to_send()]
    return out


def cookie_requests(jar: CookieJar, host: str) -> list[bytes]:
    """IKE_SA_INIT requests, the second with a cookie ``jar`` made for ``host``."""
    session = IkeSession.initiator(config_pair()[0], DeterministicEntropy(5), T0, (host, 500),
                                   ADDR_R)  # fmt: skip
    session.initiate(T0)
    ((request, _src, _dst),) = session.datagrams_to_send()
    parsed = parse_message(request)
    challenge = cookie_challenge(parsed, jar.cookie(parsed, host))
    session.receive_datagram(challenge, ADDR_R, (host, 500), T0 + 0.1)
    ((again, _src, _dst),) = session.datagrams_to_send()
    return [request, again, challenge]


# -- IKE: every payload type, built directly --------------------------------------------


def every_payload() -> list[Payload]:
    v4 = TrafficSelector.from_network(ipaddress.ip_network("198.51.100.0/24"))
    v6 = TrafficSelector.from_network(ipaddress.ip_network("2001:db8::/32"), 6)
    ports = TrafficSelector(
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.9"), 17, 500, 4500
    )
    transforms = (
        Transform(TransformType.ENCR, 20, key_length=256),
        Transform(TransformType.PRF, 5),
        Transform(TransformType.DH, DhGroup.CURVE25519),
        Transform(TransformType.ESN, 0, extra_attributes=(TransformAttribute(17, b"tlv"),)),
        Transform(TransformType.INTEG, 12, extra_attributes=(TransformAttribute(18, 7),)),
    )
    dn = Identity.parse("C=CH, O=Example, CN=gw-a").data
    _key, cert = make_leaf(make_ca(), "gw-x.example.org")
    return [
        SaPayload((Proposal(1, ProtocolId.IKE, transforms[:4]),)),
        SaPayload(
            (
                Proposal(1, ProtocolId.ESP, (transforms[0], transforms[3]), b"\x00\x00\x10\x01"),
                Proposal(2, ProtocolId.IKE, transforms, SPI_I),
            )
        ),
        KePayload(DhGroup.CURVE25519, bytes(range(32))),
        NoncePayload(bytes(range(32))),
        IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"gw-a.example.org"),
        IdPayload(PayloadType.IDr, IdType.ID_DER_ASN1_DN, dn),
        IdPayload(PayloadType.IDi, IdType.ID_IPV6_ADDR, bytes(16)),
        CertPayload(CertEncoding.X509_CERT_SIG, cert.public_bytes(_DER)),
        CertReqPayload(CertEncoding.X509_CERT_SIG, bytes(40)),
        AuthPayload(AuthMethod.DIGITAL_SIGNATURE, _auth_data(SignatureAlgorithm(ECDSA, HASH256))),
        AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(32)),
        NotifyPayload(NotifyType.COOKIE, bytes(36)),
        NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x00\x00\x10\x01"),
        NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, signature_hash_algorithms_data()),
        NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x1f"),
        DeletePayload(ProtocolId.ESP, (b"\x00\x00\x10\x01", b"\x00\x00\x10\x02")),
        DeletePayload(ProtocolId.IKE),
        VendorIdPayload(b"tunneld fuzz"),
        TsPayload(PayloadType.TSi, (v4, ports)),
        TsPayload(PayloadType.TSr, (v6,)),
        UnknownPayload(200, b"unknown"),
    ]


def built_messages() -> list[bytes]:
    """Cleartext messages with every payload type (and the inner chains of SK messages)."""
    payloads = every_payload()
    out = []
    for i in range(0, len(payloads), 3):
        group = payloads[i : i + 3]
        flags = HeaderFlag.INITIATOR if i % 2 else HeaderFlag.RESPONSE
        msg = Message(spi_i=SPI_I, spi_r=SPI_R, exchange_type=35 + i % 3, flags=flags,
                      message_id=i, payloads=group)  # fmt: skip
        out.append(msg.build())
    out.append(Message(spi_i=SPI_I, exchange_type=34, message_id=0, payloads=payloads).build())
    for d in reference_pair_wire():
        if d.plain is not None:
            header = bytearray(d.data[:IKE_HEADER_LEN])
            header[16] = d.data[IKE_HEADER_LEN]  # the first inner payload
            chain = d.plain[SK_PREFIX : len(d.plain) - 1 - d.plain[-1]]
            header[24:28] = (IKE_HEADER_LEN + len(chain)).to_bytes(4, "big")
            out.append(bytes(header) + chain)
    return out


def ike_corpus() -> list[bytes]:
    """Genuine datagrams (SK ones sealed) and cleartext messages of every payload."""
    return [d.data for d in reference_pair_wire()] + initiator_first_messages() + built_messages()


# -- SK sealing ---------------------------------------------------------------------------


def seal(plain: bytes | bytearray, cipher: SkCipher, fix_lengths: bool) -> bytes:
    """Seal a plain form (header, SK header, IV, plaintext) with ``cipher``."""
    if len(plain) < SK_PREFIX:
        return bytes(plain)
    buf = bytearray(plain)
    if fix_lengths:
        total = len(buf) + cipher.icv_len
        buf[24:28] = total.to_bytes(4, "big")
        if total - IKE_HEADER_LEN <= 0xFFFF:
            buf[30:32] = (total - IKE_HEADER_LEN).to_bytes(2, "big")
    aad, iv = bytes(buf[:32]), bytes(buf[32:40])
    return aad + iv + cipher.seal(iv, aad, bytes(buf[40:]))


def fuzz_cipher() -> SkCipher:
    """The real SK key of the fuzzers that need one (AES-256-GCM-16 with salt)."""
    return SkCipher(20, bytes(range(36)))


@cache
def sk_plain_forms() -> tuple[bytes, ...]:
    """Plain forms: the reference pair's SK messages and built ones with every payload."""
    forms = [d.plain for d in reference_pair_wire() if d.plain is not None]
    cipher = _Recorder()
    payloads = every_payload()
    for i in range(0, len(payloads), 4):
        msg = Message(spi_i=SPI_I, spi_r=SPI_R, exchange_type=36 + i % 2, message_id=i,
                      flags=HeaderFlag.INITIATOR, payloads=payloads[i : i + 4])  # fmt: skip
        encrypt_message(msg, cipher, bytes(8), pad_length=i % 5)
    return tuple(forms + cipher.forms)


class _Recorder:
    """An SkAead that records the plain form of what it seals (ICV of zeros)."""

    iv_len = 8
    icv_len = 16

    def __init__(self) -> None:
        self.forms: list[bytes] = []

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        self.forms.append(aad + iv + plaintext)
        return plaintext + bytes(16)

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        raise IntegrityError("recorder")


def check_sk_corpus(cipher: SkCipher) -> None:
    """Sanity: the plain forms sealed again open to messages."""
    for form in sk_plain_forms():
        decrypt_message(seal(form, cipher, True), cipher)


# -- certificates, identities, DER ------------------------------------------------------

_DER = Encoding.DER
HASH256 = HashAlgorithm.SHA2_256


def _auth_data(alg: SignatureAlgorithm, signature: bytes = bytes(64)) -> bytes:
    ident = alg.algorithm_identifier()
    return bytes([len(ident)]) + ident + signature


def auth_data_corpus() -> list[bytes]:
    algs = [
        SignatureAlgorithm(ECDSA, HashAlgorithm.SHA2_256),
        SignatureAlgorithm(ECDSA, HashAlgorithm.SHA2_512),
        SignatureAlgorithm(EDDSA, HashAlgorithm.IDENTITY, curve="Ed25519"),
        SignatureAlgorithm(EDDSA, HashAlgorithm.IDENTITY, curve="Ed448"),
        SignatureAlgorithm(RSA_PKCS1, HashAlgorithm.SHA2_384),
        SignatureAlgorithm(RSA_PSS, HashAlgorithm.SHA2_256, salt_len=32),
        SignatureAlgorithm(RSA_PSS, HashAlgorithm.SHA2_512, salt_len=0),
    ]
    out = [_auth_data(a) for a in algs]
    for d in reference_pair_wire():  # the AUTH data the pair really sent
        if d.plain is not None and d.exchange == ExchangeType.IKE_AUTH:
            msg = decrypt_message(seal(d.plain, fuzz_cipher(), True), fuzz_cipher())
            out += [p.data for p in msg.find_all(AuthPayload)]
    out.append(signature_hash_algorithms_data())
    return out


@cache
def certificates() -> tuple[x509.Certificate, ...]:
    ecdsa_ca, ed_ca = make_ca(), make_ca("Ed CA", "ed25519", 9)
    leaves = [
        make_leaf(ecdsa_ca, "gw-a.example.org")[1],
        make_leaf(ed_ca, "gw-b.example.org", "ed25519", seed=13)[1],
        make_leaf(ecdsa_ca, "gw-c.example.org", seed=17, expired=True)[1],
    ]
    return (ecdsa_ca.cert, ed_ca.cert, *leaves)


def dn_corpus() -> list[bytes]:
    """DER Names: from certificates, strongSwan-style strings, odd string types."""
    names = [c.subject.public_bytes() for c in certificates()]
    for text in (
        "C=CH, O=Example AG, OU=VPN+OU=Ops, CN=gw-a.example.org",
        'CN=a\\,b, O="quoted, value", E=ops@example.org, DC=example, DC=org',
        "1.2.3.4=x, SERIALNUMBER=1234, UID=gw, STREET=Main Street 1",
    ):
        names.append(Identity.parse(text).data)
    odd = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "bmp \u00e9", _type=_ASN1Type.BMPString),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "univ", _type=_ASN1Type.UniversalString),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "t61", _type=_ASN1Type.T61String),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
        ]
    )
    names.append(odd.public_bytes())
    return names


def identity_corpus() -> list[bytes]:
    """ID payload bodies' type and data: ID Type byte, then Identification Data."""
    out = [bytes([IdType.ID_DER_ASN1_DN]) + dn for dn in dn_corpus()]
    for text in ("192.0.2.1", "2001:db8::1", "gw-a.example.org", "ops@example.org",
                 "keyid:#0102030405", "keyid:some-key"):  # fmt: skip
        ident = Identity.parse(text)
        out.append(bytes([ident.id_type]) + ident.data)
    out.append(bytes([IdType.ID_DER_ASN1_GN]) + der.encode(0x82, b"gw.example.org"))
    return out


def der_corpus() -> list[bytes]:
    """DER for the generic walker: Names, AlgorithmIdentifiers, whole certificates."""
    out = dn_corpus()
    out += [a[1 : 1 + a[0]] for a in auth_data_corpus()[:7]]
    out += [der.encode_integer(n) for n in (0, 127, 128, -129, 2**64)]
    out.append(der.encode_oid("1.2.840.113549.1.1.10"))
    out += [c.public_bytes(_DER) for c in certificates()[:2]]
    return out


def cert_corpus() -> list[bytes]:
    return [c.public_bytes(_DER) for c in certificates()]


# -- ESP -----------------------------------------------------------------------------

ESP_SPI = 0x0000_1001
ESP_KEY = bytes(range(32))
ESP_SALT = b"salt"
SITE_A, SITE_B = "198.51.100.0/24", "203.0.113.0/24"
V6_A, V6_B = "2001:db8:a::/48", "2001:db8:b::/48"


def inner_packets() -> list[tuple[int, bytes]]:
    """(next header, inner packet): what a tunnel carries, and a dummy (59)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 77, 0x50, 0x10, 500, 0, 0) + b"x" * 100
    return [
        (4, udp_packet("198.51.100.1", "203.0.113.1", b"hello")),
        (4, ipv4("198.51.100.2", "203.0.113.2", tcp, proto=TCP)),
        (41, ipv6("2001:db8:a::1", "2001:db8:b::1", tcp, next_header=TCP)),
        (4, udp_packet("198.51.100.3", "203.0.113.3", bytes(1300))),
        (59, b""),
        (4, ipv4("192.0.2.77", "203.0.113.3", b"outside the selectors")),
    ]


def esp_config(flags: int) -> tuple[bool, int]:
    """(esn, encr) from a config byte."""
    return bool(flags & 1), ENCR_CHACHA20_POLY1305 if flags & 2 else ENCR_AES_GCM_16


def esp_packets(flags: int) -> list[bytes]:
    esn, encr = esp_config(flags)
    out = OutboundSA(ESP_SPI, ESP_KEY, ESP_SALT, esn=esn, encr=encr)
    return [out.encrypt(inner, nh) for nh, inner in inner_packets()]


def esp_plain_forms() -> list[bytes]:
    """SPI, seq, IV (= seq), then inner packet and trailer: what seals to an ESP packet."""
    from tunneld.dataplane.esp import trailer

    out = []
    for seq, (nh, inner) in enumerate(inner_packets(), start=1):
        header = struct.pack("!IIQ", ESP_SPI, seq, seq)
        out.append(header + inner + trailer(len(inner), nh))
    return out


def tcp_segment(seq: int, size: int, *, v6: bool = False, flags: int = 0x10, ts: bool = True,
                sport: int = 40000) -> bytes:  # fmt: skip
    """A TCP segment over IPv4/IPv6 with (optionally) the timestamp option."""
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000) if ts else b""
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq & 0xFFFFFFFF, 77, doff << 4, flags, 500, 0, 0)
    payload = bytes((seq + i) % 251 for i in range(size))
    if v6:
        return ipv6("2001:db8:a::1", "2001:db8:b::1", tcp + options + payload, next_header=TCP)
    return ipv4("198.51.100.10", "203.0.113.10", tcp + options + payload, proto=TCP)
