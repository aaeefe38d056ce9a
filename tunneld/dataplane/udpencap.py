"""UDP encapsulation on port 4500 (RFC 3948): tell IKE, keepalives and ESP apart.

Every UDP payload that arrives on the NAT-T port is one of (RFC 3948 §2):

1. ``00 00 00 00`` + IKE message: the non-ESP marker (§2.2) sits where an ESP
   SPI would be, and SPI 0 is never sent (RFC 4303 §2.1). We hand the IKE
   bytes after the marker to the IKE side; fewer than an IKE header's 28
   bytes after the marker cannot be IKE and are MALFORMED.
2. exactly one byte ``FF``: a NAT keepalive (§2.3), to be ignored.
3. anything else: an ESP packet, which must be at least
   :data:`~tunneld.dataplane.esp.MIN_ESP_LEN` bytes (SPI, seq, IV, trailer,
   ICV); shorter ones, and 1 to 3 byte payloads other than ``FF``, are
   MALFORMED.
"""

from __future__ import annotations

from enum import Enum

from ike.constants import IKE_HEADER_LEN, NAT_KEEPALIVE, NON_ESP_MARKER
from tunneld.dataplane.drops import DropReason, EspDrop
from tunneld.dataplane.esp import MIN_ESP_LEN, Buffer

_MARKER_LEN = len(NON_ESP_MARKER)
_KEEPALIVE_BYTE = NAT_KEEPALIVE[0]


class UdpKind(Enum):
    IKE = "ike"
    KEEPALIVE = "keepalive"
    ESP = "esp"


def classify(payload: Buffer) -> tuple[UdpKind, Buffer]:
    """Demultiplex one UDP payload received on port 4500.

    Returns ``(UdpKind.ESP, payload)`` (the same object, not copied),
    ``(UdpKind.IKE, ike_message)`` (the bytes after the marker) or
    ``(UdpKind.KEEPALIVE, b"")``. Raises ``EspDrop(MALFORMED)`` otherwise.
    """
    size = len(payload)
    if size >= MIN_ESP_LEN and payload[:_MARKER_LEN] != NON_ESP_MARKER:
        return UdpKind.ESP, payload
    if size == 1 and payload[0] == _KEEPALIVE_BYTE:
        return UdpKind.KEEPALIVE, b""
    if size >= _MARKER_LEN + IKE_HEADER_LEN and payload[:_MARKER_LEN] == NON_ESP_MARKER:
        return UdpKind.IKE, bytes(payload[_MARKER_LEN:])
    raise EspDrop(DropReason.MALFORMED)


def ike_payload(ike_message: Buffer) -> bytes:
    """The UDP payload that carries ``ike_message`` on port 4500 (RFC 3948 §2.2)."""
    return b"".join((NON_ESP_MARKER, ike_message))
