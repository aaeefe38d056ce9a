"""Hypothesis: whatever arrives, the codec answers with a Message or a PeerError.

Random datagrams, random payload chains behind a valid header, mutations of
valid messages (with and without the Length field fixed up), random SK
plaintexts under a valid key, and build/parse round trips of random payloads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.constants import ExchangeType, HeaderFlag, PayloadType, ProtocolId, TransformType
from ike.errors import IntegrityError, PeerError
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
from ike.wire import Message, decrypt_message, encrypt_message, parse_message

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPI_I, SPI_R = b"\x01" * 8, b"\x02" * 8
KNOWN_TYPES = [int(t) for t in PayloadType if t != PayloadType.NONE]


class Gcm:
    iv_len = 8
    icv_len = 16

    def __init__(self) -> None:
        self._aead = AESGCM(bytes(16))

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(b"salt" + iv, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        try:
            return self._aead.decrypt(b"salt" + iv, ct_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("SK ICV mismatch") from None


AEAD = Gcm()


def parse_or_refuse(data: bytes) -> Message | None:
    """A Message, or None after a PeerError; anything else fails the test."""
    try:
        msg = parse_message(data)
    except PeerError:
        return None
    # Whatever parses rebuilds canonically and parses to the same thing.
    assert parse_message(msg.build()) == msg
    return msg


def header(first: int, length: int, exchange: int = 35, flags: int = 0x08) -> bytes:
    return SPI_I + SPI_R + struct.pack("!BBBBII", first, 0x20, exchange, flags, 1, length)


# --- Strategies for structured payloads -----------------------------------------------

blobs = st.binary(max_size=40)
u16 = st.integers(0, 0xFFFF)
transforms = st.builds(
    Transform,
    type=st.sampled_from(list(TransformType)) | st.integers(0, 255),
    id=u16,
    key_length=st.none() | u16,
    extra_attributes=st.lists(
        st.builds(TransformAttribute, st.integers(15, 0x7FFF), u16 | blobs), max_size=2
    ).map(tuple),
)


@st.composite
def sa_payloads(draw: st.DrawFn) -> SaPayload:
    count = draw(st.integers(1, 3))
    proposals = []
    for number in range(1, count + 1):
        protocol, spi = draw(
            st.sampled_from([(ProtocolId.IKE, b""), (ProtocolId.IKE, b"s" * 8)])
            | st.tuples(st.just(ProtocolId.ESP), st.binary(min_size=4, max_size=4))
        )
        ts = tuple(draw(st.lists(transforms, min_size=1, max_size=4)))
        proposals.append(Proposal(number, protocol, ts, spi))
    return SaPayload(tuple(proposals))


def selectors(version: int) -> st.SearchStrategy[TrafficSelector]:
    bits = 32 if version == 4 else 128
    addr = st.integers(0, 2**bits - 1).map(ipaddress.ip_address if version == 4 else _v6)
    return st.builds(TrafficSelector, addr, addr, st.integers(0, 255), u16, u16)


def _v6(n: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(n)


spis = st.binary(min_size=4, max_size=4)
id_types = st.sampled_from([PayloadType.IDi, PayloadType.IDr])
ts_types = st.sampled_from([PayloadType.TSi, PayloadType.TSr])
payloads: st.SearchStrategy[Payload] = st.one_of(
    sa_payloads(),
    st.builds(KePayload, u16, blobs),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(IdPayload, id_types, st.integers(0, 255), blobs, st.binary(min_size=3, max_size=3)),
    st.builds(CertPayload, st.integers(0, 255), blobs),
    st.builds(CertReqPayload, st.integers(0, 255), blobs),
    st.builds(AuthPayload, st.integers(0, 255), blobs),
    st.builds(NotifyPayload, u16, blobs, st.integers(0, 255), st.binary(max_size=8)),
    st.builds(
        DeletePayload,
        st.just(ProtocolId.ESP),
        st.lists(st.binary(min_size=4, max_size=4)).map(tuple),
    ),
    st.just(DeletePayload(ProtocolId.IKE)),
    st.builds(VendorIdPayload, blobs),
    st.builds(TsPayload, ts_types, st.lists(selectors(4) | selectors(6), max_size=3).map(tuple)),
    st.builds(UnknownPayload, st.integers(49, 255), blobs),
)


@FUZZ
@given(
    st.lists(payloads, max_size=6), st.sampled_from(list(ExchangeType)), st.integers(0, 2**32 - 1)
)
def test_random_payloads_round_trip(items: list[Payload], exchange: ExchangeType, mid: int) -> None:
    msg = Message(
        spi_i=SPI_I, spi_r=SPI_R, exchange_type=exchange, flags=HeaderFlag.INITIATOR,
        message_id=mid, payloads=items,
    )  # fmt: skip
    assert parse_message(msg.build()) == msg
    assert decrypt_message(encrypt_message(msg, AEAD, b"\x00" * 8), AEAD) == msg


# --- Random and mutated input ----------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    parse_or_refuse(data)
    parse_or_refuse(header(data[0] if data else 0, 28 + len(data)) + data)


@st.composite
def random_chains(draw: st.DrawFn) -> bytes:
    """Well-framed generic payload headers around random bodies (reaches every decoder)."""
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KNOWN_TYPES) | st.integers(0, 255),
                st.sampled_from([0, 0x80]),
                st.binary(max_size=60),
            ),
            min_size=1,
            max_size=5,
        )
    )
    chain = b""
    for i, (_ptype, flags, body) in enumerate(items):
        nxt = items[i + 1][0] if i + 1 < len(items) else 0
        chain += struct.pack("!BBH", nxt, flags, 4 + len(body)) + body
    return header(items[0][0], 28 + len(chain), flags=draw(st.integers(0, 255))) + chain


@FUZZ
@given(random_chains())
def test_random_chains_behind_a_valid_header(data: bytes) -> None:
    parse_or_refuse(data)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    msg = draw(st.lists(payloads, min_size=1, max_size=4))
    data = bytearray(Message(spi_i=SPI_I, exchange_type=34, message_id=0, payloads=msg).build())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    if draw(st.booleans()) and len(data) >= 28:
        data[24:28] = len(data).to_bytes(4, "big")  # get past the Length check
    return bytes(data)


@FUZZ
@given(mutations())
def test_mutated_valid_messages(data: bytes) -> None:
    parse_or_refuse(data)


# --- SK payload ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 255))
def test_random_plaintext_under_a_valid_icv(plaintext: bytes, first: int) -> None:
    sk_len = 4 + 8 + len(plaintext) + 16
    aad = header(PayloadType.SK, 28 + sk_len, exchange=37) + struct.pack("!BBH", first, 0, sk_len)
    data = aad + b"\x00" * 8 + AEAD.seal(b"\x00" * 8, aad, plaintext)
    with contextlib.suppress(PeerError):
        decrypt_message(data, AEAD)


@FUZZ
@given(st.integers(0, 200), st.integers(0, 255), st.booleans())
def test_mutated_sk_messages(pos: int, value: int, fix_length: bool) -> None:
    msg = Message(
        spi_i=SPI_I, spi_r=SPI_R, exchange_type=37, message_id=3,
        payloads=[DeletePayload(ProtocolId.ESP, (b"\x00\x00\x00\x09",))],
    )  # fmt: skip
    original = encrypt_message(msg, AEAD, b"\x00" * 8)
    data = bytearray(original)
    data[pos % len(data)] = value
    if fix_length:
        data[24:28] = len(data).to_bytes(4, "big")
    try:
        opened = decrypt_message(bytes(data), AEAD)
    except PeerError:
        return
    # Nothing may change unnoticed (the minor version is AAD as well).
    assert bytes(data) == original
    assert opened.payloads == msg.payloads
