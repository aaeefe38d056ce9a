"""Inner packets for tests: the one place that packs IPv4, IPv6, UDP and ICMP headers.

Every test and test tool that builds a packet by hand uses these (scapy stays
the independent oracle where a test wants one); tests/unit/test_suite_layout.py
fails on an IPv4 header packed anywhere else. Headers carry valid checksums
unless ``checksums=False`` (none of the code under test needs them, but a
packet a kernel would accept is the better default). Addresses are text,
``ipaddress`` objects or 4/16 packed bytes.

Also here: :func:`ipv4_packets`, the one reader of the IPv4 frames in a pcap
file (tcpdump on the lab's WAN bridge).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # version/IHL, TOS, length, id, frag, TTL, proto, sum
IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next, hops
UDP_HEADER = struct.Struct("!HHHH")  # ports, length, checksum
ICMP_ECHO_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence

ICMP, TCP, UDP = 1, 6, 17
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0


def _packed(address: Address, size: int) -> bytes:
    data = address if isinstance(address, bytes) else ipaddress.ip_address(address).packed
    assert len(data) == size, f"not an IPv{4 if size == 4 else 6} address: {address!r}"
    return data


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def ipv4_header(
    src: Address,
    dst: Address,
    payload_len: int,
    *,
    proto: int = UDP,
    ident: int = 0,
    ttl: int = 64,
    total: int | None = None,
    checksums: bool = True,
) -> bytes:
    """A 20-byte IPv4 header (no options, no fragmentation); ``total`` overrides the
    total length (default 20 + ``payload_len``)."""
    fields = [0x45, 0, 20 + payload_len if total is None else total, ident, 0, ttl, proto, 0]
    header = IPV4_HEADER.pack(*fields, _packed(src, 4), _packed(dst, 4))
    if not checksums:
        return header
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def ipv4(
    src: Address,
    dst: Address,
    payload: bytes = b"",
    *,
    proto: int = UDP,
    ident: int = 0,
    ttl: int = 64,
    checksums: bool = True,
) -> bytes:
    """An IPv4 packet around ``payload`` (taken as is: no transport header is added)."""
    header = ipv4_header(
        src, dst, len(payload), proto=proto, ident=ident, ttl=ttl, checksums=checksums
    )
    return header + payload


def ipv6(
    src: Address, dst: Address, payload: bytes = b"", *, next_header: int = UDP, hops: int = 64
) -> bytes:
    """An IPv6 packet around ``payload`` (no extension headers)."""
    header = IPV6_HEADER.pack(
        6 << 28, len(payload), next_header, hops, _packed(src, 16), _packed(dst, 16)
    )
    return header + payload


def udp(
    payload: bytes,
    sport: int = 40000,
    dport: int = 9,
    *,
    src: Address | None = None,
    dst: Address | None = None,
) -> bytes:
    """A UDP header and ``payload``; with ``src`` and ``dst`` (IPv4) the checksum over
    the pseudo-header, else 0 (no checksum, allowed over IPv4)."""
    length = UDP_HEADER.size + len(payload)
    segment = UDP_HEADER.pack(sport, dport, length, 0) + payload
    if src is None or dst is None:
        return segment
    pseudo = _packed(src, 4) + _packed(dst, 4) + struct.pack("!BBH", 0, UDP, length)
    value = checksum(pseudo + segment) or 0xFFFF  # 0 means "none": send all ones
    return segment[:6] + struct.pack("!H", value) + segment[8:]


def udp_packet(
    src: Address,
    dst: Address,
    payload: bytes,
    sport: int = 40000,
    dport: int = 9,
    *,
    checksums: bool = True,
) -> bytes:
    """An IPv4/UDP packet (from port 40000 to the discard port unless told otherwise)."""
    ends = (src, dst) if checksums else (None, None)
    segment = udp(payload, sport, dport, src=ends[0], dst=ends[1])
    return ipv4(src, dst, segment, proto=UDP, checksums=checksums)


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    """An ICMP echo request (or reply) message with its checksum."""
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    message = ICMP_ECHO_HEADER.pack(kind, 0, 0, ident, seq) + payload
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def icmp_packet(
    src: Address, dst: Address, payload: bytes = b"", *, ident: int = 1, seq: int = 1
) -> bytes:
    """An IPv4 packet carrying an ICMP echo request."""
    return ipv4(src, dst, icmp_echo(ident, seq, payload), proto=ICMP)


def ipv4_packets(pcap: bytes) -> Iterator[tuple[str, str, int, int, int, bytes]]:
    """(src, dst, protocol, sport, dport, UDP payload) of each IPv4 frame of an Ethernet
    pcap file (ports 0 and payload empty but for UDP; the payload as far as captured)."""
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", pcap)
    assert magic == 0xA1B2C3D4 and linktype == 1, "expected a little-endian Ethernet pcap"
    off = 24
    while off + 16 <= len(pcap):
        incl = struct.unpack_from("<I", pcap, off + 8)[0]
        frame = pcap[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue  # ARP, IPv6 (link-local noise): the callers look at IPv4
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        sport = dport = 0
        payload = b""
        if ip[9] == UDP:
            sport, dport = struct.unpack_from("!HH", ip, ihl)
            payload = ip[ihl + 8 : struct.unpack_from("!H", ip, 2)[0]]
        yield src, dst, ip[9], sport, dport, payload
