"""TCP super-packets as a TSO-enabled TUN hands them over, and the scapy oracle for
the segments tunneld.io.segment cuts them into (tests/unit/test_io_segment.py,
tests/unit/test_datapath_tso.py)."""

from __future__ import annotations

import itertools

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tunneld.io.segment import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    read_room,
    vnet_header,
)
from tunneld.io.tun import MemoryTun

SRC, DST = "198.51.100.10", "203.0.113.10"
SRC6, DST6 = "2001:db8::1", "2001:db8::2"
MSS = 1348
GAP = 5
TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]


def payload_of(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def super_packet(
    size: int, flags: str = "PA", *, v6: bool = False, seq: int = 1000, ident: int = 4321,
    options: list[tuple[str, object]] | None = None, ip_options: bytes = b"",
) -> bytes:  # fmt: skip
    """What a TSO-enabled TUN reads: one IP packet carrying ``size`` bytes of TCP payload
    with the checksum field set to a garbage partial (the cutter must not trust it)."""
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=77, flags=flags, window=500,
              options=TS if options is None else options, chksum=0x1234)  # fmt: skip
    if v6:
        ip = IPv6(src=SRC6, dst=DST6, hlim=63)
    else:
        ip = IP(src=SRC, dst=DST, flags="DF", id=ident, ttl=63, options=ip_options)
    return bytes(ip / tcp / payload_of(size))


def gso(packet: bytes, gso_size: int, *, v6: bool = False, ecn: bool = False) -> bytes:
    ihl = 40 if v6 else (packet[0] & 15) * 4
    kind = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    hlen = ihl + (packet[ihl + 12] >> 4) * 4
    return vnet_header(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, kind | (VIRTIO_NET_HDR_GSO_ECN if ecn else 0),
        hlen, gso_size, ihl, 16,
    )  # fmt: skip


def read_all(tun: MemoryTun, max_packets: int = 10_000) -> list[bytes]:
    arena = memoryview(bytearray(4 * read_room(True, GAP)))
    spans = tun.read_batch_into(arena, max_packets, GAP)
    assert all(a % 2 == 0 for a, _ in spans)  # 2-aligned (checksum words)
    assert all(b[0] >= a[0] + a[1] + GAP for a, b in itertools.pairwise(spans))
    return [bytes(arena[a : a + n]) for a, n in spans]


def scapy_checksums(segment: bytes, v6: bool) -> tuple[int, int | None]:
    """(TCP checksum, IPv4 header checksum) scapy computes for the segment as it is."""
    pkt = IPv6(segment) if v6 else IP(segment)
    del pkt[TCP].chksum
    if not v6:
        del pkt.chksum
    rebuilt = IPv6(bytes(pkt)) if v6 else IP(bytes(pkt))
    return rebuilt[TCP].chksum, None if v6 else rebuilt.chksum


def check_segments(
    segments: list[bytes], total: int, gso_size: int, flags: str, *, v6: bool = False,
    seq: int = 1000, ident: int = 4321,
) -> None:  # fmt: skip
    data = payload_of(total)
    count = -(-total // gso_size)
    assert len(segments) == count
    for i, segment in enumerate(segments):
        pkt = IPv6(segment) if v6 else IP(segment)
        tcp = pkt[TCP]
        piece = data[i * gso_size : (i + 1) * gso_size]
        assert bytes(tcp.payload) == piece
        assert tcp.seq == (seq + i * gso_size) & 0xFFFFFFFF
        assert (tcp.sport, tcp.dport, tcp.ack, tcp.window) == (40000, 5201, 77, 500)
        want = set(str(flags))
        if i < count - 1:
            want -= {"F", "P"}
        if i > 0:
            want -= {"C"}
        assert set(str(tcp.flags)) == want, (i, tcp.flags)
        if v6:
            assert pkt.plen == len(segment) - 40 and pkt.hlim == 63
        else:
            assert pkt.len == len(segment)
            assert pkt.id == (ident + i) & 0xFFFF
            assert (pkt.flags, pkt.ttl, pkt.frag) == ("DF", 63, 0)
        tcp_sum, ip_sum = scapy_checksums(segment, v6)
        assert tcp.chksum == tcp_sum, i
        if not v6:
            assert pkt.chksum == ip_sum, i
