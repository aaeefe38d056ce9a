"""RFC 3948 demultiplexing of UDP payloads on port 4500."""

from __future__ import annotations

import pytest

from tunneld.dataplane.esp import MIN_ESP_LEN
from tunneld.dataplane.sa import DropReason, EspDrop, OutboundSA
from tunneld.dataplane.udpencap import UdpKind, classify, ike_payload

IKE_MESSAGE = bytes(range(1, 29)) + b"payloads"  # 28-byte header + body


def test_ike_after_non_esp_marker() -> None:
    datagram = ike_payload(IKE_MESSAGE)
    assert datagram[:4] == b"\x00\x00\x00\x00"
    assert classify(datagram) == (UdpKind.IKE, IKE_MESSAGE)
    assert classify(memoryview(datagram)) == (UdpKind.IKE, IKE_MESSAGE)


def test_keepalive_is_exactly_one_ff_byte() -> None:
    assert classify(b"\xff") == (UdpKind.KEEPALIVE, b"")
    assert classify(bytearray(b"\xff"))[0] is UdpKind.KEEPALIVE


def test_esp_is_returned_uncopied() -> None:
    packet = OutboundSA(0x01020304, bytes(16), bytes(4)).encrypt(b"\x45" + bytes(19), 4)
    view = memoryview(packet)
    kind, data = classify(view)
    assert kind is UdpKind.ESP and data is view
    assert classify(packet) == (UdpKind.ESP, packet)
    shortest = b"\x00\x00\x00\x01" + bytes(MIN_ESP_LEN - 4)
    assert classify(shortest)[0] is UdpKind.ESP


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        b"\xfe",
        b"\xff\xff",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x00",  # marker without an IKE header
        b"\x00\x00\x00\x00" + bytes(27),
        b"\x12\x34\x56\x78" + bytes(MIN_ESP_LEN - 5),  # one byte short of an ESP packet
    ],
)
def test_malformed(payload: bytes) -> None:
    with pytest.raises(EspDrop) as info:
        classify(payload)
    assert info.value.reason is DropReason.MALFORMED
