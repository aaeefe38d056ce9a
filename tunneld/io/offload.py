"""TUN offload: coalesce TCP segments into one large write (GRO done in userspace).

Why: writing a packet into a TUN device runs the kernel's receive path for it
(forwarding, the next veth, the site host's TCP stack) once per packet, and on
the receiving gateway that is the largest single cost. With ``IFF_VNET_HDR``
every write starts with a ``struct virtio_net_hdr`` (include/uapi/linux/
virtio_net.h), which can say "this is a TCP super-segment, cut it at
``gso_size``": the kernel then carries it as one GSO packet, exactly as if
its own GRO had merged the segments on a NIC (wireguard-go does the same).

Pipeline, per batch of decrypted inner packets (:func:`coalesce`):
  1. classify each packet: IPv4/IPv6 TCP without IP options, extension
     headers or fragments, with payload and only ACK (+PSH) set, is mergeable;
  2. a mergeable packet joins the open group of its flow if it continues it
     exactly: next sequence number, same ack, IP and TCP options/fields, a
     payload no larger than the group's segment size; a shorter segment or
     PSH closes the group; 64 segments or 64 KiB at most;
  3. anything else closes its flow's group and is written as it is;
  4. a group of one is written as it is; a larger group becomes one IP packet
     (first header, new length, IPv4 header checksum) whose TCP checksum
     field holds the pseudo-header sum, flagged ``NEEDS_CSUM`` so that the
     kernel completes the checksum of every segment it cuts (virtio spec
     §5.1.6.2).
Order within a flow is kept; different flows may be written in another order,
as GRO does. Everything here is pure computation on bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

# struct virtio_net_hdr (legacy layout, little-endian on the hosts we run on)
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size  # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
PLAIN_HDR = bytes(VNET_HDR_LEN)  # no offload: gso_type NONE, checksum complete
# What we chose: one merged write carries at most this much (the IPv4 total
# length field is 16 bits; IPv6 keeps the same bound for simplicity).
MAX_SEGMENTS = 64
MAX_PACKET = 65535

_TCP = 6
_ACK, _PSH = 0x10, 0x08
_TCP_CSUM_OFFSET = 16  # RFC 9293 §3.1
_IP4 = struct.Struct("!BBHHHBBH4s4s")

# One write: the iovec for os.writev, and the original packets it carries
# (to fall back to one plain write each if the kernel refuses the merge).
Write = tuple[list[Buffer], Sequence[Buffer]]


def _fold(total: int) -> int:
    """Ones' complement 16-bit sum of a big integer (2**16 = 1 mod 0xffff)."""
    folded = total % 0xFFFF
    return folded if folded or not total else 0xFFFF


def ipv4_header_checksum(header: Buffer) -> int:
    """RFC 791 §3.1 checksum of a 20-byte header whose checksum field is zero."""
    return 0xFFFF - _fold(int.from_bytes(header, "big"))


class _Group:
    """Consecutive segments of one TCP flow being merged (``coalesce`` extends it)."""

    __slots__ = ("count", "hlen", "ihl", "next_seq", "open", "packets", "seg", "sig", "size")

    def __init__(
        self, pkt: Buffer, ihl: int, hlen: int, seq: int, flags: int, sig: tuple[object, ...]
    ) -> None:
        self.packets: list[Buffer] = [pkt]
        self.count = 1
        self.ihl = ihl
        self.hlen = hlen
        self.sig = sig
        self.seg = len(pkt) - hlen
        self.size = len(pkt)
        self.next_seq = (seq + self.seg) & 0xFFFFFFFF
        self.open = not flags & _PSH

    def write(self) -> Write:
        packets = self.packets
        if len(packets) == 1:
            return [PLAIN_HDR, packets[0]], (packets[0],)
        ihl, hlen = self.ihl, self.hlen
        header = bytearray(packets[0][:hlen])
        header[ihl + 13] |= packets[-1][ihl + 13] & _PSH
        tcp_len = self.size - ihl
        if ihl == 20:
            struct.pack_into("!H", header, 2, self.size)
            header[10:12] = b"\x00\x00"
            struct.pack_into("!H", header, 10, ipv4_header_checksum(header[:20]))
            pseudo = int.from_bytes(header[12:20], "big") + _TCP + tcp_len
            gso_type = VIRTIO_NET_HDR_GSO_TCPV4
        else:
            struct.pack_into("!H", header, 4, tcp_len)
            pseudo = int.from_bytes(header[8:40], "big") + _TCP + tcp_len
            gso_type = VIRTIO_NET_HDR_GSO_TCPV6
        # RFC 9293 §3.1 pseudo-header sum, not complemented: the kernel adds the
        # segment's own header and data and complements (CHECKSUM_PARTIAL).
        struct.pack_into("!H", header, ihl + _TCP_CSUM_OFFSET, _fold(pseudo))
        vnet = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hlen, self.seg, ihl, _TCP_CSUM_OFFSET
        )
        iov: list[Buffer] = [vnet, header]
        iov += [p[hlen:] for p in packets]  # views stay views (bytes would be copied)
        return iov, tuple(packets)


