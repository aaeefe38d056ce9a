"""ESP codec and SA objects: round trips, wire layout, trailer rules, limits, secrets."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.helpers import packets
from tunneld.dataplane import esp
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA

KEY128 = bytes(range(16))
KEY256 = bytes(range(100, 132))
SALT = b"\x0a\x0b\x0c\x0d"
SPI = 0xC0DE0001


def ipv4(payload_len: int) -> bytes:
    payload = bytes((i * 7) & 0xFF for i in range(payload_len))
    return packets.ipv4("198.51.100.1", "203.0.113.9", payload, ident=7)


def ipv6(payload_len: int) -> bytes:
    payload = bytes((i * 11) & 0xFF for i in range(payload_len))
    return packets.ipv6("2001:db8::1", "2001:db8:0:1::2", payload)


def pair(key: bytes, esn: bool, **kw: int) -> tuple[OutboundSA, InboundSA]:
    return OutboundSA(SPI, key, SALT, esn=esn, **kw), InboundSA(SPI, key, SALT, esn=esn)


@pytest.mark.parametrize("key", [KEY128, KEY256], ids=["aes128", "aes256"])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize(
    ("inner", "next_header"),
    [(ipv4(0), 4), (ipv4(1), 4), (ipv4(2), 4), (ipv4(3), 4), (ipv4(1380), 4), (ipv6(1), 41)],
    ids=["v4+0", "v4+1", "v4+2", "v4+3", "v4+1380", "v6+1"],
)
def test_round_trip(key: bytes, esn: bool, inner: bytes, next_header: int) -> None:
    out, inb = pair(key, esn)
    for seq in (1, 2, 3):
        packet = out.encrypt(inner, next_header)
        # Wire layout: SPI | seq | IV (= seq) | ciphertext aligned to 4 | ICV (RFC 4303 §2).
        assert struct.unpack(">IIQ", packet[:16]) == (SPI, seq, seq)
        assert (len(packet) - 16 - 16) % 4 == 0
        assert len(packet) - len(inner) - esp.OVERHEAD in range(4)
        assert inb.decrypt(packet) == (next_header, inner)
    assert (out.packets, out.bytes, out.seq) == (3, 3 * len(inner), 3)
    assert (inb.packets, inb.bytes) == (3, 3 * len(inner))


def test_memoryview_and_bytearray_inputs() -> None:
    out, inb = pair(KEY128, False)
    inner = ipv4(40)
    packet = out.encrypt(memoryview(bytearray(inner)), 4)
    assert inb.decrypt(memoryview(packet)) == (4, inner)
    assert inb.decrypt(bytearray(out.encrypt(inner, 4))) == (4, inner)


def test_trailer_padding_is_one_two_three() -> None:
    # RFC 4303 §2.4: payload + padding + 2 is a multiple of 4, padding 1, 2, 3, ...
    assert esp.trailer(0, 4) == b"\x01\x02\x02\x04"
    assert esp.trailer(1, 41) == b"\x01\x01\x29"
    assert esp.trailer(2, 4) == b"\x00\x04"
    assert esp.trailer(3, 59) == b"\x01\x02\x03\x03\x3b"


def plaintext_packet(plaintext: bytes, seq: int = 1, key: bytes = KEY128) -> bytes:
    """An ESP packet around an arbitrary plaintext (to test the receiver's checks)."""
    header = struct.pack(">IIQ", SPI, seq, seq)
    return header + AESGCM(key).encrypt(SALT + header[8:], plaintext, header[:8])


def test_authentic_packet_with_wrong_padding_is_malformed() -> None:
    inb = InboundSA(SPI, KEY128, SALT)
    inner = ipv4(2)
    good = plaintext_packet(inner + b"\x00\x04", seq=1)
    assert inb.decrypt(good) == (4, inner)
    for seq, trailer in enumerate([b"\x02\x01\x02\x04", b"\x00\x00\x02\x04"], start=2):
        with pytest.raises(EspDrop) as info:
            inb.decrypt(plaintext_packet(inner[:-2] + trailer, seq=seq))
        assert info.value.reason is DropReason.MALFORMED
    assert inb.drops[DropReason.MALFORMED] == 2


def test_pad_length_beyond_plaintext_is_malformed() -> None:
    inb = InboundSA(SPI, KEY128, SALT)
    with pytest.raises(EspDrop) as info:
        inb.decrypt(plaintext_packet(b"\x01\x02\x05\x04"))
    assert info.value.reason is DropReason.MALFORMED


def test_dummy_packet_is_dropped_after_authentication() -> None:
    # RFC 4303 §2.6: next header 59 is a TFC dummy; discard, but it is authentic
    # and consumes its sequence number.
    out, inb = pair(KEY128, False)
    with pytest.raises(EspDrop) as info:
        inb.decrypt(out.encrypt(b"", esp.NEXT_HEADER_NONE))
    assert info.value.reason is DropReason.DUMMY
    assert inb.drops[DropReason.DUMMY] == 1
    assert inb.window.top == 1
    assert inb.packets == 0


def test_bad_icv_is_auth_failed_and_does_not_count() -> None:
    out, inb = pair(KEY128, False)
    packet = bytearray(out.encrypt(ipv4(10), 4))
    packet[-1] ^= 0x80
    with pytest.raises(EspDrop) as info:
        inb.decrypt(bytes(packet))
    assert info.value.reason is DropReason.AUTH_FAILED
    assert (inb.packets, inb.window.top, inb.drops[DropReason.AUTH_FAILED]) == (0, 0, 1)


def test_wrong_key_or_salt_fails() -> None:
    out = OutboundSA(SPI, KEY128, SALT)
    packet = out.encrypt(ipv4(10), 4)
    for key, salt in ((KEY128[::-1], SALT), (KEY128, b"\x00\x00\x00\x00")):
        with pytest.raises(EspDrop) as info:
            InboundSA(SPI, key, salt).decrypt(packet)
        assert info.value.reason is DropReason.AUTH_FAILED


def test_esn_mismatch_between_peers_fails() -> None:
    out = OutboundSA(SPI, KEY128, SALT, esn=True)
    with pytest.raises(EspDrop) as info:
        InboundSA(SPI, KEY128, SALT, esn=False).decrypt(out.encrypt(ipv4(1), 4))
    assert info.value.reason is DropReason.AUTH_FAILED


def test_esn_high_bits_are_authenticated_but_not_sent() -> None:
    start = (5 << 32) + 7
    out = OutboundSA(SPI, KEY128, SALT, esn=True, initial_seq=start)
    packet = out.encrypt(ipv4(3), 4)
    assert struct.unpack(">II", packet[:8]) == (SPI, 7)  # low half only on the wire
    assert packet[8:16] == start.to_bytes(8, "big")  # IV = the full 64-bit number
    associated = struct.pack(">III", SPI, 5, 7)  # RFC 4106 §5
    nonce = SALT + packet[8:16]
    assert AESGCM(KEY128).decrypt(nonce, packet[16:], associated).startswith(ipv4(3))


def test_unknown_spi_and_short_packets() -> None:
    out = OutboundSA(SPI + 1, KEY128, SALT)
    inb = InboundSA(SPI, KEY128, SALT)
    with pytest.raises(EspDrop) as info:
        inb.decrypt(out.encrypt(ipv4(1), 4))
    assert info.value.reason is DropReason.UNKNOWN_SPI
    for size in (0, 1, 8, esp.MIN_ESP_LEN - 1):
        with pytest.raises(EspDrop) as info:
            inb.decrypt(bytes(size))
        assert info.value.reason is DropReason.MALFORMED


def test_sequence_number_never_wraps_without_esn() -> None:
    out, inb = pair(KEY128, False, initial_seq=0xFFFFFFFE)
    assert not out.exhausted
    assert inb.decrypt(out.encrypt(ipv4(1), 4))[0] == 4
    last = out.encrypt(ipv4(1), 4)
    assert struct.unpack(">I", last[4:8])[0] == 0xFFFFFFFF
    assert out.exhausted and out.seq == 0xFFFFFFFF
    with pytest.raises(EspDrop) as info:
        out.encrypt(ipv4(1), 4)
    assert info.value.reason is DropReason.SEQ_EXHAUSTED
    assert out.drops[DropReason.SEQ_EXHAUSTED] == 1
    assert (out.packets, out.seq) == (2, 0xFFFFFFFF)


def test_sequence_number_never_wraps_with_esn() -> None:
    out = OutboundSA(SPI, KEY128, SALT, esn=True, initial_seq=0xFFFFFFFF)
    # Crossing 2**32 is fine with ESN ...
    out.encrypt(ipv4(1), 4)
    assert struct.unpack(">I", out.encrypt(ipv4(1), 4)[4:8])[0] == 0
    # ... but 2**64 - 1 is the end.
    last = OutboundSA(SPI, KEY128, SALT, esn=True, initial_seq=(1 << 64) - 1)
    last.encrypt(ipv4(1), 4)
    assert last.exhausted
    with pytest.raises(EspDrop) as info:
        last.encrypt(ipv4(1), 4)
    assert info.value.reason is DropReason.SEQ_EXHAUSTED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spi": 0},
        {"spi": 1 << 32},
        {"key": bytes(24)},
        {"key": bytes(15)},
        {"salt": bytes(3)},
        {"initial_seq": 0},
        {"initial_seq": (1 << 32) + 1},
    ],
)
def test_constructor_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"spi": SPI, "key": KEY128, "salt": SALT, **kwargs}
    with pytest.raises(ValueError):
        OutboundSA(**args)  # type: ignore[arg-type]
    args.pop("initial_seq", None)
    if "initial_seq" not in kwargs:
        with pytest.raises(ValueError):
            InboundSA(**args)  # type: ignore[arg-type]


