"""TCP segment merging for TUN writes (tunneld.io.offload), checked with scapy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from tests.helpers.packets import checksum
from tunneld.io.offload import (
    MAX_PACKET,
    MAX_SEGMENTS,
    PLAIN_HDR,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    Write,
    coalesce,
)

SRC, DST = "198.51.100.10", "203.0.113.10"
MSS = 1348


def seg(
    seq: int, size: int = MSS, flags: str = "A", *, sport: int = 40000, ts: int = 1000,
    v6: bool = False,
) -> bytes:  # fmt: skip
    """One TCP segment with timestamps and a payload that depends on its position."""
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src=SRC, dst=DST, flags="DF")
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=77, flags=flags, window=500,
              options=[("NOP", None), ("NOP", None), ("Timestamp", (ts, 2000))])  # fmt: skip
    payload = bytes((seq + i) % 251 for i in range(size))
    return bytes(ip / tcp / payload)


def stream(start: int, sizes: list[int], **kw: object) -> list[bytes]:
    out, seq = [], start
    for size in sizes:
        out.append(seg(seq, size, **kw))  # type: ignore[arg-type]
        seq += size
    return out


def merged(write: Write) -> tuple[tuple[int, ...], bytes]:
    iov, _ = write
    vnet = VNET_HDR.unpack(bytes(iov[0]))
    return vnet, b"".join(bytes(b) for b in iov[1:])


def completed_tcp_checksum(packet: bytes, ihl: int) -> int:
    """What the kernel writes for CHECKSUM_PARTIAL: ~sum over the TCP bytes as they are."""
    return checksum(packet[ihl:])


def test_a_run_of_segments_becomes_one_gso_write() -> None:
    packets = stream(1000, [MSS] * 10 + [500])
    packets[-1] = seg(1000 + 10 * MSS, 500, "PA")
    (write,) = coalesce(packets)
    assert write[1] == tuple(packets)
    vnet, big = merged(write)
    hlen = 20 + 32  # IPv4 + TCP with the 12 bytes of timestamp options
    assert vnet == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hlen, MSS, 20, 16)
    ip = IP(big)
    assert ip.len == len(big) == hlen + 10 * MSS + 500
    assert (ip.src, ip.dst, ip.id, ip.flags) == (SRC, DST, IP(packets[0]).id, "DF")
    rebuilt = IP(big)
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum  # the IPv4 header checksum is valid
    assert (ip[TCP].seq, ip[TCP].ack, ip[TCP].flags) == (1000, 77, "PA")  # PSH from the last
    assert bytes(ip[TCP].payload) == b"".join(p[hlen:] for p in packets)
    # the kernel completes the partial sum into the checksum scapy computes for the packet
    scapy_view = IP(big)
    del scapy_view[TCP].chksum
    expected = IP(bytes(scapy_view))[TCP].chksum
    assert completed_tcp_checksum(big, 20) == expected


def test_ipv6_segments_merge_too() -> None:
    packets = stream(5, [1000] * 4, v6=True)
    (write,) = coalesce(packets)
    vnet, big = merged(write)
    assert vnet[:2] == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6)
    assert vnet[2:] == (40 + 32, 1000, 40, 16)
    ip = IPv6(big)
    assert ip.plen == len(big) - 40 == 32 + 4000
    scapy_view = IPv6(big)
    del scapy_view[TCP].chksum
    assert completed_tcp_checksum(big, 40) == IPv6(bytes(scapy_view))[TCP].chksum


def test_single_and_non_tcp_packets_are_written_as_they_are() -> None:
    udp = bytes(IP(src=SRC, dst=DST) / UDP(sport=1, dport=2) / (b"u" * 100))
    options = bytes(IP(src=SRC, dst=DST, options=b"\x01\x01\x01\x00") / TCP(flags="A") / b"x")
    fragment = bytes(IP(src=SRC, dst=DST, flags="MF") / TCP(flags="A") / b"x")
    one = seg(1)
    writes = coalesce([udp, options, fragment, one])
    assert writes == [([PLAIN_HDR, p], (p,)) for p in (udp, options, fragment, one)]


def test_gaps_flags_options_and_sizes_split_groups() -> None:
    a = stream(0, [MSS] * 3)
    gap = seg(10 * MSS)  # not contiguous
    after_gap = seg(11 * MSS)
    new_ts = seg(12 * MSS, ts=1001)  # different timestamp option
    same_ts = seg(13 * MSS, ts=1001)  # continues new_ts: merges with it
    fin = seg(14 * MSS, MSS, "FA")
    after_fin = seg(15 * MSS)
    writes = coalesce([*a, gap, after_gap, new_ts, same_ts, fin, after_fin])
    assert [list(w[1]) for w in writes] == [
        a,
        [gap, after_gap],
        [new_ts, same_ts],
        [fin],
        [after_fin],
    ]
    assert writes[3] == ([PLAIN_HDR, fin], (fin,))


def test_a_shorter_segment_closes_the_group() -> None:
    packets = stream(0, [MSS, MSS, 100, MSS])
    assert [len(w[1]) for w in coalesce(packets)] == [3, 1]


def test_interleaved_flows_merge_per_flow_in_order() -> None:
    x = stream(0, [MSS] * 4, sport=1)
    y = stream(500, [MSS] * 4, sport=2)
    interleaved = [p for pair in zip(x, y, strict=True) for p in pair]
    writes = coalesce(interleaved)
    assert [list(w[1]) for w in writes] == [x, y]


def test_limits_of_one_write() -> None:
    small = stream(0, [100] * (MAX_SEGMENTS + 5))
    assert [len(w[1]) for w in coalesce(small)] == [MAX_SEGMENTS, 5]
    large = stream(0, [MSS] * 60)
    writes = coalesce(large)
    assert all(len(merged(w)[1]) <= MAX_PACKET for w in writes)
    assert sum(len(w[1]) for w in writes) == 60 and len(writes) == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([MSS, MSS, MSS, 300]), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_merging_never_loses_reorders_or_alters_a_flow(
    spec: list[tuple[int, int, bool]],
) -> None:
    seqs = {1: 0, 2: 0, 3: 0}
    packets = []
    for flow, size, skip in spec:
        seqs[flow] += 7 if skip else 0  # sometimes a gap
        packets.append(seg(seqs[flow], size, sport=flow))
        seqs[flow] += size
    writes = coalesce(packets)
    carried = [p for w in writes for p in w[1]]
    assert sorted(carried) == sorted(packets)
    for flow in seqs:

        def of(p: bytes, flow: int = flow) -> bool:
            return IP(p)[TCP].sport == flow

        assert [p for p in carried if of(p)] == [p for p in packets if of(p)]
    for write in writes:
        if len(write[1]) > 1:
            _, big = merged(write)
            hlen = 52
            assert big[hlen:] == b"".join(p[hlen:] for p in write[1])


def test_views_into_one_buffer_merge_like_bytes_without_copies() -> None:
    """The receive pump hands over views into its decrypt buffer: same writes, no copies."""
    packets = [*stream(0, [MSS] * 5 + [200]), seg(1, 10, v6=True)]
    arena = bytearray(b"".join(packets))
    views, at = [], 0
    for p in packets:
        views.append(memoryview(arena)[at : at + len(p)])
        at += len(p)
    by_bytes, by_views = coalesce(packets), coalesce(views)
    assert [[bytes(b) for b in w[0]] for w in by_views] == [
        [bytes(b) for b in w[0]] for w in by_bytes
    ]
    iov = by_views[0][0]
    assert len(iov) == 2 + 6 and all(isinstance(b, memoryview) for b in iov[2:])
    arena[100] ^= 0xFF  # the payload iovecs point into the buffer itself
    assert bytes(iov[2])[100 - 52] == packets[0][100] ^ 0xFF