# IPv4 header (no options) + TCP fixed header, the fields the merge looks at:
# version/IHL, TOS, total length, flags/fragment offset, TTL, protocol,
# addresses+ports (the flow key), seq, ack, data offset, TCP flags.
_V4 = struct.Struct("!BBH2xHBB2x12sI4sBB").unpack_from
# The same plus the 12 bytes behind the fixed TCP header: the options of nearly
# every segment (NOP, NOP, timestamps: RFC 7323 §3), in the same unpack.
_V4_TS = struct.Struct("!BBH2xHBB2x12sI4sBB6x12s").unpack_from
# IPv6 header + TCP fixed header: version/class/flow, payload length, next
# header, hop limit, addresses+ports, seq, ack, data offset, TCP flags.
_V6 = struct.Struct("!4sHBB36sI4sBB").unpack_from
Fields = tuple[bytes, int, int, int, int, tuple[object, ...]]


def _tcp_fields(pkt: Buffer) -> Fields | None:
    """(flow key, IP header length, all headers length, seq, TCP flags, invariant
    fields) of a TCP segment, or None if it is not plain TCP over IP."""
    size = len(pkt)
    if size >= 40 and pkt[0] == 0x45:
        _, tos, total, frag, ttl, proto, key, seq, ack, doff, flags = _V4(pkt)
        hlen = 20 + (doff >> 4) * 4
        if proto != _TCP or frag & 0x3FFF or total != size or hlen < 40 or hlen > size:
            return None  # not TCP, a fragment (MF or offset), trailing bytes, bad offset
        return key, 20, hlen, seq, flags, (tos, frag, ttl, ack, doff, bytes(pkt[40:hlen]))
    if size >= 60 and pkt[0] >> 4 == 6:
        vcf, plen, nxt, hop, key, seq, ack, doff, flags = _V6(pkt)
        hlen = 40 + (doff >> 4) * 4
        if nxt != _TCP or plen + 40 != size or hlen < 60 or hlen > size:
            return None
        return key, 40, hlen, seq, flags, (vcf, hop, ack, doff, bytes(pkt[60:hlen]))
    return None


def coalesce(packets: Sequence[Buffer]) -> list[Write]:
    """Turn a batch of inner IP packets into writes; see the module docstring.

    Packets may be memoryviews into a reused buffer: nothing is copied, the
    writes point into them (write them before the buffer is reused). IPv4
    segments with data are parsed inline (most of the traffic), the rest
    (IPv6, short packets) through ``_tcp_fields``.
    """
    writes: list[Write | _Group] = []
    groups: dict[bytes, _Group] = {}
    sig: tuple[object, ...]
    for pkt in packets:
        size = len(pkt)
        if size >= 52 and pkt[0] == 0x45:  # step 1, IPv4 without options, inline
            _, tos, total, frag, ttl, proto, key, seq, ack, doff, flags, ts = _V4_TS(pkt)
            hlen = 20 + (doff >> 4) * 4
            if proto != _TCP or frag & 0x3FFF or total != size or hlen < 40 or hlen > size:
                writes.append(([PLAIN_HDR, pkt], (pkt,)))  # not TCP, a fragment, ...
                continue
            options = ts if hlen == 52 else bytes(pkt[40:hlen])
            ihl, sig = 20, (tos, frag, ttl, ack, doff, options)
        else:
            fields = _tcp_fields(pkt)
            if fields is None:
                writes.append(([PLAIN_HDR, pkt], (pkt,)))
                continue
            key, ihl, hlen, seq, flags, sig = fields
        payload = size - hlen
        if flags & ~_PSH != _ACK or not payload:  # not mergeable (step 3)
            groups.pop(key, None)  # keep the flow's order: nothing joins across it
            writes.append(([PLAIN_HDR, pkt], (pkt,)))
            continue
        group = groups.get(key)
        if (  # step 2: does it continue the flow's open group exactly?
            group is not None
            and group.open
            and seq == group.next_seq
            and sig == group.sig
            and hlen == group.hlen
            and payload <= group.seg
            and group.count < MAX_SEGMENTS
            and group.size + payload <= MAX_PACKET
        ):
            group.packets.append(pkt)
            group.count += 1
            group.size += payload
            group.next_seq = (seq + payload) & 0xFFFFFFFF
            group.open = payload == group.seg and not flags & _PSH
            continue
        group = _Group(pkt, ihl, hlen, seq, flags, sig)
        groups[key] = group
        writes.append(group)
    return [w.write() if isinstance(w, _Group) else w for w in writes]
