"""IKE header, payload chain and payload bodies (RFC 7296 §3.1-§3.13).

Round trips for every payload, the byte layout of an IKE_SA_INIT checked by
hand against the figures of RFC 7296 §3, real captured messages, and the
malformed cases (each must raise ParseError or its subclass, nothing else).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ike.constants import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from ike.errors import LocalError, ParseError, PeerError, UnsupportedCriticalPayload
from ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    EncryptedPayload,
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
from ike.wire import InvalidMajorVersion, Message, parse_header, parse_message

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8")

IKE_PROPOSAL = Proposal(
    1,
    ProtocolId.IKE,
    (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, key_length=256),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.DH, DhGroup.ECP_256),
    ),
)
ESP_PROPOSAL = Proposal(
    2,
    ProtocolId.ESP,
    (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, key_length=128),
        Transform(TransformType.ESN, EsnId.NO_ESN),
        Transform(TransformType.ESN, EsnId.ESN),
    ),
    spi=b"\xc0\x01\xd0\x0d",
)
TS_V4 = TrafficSelector(
    ipaddress.IPv4Address("198.51.100.0"), ipaddress.IPv4Address("198.51.100.255")
)
TS_V6 = TrafficSelector(
    ipaddress.IPv6Address("2001:db8::"), ipaddress.IPv6Address("2001:db8::ffff"), 6, 443, 443
)

# One of each payload the profile knows, plus a non-critical unknown one.
EVERY_PAYLOAD: list[Payload] = [
    SaPayload((IKE_PROPOSAL, ESP_PROPOSAL)),
    KePayload(DhGroup.CURVE25519, bytes(range(32))),
    NoncePayload(b"\x5a" * 32),
    IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"gw1.example.net"),
    IdPayload(PayloadType.IDr, IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    CertPayload(CertEncoding.X509_CERT_SIG, b"\x30\x82\x01\x00" + bytes(8)),
    CertReqPayload(CertEncoding.X509_CERT_SIG, b"\x11" * 20 + b"\x22" * 20),
    AuthPayload(AuthMethod.DIGITAL_SIGNATURE, b"\x07" + b"sig" * 10),
    NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x33" * 20),
    NotifyPayload(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=b"\x00\x00\x10\x01"),
    NotifyPayload(40000, b"private use"),
    DeletePayload(ProtocolId.ESP, (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")),
    DeletePayload(ProtocolId.IKE),
    VendorIdPayload(b"tunneld test vendor id"),
    TsPayload(PayloadType.TSi, (TS_V4, TS_V6)),
    TsPayload(PayloadType.TSr, (TS_V4,)),
    UnknownPayload(47, b"\x01\x00\x00\x00"),  # CP: not in the profile
]


def message(payloads: list[Payload], **kw: object) -> Message:
    fields: dict[str, object] = {
        "spi_i": SPI_I,
        "spi_r": SPI_R,
        "exchange_type": ExchangeType.IKE_AUTH,
        "flags": HeaderFlag.INITIATOR,
        "message_id": 1,
    }
    fields.update(kw)
    return Message(payloads=payloads, **fields)  # type: ignore[arg-type]


def frame(next_type: int, body: bytes, *, flags: int = 0) -> bytes:
    """A generic payload header (§3.2) around ``body``."""
    return struct.pack("!BBH", next_type, flags, 4 + len(body)) + body


def datagram(first: int, chain: bytes, *, version: int = 0x20, length: int | None = None) -> bytes:
    total = 28 + len(chain) if length is None else length
    head = struct.pack("!BBBBII", first, version, 35, 0x08, 1, total)
    return SPI_I + SPI_R + head + chain


# --- Round trips ---------------------------------------------------------------


@pytest.mark.parametrize("payload", EVERY_PAYLOAD, ids=lambda p: type(p).__name__)
def test_every_payload_round_trips_alone(payload: Payload) -> None:
    msg = message([payload])
    parsed = parse_message(msg.build())
    assert parsed.payloads == [payload]
    assert parsed.payloads[0].body() == payload.body()


def test_a_chain_of_every_payload_round_trips() -> None:
    msg = message(EVERY_PAYLOAD)
    data = msg.build()
    parsed = parse_message(data)
    assert parsed == msg
    assert parsed.raw == data
    assert parsed.build() == data


def test_header_fields_round_trip() -> None:
    msg = message([], exchange_type=ExchangeType.INFORMATIONAL, message_id=0xFFFFFFFF)
    msg.flags = HeaderFlag.RESPONSE
    header = parse_header(msg.build())
    assert (header.spi_i, header.spi_r) == (SPI_I, SPI_R)
    assert header.exchange_type is ExchangeType.INFORMATIONAL
    assert header.message_id == 0xFFFFFFFF
    assert header.length == 28 and header.next_payload == 0
    assert header.is_response and not header.is_initiator


def test_unknown_exchange_type_and_reserved_flag_bits() -> None:
    data = bytearray(message([]).build())
    data[18] = 99  # exchange type outside the profile: kept as int
    data[19] = 0x08 | 0x80 | 0x01  # §3.1: undefined flag bits are ignored
    data[17] = 0x2F  # §3.1: minor version is ignored
    parsed = parse_message(bytes(data))
    assert parsed.exchange_type == 99 and type(parsed.exchange_type) is int
    assert parsed.flags == HeaderFlag.INITIATOR
    assert parse_header(bytes(data)).minor_version == 0xF


def test_known_numbers_become_enums_unknown_stay_ints() -> None:
    sa = SaPayload(
        (
            Proposal(
                1,
                ProtocolId.ESP,
                (
                    Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                    Transform(6, 1234),  # RFC 9370 additional key exchange: unknown here
                    Transform(TransformType.ENCR, 15, key_length=128),  # AES-CCM-12
                ),
                spi=b"\x01\x02\x03\x04",
            ),
        )
    )
    parsed = parse_message(message([sa]).build()).payloads[0]
    assert isinstance(parsed, SaPayload)
    types = [t.type for t in parsed.proposals[0].transforms]
    ids = [t.id for t in parsed.proposals[0].transforms]
    assert types[0] is TransformType.INTEG and ids[0] is IntegId.HMAC_SHA2_256_128
    assert type(types[1]) is int and type(ids[1]) is int
    assert type(ids[2]) is int and ids[2] == 15


def test_other_transform_attributes_are_kept_tv_and_tlv() -> None:
    extras = (TransformAttribute(17, 5), TransformAttribute(18, b"\x01\x02\x03"))
    t = Transform(TransformType.ENCR, EncrId.AES_GCM_16, key_length=256, extra_attributes=extras)
    sa = SaPayload((Proposal(1, ProtocolId.IKE, (t,)),))
    body = sa.body()
    # Attributes after the 8-byte proposal and 8-byte transform headers (§3.3.5):
    assert body[16:] == bytes.fromhex("800e01008011000500120003010203")
    assert SaPayload.decode(body) == sa


def test_id_body_is_rest_of_id_payload_with_received_reserved_bytes() -> None:
    # §2.15: AUTH MACs the ID payload without its generic header, as received.
    body = b"\x02\xaa\xbb\xcc" + b"peer.example"
    data = datagram(PayloadType.IDr, frame(0, body))
    parsed = parse_message(data).payloads[0]
    assert isinstance(parsed, IdPayload)
    assert parsed.payload_type is PayloadType.IDr
    assert parsed.id_type is IdType.ID_FQDN and parsed.data == b"peer.example"
    assert parsed.body() == body
    assert IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"x").body() == b"\x02\x00\x00\x00x"


def test_traffic_selector_wire_layout() -> None:
    # §3.13.1: type, protocol, length 16, ports, start, end.
    ts = TrafficSelector.from_network(ipaddress.ip_network("203.0.113.0/24"), ip_protocol=17)
    assert ts.ts_type is TsType.TS_IPV4_ADDR_RANGE
    assert ts.encode().hex() == "071100100000ffffcb007100cb0071ff"
    v6 = TrafficSelector.from_network(ipaddress.ip_network("2001:db8:1::/48"))
    assert v6.encode()[:4] == b"\x08\x00\x00\x28" and len(v6.encode()) == 40


def test_message_helpers() -> None:
    msg = parse_message(message(EVERY_PAYLOAD).build())
    assert msg.is_initiator and not msg.is_response
    sa = msg.get(PayloadType.SA)
    assert isinstance(sa, SaPayload) and sa.proposals[1].spi == b"\xc0\x01\xd0\x0d"
    assert msg.get(PayloadType.EAP) is None
    assert len(msg.get_all(PayloadType.N)) == 3
    assert [n.notify_type for n in msg.notifies(NotifyType.REKEY_SA)] == [NotifyType.REKEY_SA]
    assert len(msg.notifies()) == 3
    assert msg.find(KePayload) == EVERY_PAYLOAD[1]
    assert [ts.payload_type for ts in msg.find_all(TsPayload)] == [PayloadType.TSi, PayloadType.TSr]
    assert msg.notifies(40000)[0].is_error is False
    assert NotifyPayload(NotifyType.AUTHENTICATION_FAILED).is_error
    assert ESP_PROPOSAL.of_type(TransformType.ESN)[1].id is EsnId.ESN


def test_certreq_hashes() -> None:
    req = CertReqPayload(CertEncoding.X509_CERT_SIG, b"\x11" * 20 + b"\x22" * 20)
    assert req.ca_hashes() == (b"\x11" * 20, b"\x22" * 20)
    with pytest.raises(ParseError):
        CertReqPayload(CertEncoding.X509_CERT_SIG, b"\x11" * 21).ca_hashes()


# --- Critical and unknown payloads (§2.5) ------------------------------------------


def test_unknown_critical_payload_raises_with_its_type() -> None:
    chain = frame(PayloadType.NONCE, b"\x01\x02", flags=0x80) + frame(0, b"\x5a" * 16)
    with pytest.raises(UnsupportedCriticalPayload) as info:
        parse_message(datagram(200, chain))
    assert info.value.payload_type == 200
    assert info.value.notify is NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD


def test_unknown_noncritical_payload_is_skipped_but_kept() -> None:
    chain = frame(PayloadType.NONCE, b"\x01\x02") + frame(0, b"\x5a" * 16)
    parsed = parse_message(datagram(200, chain))
    assert parsed.payloads == [UnknownPayload(200, b"\x01\x02"), NoncePayload(b"\x5a" * 16)]


def test_critical_bit_on_known_payload_is_ignored() -> None:
    parsed = parse_message(datagram(PayloadType.NONCE, frame(0, b"\x5a" * 16, flags=0x80)))
    assert parsed.payloads == [NoncePayload(b"\x5a" * 16)]


def test_critical_unknown_payload_builds_with_the_c_bit() -> None:
    data = message([UnknownPayload(201, b"zz", critical=True)]).build()
    assert data[29] == 0x80
    with pytest.raises(UnsupportedCriticalPayload):
        parse_message(data)


# --- An IKE_SA_INIT request, byte by byte against RFC 7296 §3 ---------------------


def test_ike_sa_init_layout_matches_rfc7296_figures() -> None:
    ke = bytes(range(64))
    nonce = bytes(range(100, 132))
    msg = Message(
        spi_i=SPI_I,
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.INITIATOR,
        message_id=0,
        payloads=[
            SaPayload((IKE_PROPOSAL,)),
            KePayload(DhGroup.ECP_256, ke),
            NoncePayload(nonce),
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, b"\xee" * 20),
        ],
    )
    data = msg.build()
    # Figure 4 (§3.1): SPIi, SPIr = 0, Next Payload SA(33), 0x20, IKE_SA_INIT(34),
    # flags I(0x08), Message ID 0, Length.
    assert data[:28] == SPI_I + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + (
        len(data).to_bytes(4, "big")
    )
    # Figure 6/7/8 (§3.3): SA header (next KE=34, length 4+8+12+8+8 = 40), proposal
    # (last, len 36, #1, IKE, SPI size 0, 3 transforms), transforms
    # (ENCR 20 + KEY_LENGTH 256 as TV 0x800e, PRF 5, DH 19; last one has 0).
    assert data[28:68].hex() == (
        "22000028"
        "00000024" "01010003"
        "0300000c" "01000014" "800e0100"
        "03000008" "02000005"
        "00000008" "04000013"
    )  # fmt: skip
    # Figure 10 (§3.4): next Ni=40, length 8+64, group 19, reserved.
    assert data[68:76].hex() == "2800004800130000"
    assert data[76:140] == ke
    # Figure 15 (§3.9): next N=41, length 4+32.
    assert data[140:144].hex() == "29000024" and data[144:176] == nonce
    # Figure 16 (§3.10): last (0), length 8+20, protocol 0, SPI size 0, type 16388.
    assert data[176:184].hex() == "0000001c00004004"
    assert len(data) == 204
    assert parse_message(data) == msg


# --- Real captures -------------------------------------------------------------------
# IKE_SA_INIT request and response of wireshark's test/captures/ikev2-decrypt-aes128ccm12.pcap
# (a real exchange, also dissected by scapy's test/contrib/ikev2.uts), UDP payloads.
WIRESHARK_INIT_REQUEST = bytes.fromhex(
    "ea684d21597afd3600000000000000002120220800000000000000f822000028"
    "00000024010100030300000c0100000f800e0080030000080200000500000008"
    "04000013280000480013000032c6dffe5c43b0d5811f7eaaa84c9f78bf99b906"
    "9c2b072e0b82f46bf6f66dd45f97ef89ee285fd5df527a44776b529fc9d8a909"
    "d842a6fb59b96a095395617229000024b655462d6f4b66f872ccd7f0f4b48577"
    "32921339cbaa5237edba244f262b68232900001c00004004949c9db5739d75a9"
    "74a49c184618369b34b7f9422900001c000040053e721b46be07d53111425d7f"
    "80d2c6e220c6072e000000100000402f0001000200030004"
)
WIRESHARK_INIT_RESPONSE = bytes.fromhex(
    "ea684d21597afd36d9fe2ab22dac23ac2120222000000000000000f022000028"
    "00000024010100030300000c0100000f800e0080030000080200000500000008"
    "0400001328000048001300002c66beadb6ce8535d6218cb401aa5a1eb4035b97"
    "caddaf36374a979c0446b8800506bf9d6f950952326bf3011913da93bb8e40f8"
    "15376be1a06801c0a63e3b54290000249e5d267379e681e7d38d81c710d38340"
    "1de7e3607b926d90a9958adcb52831aa2900001c000040047a0785273d592038"
    "29a697550f31cbb94eb72b432900001c00004005c3e58a8cc9933ce0b78f2a50"
    "e8de80134e12ce310000000800004014"
)


def test_wireshark_capture_ike_sa_init_request() -> None:
    msg = parse_message(WIRESHARK_INIT_REQUEST)
    assert msg.spi_i == bytes.fromhex("ea684d21597afd36") and msg.spi_r == bytes(8)
    assert msg.exchange_type is ExchangeType.IKE_SA_INIT and msg.message_id == 0
    assert msg.is_initiator and not msg.is_response
    assert [p.payload_type for p in msg.payloads] == [33, 34, 40, 41, 41, 41]
    sa = msg.find(SaPayload)
    assert sa is not None
    assert sa.proposals == (
        Proposal(
            1,
            ProtocolId.IKE,
            (
                Transform(TransformType.ENCR, 15, key_length=128),  # ENCR_AES_CCM_12
                Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                Transform(TransformType.DH, DhGroup.ECP_256),
            ),
        ),
    )
    ke = msg.find(KePayload)
    assert ke is not None and ke.group is DhGroup.ECP_256 and len(ke.data) == 64
    assert [n.notify_type for n in msg.notifies()] == [
        NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
    ]
    assert msg.notifies()[2].data == bytes.fromhex("0001000200030004")  # RFC 7427 §4
    assert msg.build() == WIRESHARK_INIT_REQUEST


def test_wireshark_capture_ike_sa_init_response() -> None:
    msg = parse_message(WIRESHARK_INIT_RESPONSE)
    assert msg.spi_r == bytes.fromhex("d9fe2ab22dac23ac")
    assert msg.is_response and not msg.is_initiator
    nonce = msg.find(NoncePayload)
    assert nonce is not None and nonce.nonce[:4] == bytes.fromhex("9e5d2673")
    assert msg.notifies()[-1].notify_type is NotifyType.MULTIPLE_AUTH_SUPPORTED
    assert msg.build() == WIRESHARK_INIT_RESPONSE


# --- Malformed input ----------------------------------------------------------------

GOOD = message(EVERY_PAYLOAD).build()


def delete(body: bytes) -> bytes:
    return datagram(PayloadType.D, frame(0, body))


def test_major_version_other_than_2_is_its_own_error() -> None:
    ikev1ish = datagram(0, b"", version=0x10)
    with pytest.raises(InvalidMajorVersion) as info:
        parse_message(ikev1ish)
    assert isinstance(info.value, ParseError)
    assert info.value.notify is NotifyType.INVALID_MAJOR_VERSION
    assert info.value.header.major_version == 1 and info.value.header.spi_i == SPI_I
    with pytest.raises(InvalidMajorVersion):
        parse_message(datagram(0, b"", version=0x30))


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("empty", b""),
        ("short header", GOOD[:27]),
        ("truncated", GOOD[:-1]),
        ("trailing byte", GOOD + b"\x00"),
        ("length too big", datagram(0, b"", length=29)),
        ("length too small", datagram(0, b"", length=27)),
        ("length zero", datagram(0, b"", length=0)),
        ("chain ends early", datagram(PayloadType.NONCE, b"")),
        ("zero payload length", datagram(PayloadType.NONCE, b"\x00\x00\x00\x00")),
        ("payload length 3", datagram(PayloadType.V, b"\x00\x00\x00\x03")),
        ("payload overlong", datagram(PayloadType.V, b"\x00\x00\x00\x09abcd")),
        ("bytes after last payload", datagram(PayloadType.V, frame(0, b"v") + b"\x00")),
        ("nonce too short", datagram(PayloadType.NONCE, frame(0, b"n" * 15))),
        ("nonce too long", datagram(PayloadType.NONCE, frame(0, b"n" * 257))),
        ("KE without group", datagram(PayloadType.KE, frame(0, b"\x00"))),
        ("ID empty", datagram(PayloadType.IDi, frame(0, b""))),
        ("AUTH short", datagram(PayloadType.AUTH, frame(0, b"\x0e\x00"))),
        ("CERT empty", datagram(PayloadType.CERT, frame(0, b""))),
        ("notify SPI overruns", datagram(PayloadType.N, frame(0, b"\x03\x04\x40\x09\x01"))),
        (
            "delete count overruns",
            datagram(PayloadType.D, frame(0, b"\x03\x04\x00\x02" + bytes(4))),
        ),
        ("delete extra bytes", datagram(PayloadType.D, frame(0, b"\x03\x04\x00\x01" + bytes(5)))),
        ("delete IKE with SPIs", datagram(PayloadType.D, frame(0, b"\x01\x08\x00\x01" + bytes(8)))),
        (
            "delete ESP SPI size 8",
            datagram(PayloadType.D, frame(0, b"\x03\x08\x00\x01" + bytes(8))),
        ),
        ("SK not last", datagram(PayloadType.SK, frame(0, bytes(24)) + frame(0, b"x"))),
    ],
)
def test_malformed_messages_raise_parse_error(case: str, data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(data)


def ts_body(*selectors: bytes, count: int | None = None) -> bytes:
    n = len(selectors) if count is None else count
    return bytes([n, 0, 0, 0]) + b"".join(selectors)


V4_SELECTOR = TS_V4.encode()


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("unknown TS type 9 (FC)", ts_body(b"\x09" + V4_SELECTOR[1:])),
        ("v4 type with v6 length", ts_body(b"\x07\x00\x00\x28" + V4_SELECTOR[4:] + bytes(24))),
        ("v6 type with v4 length", ts_body(b"\x08" + V4_SELECTOR[1:])),
        ("selector truncated", ts_body(V4_SELECTOR[:-1])),
        ("more selectors announced", ts_body(V4_SELECTOR, count=2)),
        ("fewer selectors announced", ts_body(V4_SELECTOR, V4_SELECTOR, count=1)),
        ("no header", b"\x01\x00"),
    ],
)
def test_bad_traffic_selectors(case: str, body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(datagram(PayloadType.TSi, frame(0, body)))


def transform_bytes(attrs: bytes, *, substruc: int = 0, length: int | None = None) -> bytes:
    n = 8 + len(attrs) if length is None else length
    return struct.pack("!BBHBBH", substruc, 0, n, 1, 0, 20) + attrs


def sa_body(transforms: bytes, *, count: int = 1, spi: bytes = b"", proto: int = 1,
            number: int = 1, substruc: int = 0, plen: int | None = None) -> bytes:  # fmt: skip
    n = 8 + len(spi) + len(transforms) if plen is None else plen
    return (
        struct.pack("!BBHBBBB", substruc, 0, n, number, proto, len(spi), count) + spi + transforms
    )


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("no proposals", b""),
        ("truncated attribute", sa_body(transform_bytes(b"\x80\x0e\x01"))),
        ("TLV attribute overruns", sa_body(transform_bytes(b"\x00\x11\x00\x05ab"))),
        ("KEY_LENGTH as TLV", sa_body(transform_bytes(b"\x00\x0e\x00\x02\x01\x00"))),
        ("KEY_LENGTH twice", sa_body(transform_bytes(b"\x80\x0e\x00\x80\x80\x0e\x01\x00"))),
        ("transform length < 8", sa_body(transform_bytes(b"", length=7))),
        ("transform length overruns", sa_body(transform_bytes(b"", length=12))),
        ("more transforms announced", sa_body(transform_bytes(b""), count=2)),
        ("fewer transforms announced", sa_body(transform_bytes(b"") * 2, count=1)),
        ("transform Last Substruc 3 on last", sa_body(transform_bytes(b"", substruc=3))),
        ("proposal Last Substruc 2 on last", sa_body(transform_bytes(b""), substruc=2)),
        ("proposal length < 8", sa_body(transform_bytes(b""), plen=7)),
        ("proposal length overruns", sa_body(transform_bytes(b""), plen=40)),
        ("IKE SPI of 4 bytes", sa_body(transform_bytes(b""), spi=b"abcd")),
        ("ESP SPI of 0 bytes", sa_body(transform_bytes(b""), proto=3)),
        ("ESP SPI of 8 bytes", sa_body(transform_bytes(b""), proto=3, spi=bytes(8))),
        ("request numbered from 2", sa_body(transform_bytes(b""), number=2)),
        (
            "second proposal not numbered 2",
            sa_body(transform_bytes(b""), substruc=2) + sa_body(transform_bytes(b"")),
        ),
    ],
)
def test_bad_sa_payloads(case: str, body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(datagram(PayloadType.SA, frame(0, body)))


def test_proposal_numbering_depends_on_request_or_response() -> None:
    two = SaPayload((IKE_PROPOSAL, ESP_PROPOSAL))
    assert parse_message(message([two]).build()).payloads == [two]
    response_two = message([two], flags=HeaderFlag.RESPONSE).build()
    with pytest.raises(ParseError):
        parse_message(response_two)
    chosen = SaPayload((ESP_PROPOSAL,))  # the accepted proposal keeps its number (2)
    assert parse_message(message([chosen], flags=HeaderFlag.RESPONSE).build()).payloads == [chosen]


def test_memoryview_and_bytearray_input() -> None:
    assert parse_message(bytearray(GOOD)) == parse_message(memoryview(GOOD))  # type: ignore[arg-type]


# --- Building with impossible values is our bug, not the peer's ----------------------


@pytest.mark.parametrize(
    "bad",
    [
        lambda: message([NoncePayload(b"short")]).build(),
        lambda: message([], spi_i=b"short").build(),
        lambda: message([], message_id=2**32).build(),
        lambda: message([VendorIdPayload(bytes(70000))]).build(),
        lambda: message([EncryptedPayload(0, bytes(24)), NoncePayload(bytes(16))]).build(),
        lambda: message([DeletePayload(ProtocolId.ESP, (b"1234", b"12345678"))]).build(),
        lambda: message([IdPayload(PayloadType.IDi, 2, b"x", reserved=b"")]).build(),
        lambda: Transform(1, 20, extra_attributes=(TransformAttribute(0x8001, 1),)).encode(True),
        lambda: TrafficSelector(TS_V4.start_addr, TS_V6.end_addr),
    ],
)
def test_building_nonsense_raises_local_error(bad: object) -> None:
    with pytest.raises(LocalError):
        bad()  # type: ignore[operator]


def test_parse_errors_are_peer_errors_with_invalid_syntax() -> None:
    with pytest.raises(PeerError) as info:
        parse_message(GOOD[:-3])
    assert info.value.notify is NotifyType.INVALID_SYNTAX