def test_next_header_out_of_range_is_refused() -> None:
    out = OutboundSA(SPI, KEY128, SALT)
    with pytest.raises(ValueError):
        out.encrypt(ipv4(1), 256)
    assert out.seq == 0  # no sequence number spent


def test_secrets_never_in_repr_or_snapshot() -> None:
    key = bytes.fromhex("5eC2e75eC2e75eC2e75eC2e75eC2e75e")
    salt = bytes.fromhex("a1b2c3d4")
    out, inb = OutboundSA(SPI, key, salt), InboundSA(SPI, key, salt)
    inb.decrypt(out.encrypt(ipv4(5), 4))
    for obj in (out, inb):
        text = repr(obj) + repr(obj.snapshot())
        assert "redacted" in repr(obj)
        for secret in (key, salt):
            assert secret.hex() not in text.lower()
            assert repr(secret) not in text
    snap = inb.snapshot()
    assert snap["spi"] == f"{SPI:08x}"
    assert snap["packets"] == 1 and snap["highest_seq"] == 1
    assert out.snapshot()["seq"] == 1


def test_drop_exception_carries_no_packet_bytes() -> None:
    inb = InboundSA(SPI, KEY128, SALT)
    packet = plaintext_packet(b"secret-payload\x00\x04", key=KEY256)
    with pytest.raises(EspDrop) as info:
        inb.decrypt(packet)
    assert str(info.value) == "auth_failed"
    assert info.value.__cause__ is None and info.value.__suppress_context__
