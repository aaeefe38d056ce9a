"""TSO segmentation of TUN reads (tunneld.io.segment), checked against scapy.

A super-packet goes in as a TSO-enabled kernel TUN would hand it over (a
``virtio_net_hdr`` with GSO_TCPV4/GSO_TCPV6 in front, the TCP checksum field
holding whatever the kernel left there); each segment that comes out is
parsed by scapy and rebuilt by scapy with its checksums deleted: the fields
and checksums we wrote must be the ones scapy computes. The oracle is scapy's
own IP/TCP code, not ours.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting

from tests.helpers.tso import (
    DST,
    DST6,
    GAP,
    MSS,
    SRC,
    SRC6,
    TS,
    check_segments,
    gso,
    payload_of,
    read_all,
    scapy_checksums,
    super_packet,
)
from tunneld.io.segment import (
    DROP_CSUM,
    DROP_GSO_SIZE,
    DROP_GSO_TYPE,
    DROP_HDR_LEN,
    DROP_HEADERS,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    read_room,
    vnet_header,
)
from tunneld.io.tun import MemoryTun


def cut(vnet: bytes, packet: bytes) -> tuple[list[bytes], MemoryTun]:
    tun = MemoryTun(mtu=1400)
    tun.host_send_offload(vnet, packet)
    return read_all(tun), tun


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize(("total", "flags"), [(48 * MSS, "PA"), (47 * MSS + 500, "FPA")])
def test_a_super_packet_becomes_segments_scapy_agrees_with(
    v6: bool, total: int, flags: str
) -> None:
    packet = super_packet(total, flags, v6=v6)
    segments, tun = cut(gso(packet, MSS, v6=v6), packet)
    check_segments(segments, total, MSS, flags, v6=v6)
    assert max(len(s) for s in segments) == (40 if v6 else 20) + 32 + MSS
    assert (tun.stats.gso_reads, tun.stats.gso_segments) == (1, len(segments))
    assert tun.stats.read_packets == 1 and tun.stats.read_drops == {}


def test_cwr_only_on_the_first_segment_ids_and_sequence_numbers_wrap() -> None:
    packet = super_packet(5 * MSS, "CPA", seq=0xFFFFFFFF - 2 * MSS, ident=0xFFFE)
    segments, _ = cut(gso(packet, MSS, ecn=True), packet)
    check_segments(segments, 5 * MSS, MSS, "CPA", seq=0xFFFFFFFF - 2 * MSS, ident=0xFFFE)


def test_odd_gso_size_ip_options_and_a_single_segment() -> None:
    packet = super_packet(7 * 333 + 1, "PA", ip_options=b"\x01\x01\x01\x00")  # NOP NOP NOP EOL
    segments, _ = cut(gso(packet, 333), packet)
    check_segments(segments, 7 * 333 + 1, 333, "PA")
    assert IP(segments[0]).ihl == 6
    lone = super_packet(600, "FPA")  # a GSO header on what is one segment: all flags kept
    segments, _ = cut(gso(lone, MSS), lone)
    check_segments(segments, 600, MSS, "FPA")


def test_ipv6_extension_headers_go_into_every_segment() -> None:
    tcp = TCP(sport=40000, dport=5201, seq=1000, ack=77, flags="PA", window=500, options=TS)
    for ext, ok in ((IPv6ExtHdrDestOpt(), True), (IPv6ExtHdrHopByHop(), True),
                    (IPv6ExtHdrRouting(addresses=[DST6]), False)):  # fmt: skip
        packet = bytes(IPv6(src=SRC6, dst=DST6, hlim=63) / ext / tcp / payload_of(3 * 1300))
        vnet = vnet_header(1, VIRTIO_NET_HDR_GSO_TCPV6, 80, 1300, 48, 16)
        segments, tun = cut(vnet, packet)
        if not ok:
            assert segments == [] and tun.stats.read_drops == {DROP_HEADERS: 1}
            continue
        assert len(segments) == 3
        for i, segment in enumerate(segments):
            pkt = IPv6(segment)
            assert pkt.plen == len(segment) - 40 and type(pkt.payload) is type(ext)
            assert bytes(pkt[TCP].payload) == payload_of(3 * 1300)[i * 1300 : (i + 1) * 1300]
            assert pkt[TCP].chksum == scapy_checksums(segment, True)[0]


def test_several_super_packets_and_plain_packets_in_one_batch() -> None:
    tun = MemoryTun(mtu=1400)
    first = super_packet(10 * MSS, "A")
    second = super_packet(3 * MSS + 7, "PA", seq=1000 + 10 * MSS, ident=4331)
    plain = bytes(IP(src=SRC, dst=DST) / UDP(sport=1, dport=2) / b"plain")
    tun.host_send_offload(gso(first, MSS), first)
    tun.host_send(plain)
    tun.host_send_offload(gso(second, MSS), second)
    got = read_all(tun)
    check_segments(got[:10], 10 * MSS, MSS, "A")
    assert got[10] == plain
    check_segments(got[11:], 3 * MSS + 7, MSS, "PA", seq=1000 + 10 * MSS, ident=4331)


def partial(packet: IP | IPv6, proto: int, length: int) -> int:
    """The pseudo-header sum a kernel leaves in a CHECKSUM_PARTIAL packet's field."""
    words = bytes(packet)[8:40] if isinstance(packet, IPv6) else bytes(packet)[12:20]
    total = sum(struct.unpack(f"!{len(words) // 2}H", words)) + proto + length
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("size", [3, 1371])  # Python for short regions, numpy for long ones
def test_needs_csum_without_gso_is_completed(size: int) -> None:
    tun = MemoryTun(mtu=1400)
    expected = []
    for n in range(4):  # more than a few: the batch goes through the vectorised sum
        udp = IP(src=SRC, dst=DST, id=n) / UDP(sport=1000 + n, dport=2) / payload_of(size + n)
        expected.append(IP(bytes(udp))[UDP].chksum)
        raw = bytearray(bytes(udp))
        struct.pack_into("!H", raw, 26, partial(udp, 17, 8 + size + n))
        tun.host_send_offload(vnet_header(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 6), raw)
    ack = IP(src=SRC, dst=DST) / TCP(sport=1, dport=2, flags="A", options=TS)
    expected.append(IP(bytes(ack))[TCP].chksum)
    raw = bytearray(bytes(ack))
    struct.pack_into("!H", raw, 36, partial(ack, 6, 32))
    tun.host_send_offload(vnet_header(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16), raw)
    got = read_all(tun)
    assert [IP(p)[UDP].chksum for p in got[:4]] + [IP(got[4])[TCP].chksum] == expected
    assert tun.stats.csum_completed == 5


