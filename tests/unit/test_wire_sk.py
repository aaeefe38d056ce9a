"""The SK payload (RFC 7296 §3.14) with an AEAD (RFC 5282).

The cipher is a test double on cryptography's AESGCM/AESCCM implementing the
``ike.wire.SkAead`` protocol (the real one is ``ike.crypto.SkCipher``): nonce =
salt || 8-byte IV (RFC 5282 §4). The framing is checked against a real
capture decrypted with keys Wireshark publishes for it.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ike.constants import DhGroup, ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId
from ike.errors import IntegrityError, LocalError, ParseError, UnsupportedCriticalPayload
from ike.payloads import (
    AuthPayload,
    DeletePayload,
    EncryptedPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    UnknownPayload,
)
from ike.wire import Message, SkAead, decrypt_message, encrypt_message, parse_message

SPI_I = bytes.fromhex("1112131415161718")
SPI_R = bytes.fromhex("2122232425262728")


class GcmDouble:
    """ENCR_AES_GCM_16 for the SK payload: 4-byte salt, 8-byte IV, 16-byte ICV."""

    iv_len = 8
    icv_len = 16

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESGCM(key)
        self._salt = salt

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, ct_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("SK ICV mismatch") from None


class CcmDouble:
    """ENCR_AES_CCM_12 for the SK payload: 3-byte salt, 8-byte IV (RFC 5282 §4)."""

    iv_len = 8
    icv_len = 12

    def __init__(self, key_and_salt: bytes) -> None:
        self._aead = AESCCM(key_and_salt[:-3], tag_length=12)
        self._salt = key_and_salt[-3:]

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, ct_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("SK ICV mismatch") from None


AEAD: SkAead = GcmDouble(bytes(range(32)), b"salt")
IV = bytes.fromhex("0000000000000007")
INNER: list[Payload] = [
    IdPayload(PayloadType.IDi, 2, b"gw1.example.net"),
    AuthPayload(2, b"\x99" * 32),
    NotifyPayload(NotifyType.INITIAL_CONTACT),
    UnknownPayload(47, b"cfg"),
]


def auth_request(payloads: list[Payload] | None = None) -> Message:
    return Message(
        spi_i=SPI_I,
        spi_r=SPI_R,
        exchange_type=ExchangeType.IKE_AUTH,
        flags=HeaderFlag.INITIATOR,
        message_id=1,
        payloads=list(INNER if payloads is None else payloads),
    )


def test_sk_round_trip() -> None:
    msg = auth_request()
    data = encrypt_message(msg, AEAD, IV)
    opened = decrypt_message(data, AEAD)
    assert opened == msg
    assert opened.raw == data
    assert opened.is_initiator and not opened.is_response


def test_sk_layout_rfc7296_3_14_and_rfc5282_aad() -> None:
    msg = auth_request()
    data = encrypt_message(msg, AEAD, IV, pad_length=3)
    inner = b"".join(
        struct.pack("!BBH", nxt, 0, 4 + len(p.body())) + p.body()
        for p, nxt in zip(INNER, [39, 41, 47, 0], strict=True)
    )
    plaintext = inner + b"\x00\x00\x00" + b"\x03"  # padding, Pad Length (§3.14)
    sk_len = 4 + 8 + len(plaintext) + 16
    # Header: next payload SK (46); SK generic header: next = first inner (IDi = 35).
    header = SPI_I + SPI_R + bytes([46, 0x20, 35, 0x08]) + struct.pack("!II", 1, 28 + sk_len)
    sk_header = struct.pack("!BBH", 35, 0, sk_len)
    assert data[:32] == header + sk_header
    assert data[32:40] == IV
    aad = header + sk_header  # RFC 5282 §5.1: IKE header through the SK generic header
    expected = AESGCM(bytes(range(32))).encrypt(b"salt" + IV, plaintext, aad)
    assert data[40:] == expected
    # Seen without the key, the SK payload stays sealed and last.
    outer = parse_message(data)
    assert outer.payloads == [EncryptedPayload(35, data[32:])]
    assert outer.build() == data
    assert decrypt_message(data, AEAD) == msg


def test_empty_inner_chain_round_trips() -> None:
    # An INFORMATIONAL with no payloads is the liveness check (§1.4); its SK
    # generic header says "next payload: none".
    msg = auth_request([])
    msg.exchange_type = ExchangeType.INFORMATIONAL
    data = encrypt_message(msg, AEAD, IV)
    assert data[28] == 0 and len(data) == 28 + 4 + 8 + 1 + 16
    assert decrypt_message(data, AEAD) == msg


# The IKE Length is the header's (ParseError, dropped before any SA is looked
# up); a wrong Next Payload or SK Length is unauthenticated like a bad ICV:
# IntegrityError, dropped silently and never answered (§2.21.2).
STRUCTURAL_OFFSETS = (27,)


@pytest.mark.parametrize(
    "offset", [0, 8, 15, 16, 17, 18, 19, 20, 23, 27, 28, 29, 31, 32, 39, 40, -17, -1]
)
def test_tampering_anywhere_is_detected(offset: int) -> None:
    # Header and SK header are AAD (minor version included), the IV feeds the
    # nonce, the rest is ciphertext and ICV.
    data = bytearray(encrypt_message(auth_request(), AEAD, IV))
    data[offset] ^= 0x01
    expected = ParseError if offset in STRUCTURAL_OFFSETS else IntegrityError
    with pytest.raises(expected) as info:
        decrypt_message(bytes(data), AEAD)
    assert type(info.value) is expected


def test_wrong_key_is_an_integrity_error() -> None:
    data = encrypt_message(auth_request(), AEAD, IV)
    with pytest.raises(IntegrityError):
        decrypt_message(data, GcmDouble(bytes(32), b"salt"))


def seal_raw(plaintext: bytes, first_inner: int, aead: SkAead = AEAD) -> bytes:
    """An SK message around an arbitrary plaintext (to test what follows the ICV check)."""
    sk_len = 4 + aead.iv_len + len(plaintext) + aead.icv_len
    header = SPI_I + SPI_R + bytes([46, 0x20, 37, 0x08]) + struct.pack("!II", 2, 28 + sk_len)
    aad = header + struct.pack("!BBH", first_inner, 0, sk_len)
    return aad + IV + aead.seal(IV, aad, plaintext)


def test_pad_length_is_validated_after_the_icv() -> None:
    delete = struct.pack("!BBH", 0, 0, 8) + b"\x01\x00\x00\x00"
    assert decrypt_message(seal_raw(delete + b"\x00", PayloadType.D), AEAD).payloads == [
        DeletePayload(ProtocolId.IKE)
    ]
    assert decrypt_message(seal_raw(delete + b"\xff\xfe\x02", PayloadType.D), AEAD).payloads == [
        DeletePayload(ProtocolId.IKE)
    ]
    with pytest.raises(ParseError):
        decrypt_message(seal_raw(delete + b"\x09", PayloadType.D), AEAD)
    with pytest.raises(ParseError):
        decrypt_message(seal_raw(b"\x01", 0), AEAD)


def test_inner_chain_errors_surface_after_decryption() -> None:
    nonce = struct.pack("!BBH", 0, 0, 4 + 15) + b"n" * 15
    with pytest.raises(ParseError):
        decrypt_message(seal_raw(nonce + b"\x00", PayloadType.NONCE), AEAD)
    critical = struct.pack("!BBH", 0, 0x80, 6) + b"xy"
    with pytest.raises(UnsupportedCriticalPayload) as info:
        decrypt_message(seal_raw(critical + b"\x00", 222), AEAD)
    assert info.value.payload_type == 222
    nested = struct.pack("!BBH", 0, 0, 4 + 30) + bytes(30)
    with pytest.raises(ParseError):
        decrypt_message(seal_raw(nested + b"\x00", PayloadType.SK), AEAD)


def test_structural_checks_before_decryption() -> None:
    good = encrypt_message(auth_request(), AEAD, IV)
    plain = Message(
        spi_i=SPI_I,
        exchange_type=ExchangeType.IKE_SA_INIT,
        message_id=0,
        payloads=[KePayload(DhGroup.ECP_256, bytes(64))],
    ).build()
    with pytest.raises(IntegrityError):
        decrypt_message(plain, AEAD)  # no SK payload at all: unauthenticated, dropped
    with pytest.raises(ParseError):
        decrypt_message(good[:-1], AEAD)  # IKE length disagrees
    too_short = seal_raw(b"\x00", 0)[: 28 + 4 + 8 + 16]  # no room for the pad length
    too_short = too_short[:24] + struct.pack("!I", len(too_short)) + too_short[28:]
    too_short = too_short[:30] + struct.pack("!H", len(too_short) - 28) + too_short[32:]
    with pytest.raises(IntegrityError):
        decrypt_message(too_short, AEAD)
    # A payload after the SK payload is refused even by the outer parser.
    extra = NoncePayload(b"n" * 16)
    with pytest.raises(ParseError):
        parse_message(good[:24] + struct.pack("!I", len(good) + 20) + good[28:] + b"\x00" * 20)
    with pytest.raises(LocalError):
        auth_request([EncryptedPayload(0, bytes(25)), extra]).build()


def test_encrypt_refuses_misuse() -> None:
    with pytest.raises(LocalError):
        encrypt_message(auth_request(), AEAD, b"short")
    with pytest.raises(LocalError):
        encrypt_message(auth_request(), AEAD, IV, pad_length=256)
    with pytest.raises(LocalError):
        encrypt_message(auth_request([EncryptedPayload(0, bytes(25))]), AEAD, IV)


# INFORMATIONAL exchange (Delete IKE SA) from wireshark's
# test/captures/ikev2-decrypt-aes128ccm12.pcap (UDP payloads), with the SK_ei/SK_er
# (key || 3-byte salt) from wireshark's test/config/ikev2_decryption_table.tmpl.
CAPTURED_DELETE_REQUEST = bytes.fromhex(
    "ea684d21597afd36d9fe2ab22dac23ac2e202508000000020000003d2a000021"
    "cca0b35de5abc51c9987cbf1f5ecff210eb767cdb85179383b964d78e2"
)
CAPTURED_DELETE_RESPONSE = bytes.fromhex(
    "ea684d21597afd36d9fe2ab22dac23ac2e202520000000020000003500000019"
    "a80c957bac15c3f8afdf315a81cc4b7c40e8660d44"
)
CAPTURED_SK_EI = bytes.fromhex("be83fe15f6a9976941870830fe26c014b863b3")
CAPTURED_SK_ER = bytes.fromhex("79e0f4476861a76e64329e787b1c4ff38d732f")


def test_captured_delete_request_decrypts() -> None:
    msg = decrypt_message(CAPTURED_DELETE_REQUEST, CcmDouble(CAPTURED_SK_EI))
    assert msg.exchange_type is ExchangeType.INFORMATIONAL and msg.message_id == 2
    assert msg.is_initiator and not msg.is_response
    assert msg.payloads == [DeletePayload(ProtocolId.IKE)]
    # Our encoder reproduces the captured datagram bit for bit from the same IV.
    iv = CAPTURED_DELETE_REQUEST[32:40]
    assert encrypt_message(msg, CcmDouble(CAPTURED_SK_EI), iv) == CAPTURED_DELETE_REQUEST


def test_captured_delete_response_decrypts() -> None:
    msg = decrypt_message(CAPTURED_DELETE_RESPONSE, CcmDouble(CAPTURED_SK_ER))
    assert msg.is_response and msg.payloads == []
    iv = CAPTURED_DELETE_RESPONSE[32:40]
    assert encrypt_message(msg, CcmDouble(CAPTURED_SK_ER), iv) == CAPTURED_DELETE_RESPONSE
    with pytest.raises(IntegrityError):  # the initiator's key does not open it
        decrypt_message(CAPTURED_DELETE_RESPONSE, CcmDouble(CAPTURED_SK_EI))


def test_the_real_sk_cipher_agrees_with_the_test_double() -> None:
    # ike.crypto.SkCipher (SK_e = key || 4-byte salt) and the double seal alike.
    from ike.constants import EncrId
    from ike.crypto import SkCipher

    real = SkCipher(EncrId.AES_GCM_16, bytes(range(32)) + b"salt")
    sealed = encrypt_message(auth_request(), real, IV, pad_length=1)
    assert sealed == encrypt_message(auth_request(), AEAD, IV, pad_length=1)
    assert decrypt_message(sealed, real) == auth_request()
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    with pytest.raises(IntegrityError):
        decrypt_message(tampered, real)