def test_data_valid_and_plain_headers_pass_unchanged() -> None:
    tun = MemoryTun(mtu=1400)
    packet = bytes(IP(src=SRC, dst=DST) / UDP(sport=1, dport=2) / b"x")
    tun.host_send_offload(vnet_header(VIRTIO_NET_HDR_F_DATA_VALID), packet)
    tun.host_send_offload(vnet_header(), packet)
    assert read_all(tun) == [packet, packet]


GOOD = super_packet(4 * MSS, "PA")


@pytest.mark.parametrize(
    ("vnet", "packet", "reason"),
    [
        (gso(GOOD, 0), GOOD, DROP_GSO_SIZE),
        (vnet_header(1, VIRTIO_NET_HDR_GSO_TCPV4, len(GOOD) + 1, MSS, 20, 16), GOOD, DROP_HDR_LEN),
        (vnet_header(1, 2, 52, MSS, 20, 16), GOOD, DROP_GSO_TYPE),
        (vnet_header(1, VIRTIO_NET_HDR_GSO_UDP, 28, 1000, 20, 6), GOOD, DROP_GSO_TYPE),
        (vnet_header(1, VIRTIO_NET_HDR_GSO_ECN, 0, 0, 20, 16), GOOD, DROP_GSO_TYPE),
        (gso(GOOD, MSS, v6=True), GOOD, DROP_HEADERS),  # IPv4 under a TCPV6 header
        (gso(GOOD, MSS), GOOD[:-1], DROP_HEADERS),  # total length disagrees
        (gso(GOOD, MSS), bytes(IP(src=SRC, dst=DST) / UDP() / payload_of(3000)), DROP_HEADERS),
        (vnet_header(1, VIRTIO_NET_HDR_GSO_TCPV4, 52, MSS, 24, 16), GOOD, DROP_CSUM),
        (vnet_header(1, 0, 0, 0, 2000, 16), GOOD[:100], DROP_CSUM),
        (vnet_header(1, 0, 0, 0, 90, 16), GOOD[:100], DROP_CSUM),
    ],
)
def test_malformed_virtio_headers_are_dropped_and_counted(
    vnet: bytes, packet: bytes, reason: str
) -> None:
    tun = MemoryTun(mtu=1400)
    tun.host_send_offload(vnet, packet)
    tun.host_send(b"E" + bytes(39))  # the next read is still taken
    got = read_all(tun)
    assert got == [b"E" + bytes(39)]
    assert tun.stats.read_drops == {reason: 1}
    assert tun.stats.gso_segments == 0 and tun.stats.read_packets == 2


def test_a_tiny_gso_size_that_does_not_fit_is_dropped_not_truncated() -> None:
    packet = super_packet(60_000, "A")
    tun = MemoryTun(mtu=1400)
    tun.host_send_offload(gso(packet, 1), packet)
    arena = memoryview(bytearray(read_room(True, GAP) + 10))
    assert tun.read_batch_into(arena, 64, GAP) == []
    assert tun.stats.read_drops == {"no_room": 1}


@settings(max_examples=300, deadline=None)
@given(
    vnet=st.binary(min_size=10, max_size=10),
    body=st.binary(max_size=3000),
    prefix=st.sampled_from([b"", GOOD[:60], bytes(IPv6(src=SRC6, dst=DST6) / TCP())]),
)
def test_arbitrary_virtio_headers_never_raise(vnet: bytes, body: bytes, prefix: bytes) -> None:
    tun = MemoryTun(mtu=1400)
    tun.host_send_offload(vnet, prefix + body)
    got = read_all(tun)
    stats = tun.stats
    assert len(got) == stats.gso_segments or (len(got) == 1 and not stats.gso_reads)
    assert sum(stats.read_drops.values()) == (0 if got else 1)
