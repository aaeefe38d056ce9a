"""TSO on the sending side: cut TCP super-packets read from the TUN into segments.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
TUN_F_TSO_ECN)`` the kernel hands the TUN reader what a NIC with TSO would get:
one read per TCP super-packet of up to 64 KiB, announced by the
``struct virtio_net_hdr`` in front of it (include/uapi/linux/virtio_net.h),
and packets whose transport checksum is left to the device (``NEEDS_CSUM``).
One read then replaces ~45, and the kernel skips its software segmentation.
The wire stays standard ESP: each segment is sealed into its own ESP packet,
exactly as the kernel would have cut it (tcp_gso_segment, inet_gso_segment).

Pipeline, per packet read (:meth:`Cutter.cut`), all in the reader's arena:
  1. the virtio header says: nothing to do (``flags`` 0 or ``DATA_VALID``,
     ``GSO_NONE``) -> one span as read; ``NEEDS_CSUM`` without GSO -> the
     checksum at ``csum_start + csum_offset`` is completed (virtio spec
     §5.1.6.2: ones' complement sum from ``csum_start`` to the end, the field
     holding the pseudo-header sum already);
  2. ``GSO_TCPV4``/``GSO_TCPV6`` (``| GSO_ECN``): the headers are parsed (IPv4
     with options, IPv6 without extension headers, TCP with options; the
     virtio ``hdr_len`` is only the kernel's linear length, a hint checked to
     lie inside the packet), then the payload is cut at ``gso_size`` and
     each piece moved, last first, behind its own copy of the headers
     (the moves overlap the packet read: memmove semantics, back to front);
  3. per segment: IPv4 total length / IPv6 payload length, IPv4 ID + i
     (no fixed-ID flag exists in the virtio header), TCP sequence number +
     i * gso_size, FIN and PSH only on the last segment, CWR only on the first
     (RFC 3168 §6.1.2, as tcp_gso_segment does), the IPv4 header checksum
     and the TCP checksum with the pseudo-header (RFC 9293 §3.1) of the
     segment's own length;
  4. every checksum of a batch is summed in one vectorised call when
     :meth:`Cutter.finish` runs (numpy ``add.reduceat`` over the arena as
     big-endian 16-bit words; regions start at even offsets: spans are laid
     out 2-aligned and headers are multiples of 4 bytes). A few small
     regions (ACKs) are summed in Python: numpy's fixed cost per call is
     larger than theirs.
Anything else (unknown ``gso_type``, ``gso_size`` 0, ``hdr_len`` beyond the
packet, headers that disagree with the ``gso_type``, no room left) is dropped
and counted by reason in ``drops``; nothing here raises on packet contents.

Measured (docs/performance.md, "TSO"): summing the 48 segments of a 64 KiB
super-packet per segment with ``int.from_bytes`` and ``% 0xffff`` costs
~3.9 us per segment; one numpy ``reduceat`` over them ~0.4 us.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the first super-packet (+15 MB of RSS)
    import numpy as np
    import numpy.typing as npt

from tunneld.io.offload import VNET_HDR, VNET_HDR_LEN, Buffer

# include/uapi/linux/virtio_net.h
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

# Drop reasons (TunStats.read_drops keys)
DROP_GSO_TYPE = "gso_type"  # not NONE, TCPV4 or TCPV6 (e.g. UDP/USO: never enabled)
DROP_GSO_SIZE = "gso_size"  # 0
DROP_HDR_LEN = "hdr_len"  # beyond the packet read
DROP_HEADERS = "gso_headers"  # IP/TCP headers that do not make a TCP super-packet
DROP_CSUM = "csum_offsets"  # csum_start/csum_offset outside the packet or not TCP's
DROP_NO_ROOM = "no_room"  # the segments would not fit the arena (gso_size tiny)
DROP_RUNT = "runt"  # shorter than the virtio header

_TCP = 6
# IPv6 extension headers a segment simply carries along (copied into every
# segment, as the kernel's GSO does): hop-by-hop and destination options. A
# routing header would change the pseudo-header's destination, a fragment
# header cannot precede a TCP super-packet: both refused.
_IPV6_OPTIONS = (0, 60)
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_TCP_CSUM = 16  # RFC 9293 §3.1: checksum offset in the TCP header
_IP4_CSUM = 10  # RFC 791 §3.1
_SMALL = 128  # bytes: a region this short is summed in Python at once
_FEW = 2  # regions: a batch with no more than this is summed in Python
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# what a segment's headers get written per segment, in one call each:
# TCP from the sequence number: seq, ack, data offset, flags, window, checksum;
# IPv4 from the ID: ID, flags/fragment offset, TTL, protocol, header checksum
_TCP_FIELDS = struct.Struct("!IIBBHH")
_IP4_FIELDS = struct.Struct("!HHBBH")

#: The most room one read of ``READ_SIZE`` bytes can need once cut, for a
#: ``gso_size`` of at least 48 (Linux's TCP_MIN_SND_MSS) and headers of at most
#: 120 bytes (IPv4 and TCP, both with 40 bytes of options): the reader keeps this
#: much free before each read, so no legitimate super-packet is ever refused.
READ_SIZE = 65535
MIN_GSO_SIZE = 48


def cut_room(size: int, hlen: int, gso_size: int, gap: int) -> int:
    """Arena bytes the segments of a ``size``-byte super-packet take, gaps included."""
    count = max(1, -(-(size - hlen) // gso_size))
    return count * _stride(hlen, gso_size, gap)


def _stride(hlen: int, gso_size: int, gap: int) -> int:
    stride = hlen + gso_size + gap
    return stride + (stride & 1)  # every segment starts 2-aligned (checksum words)


SEGMENT_ROOM = cut_room(READ_SIZE, 120, MIN_GSO_SIZE, 8)


def read_room(tso: bool, gap: int) -> int:
    """Free arena bytes a TUN reader keeps before each read: nothing is truncated,
    and with TSO the segments of any super-packet with ``gso_size`` >= 48 fit."""
    return (SEGMENT_ROOM if tso else READ_SIZE) + gap + 1


def _fold(total: int) -> int:
    """Ones' complement 16-bit sum of a big integer (2**16 = 1 mod 0xffff)."""
    folded = total % 0xFFFF
    return folded if folded or not total else 0xFFFF


def _sum16(data: memoryview) -> int:
    """Ones' complement sum of ``data`` as big-endian 16-bit words (odd: zero-padded)."""
    value = int.from_bytes(data, "big")
    return _fold(value << 8 if len(data) & 1 else value)


@dataclass
class CutStats:
    """What the cutter did; merged into :class:`tunneld.io.tun.TunStats`."""

    gso_reads: int = 0  # super-packets cut
    gso_segments: int = 0  # segments they became
    csum_completed: int = 0  # NEEDS_CSUM packets (without GSO) whose checksum was completed
    read_drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.read_drops[reason] = self.read_drops.get(reason, 0) + 1


class _Regions:
    """Checksum regions waiting for one vectorised sum: [lo, hi) summed, stored at ``at``."""

    __slots__ = ("at", "hi", "lo")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []
        self.at: list[int] = []

    def clear(self) -> None:
        self.lo.clear()
        self.hi.clear()
        self.at.clear()


class Cutter:
    """Applies the virtio header of each read to the arena it was read into (see the
    module docstring). One per TUN device; :meth:`bind` once per batch, then
    :meth:`cut` per read, then :meth:`finish`."""

    # views of the bound arena, made by _views()
    _bytes: npt.NDArray[np.uint8]
    _words: npt.NDArray[np.uint16]

    def __init__(self, stats: CutStats) -> None:
        self.stats = stats
        self._arena: memoryview = memoryview(bytearray(0))
        self._viewed: memoryview | None = None  # the arena _bytes/_words view
        # TCP/UDP regions (a result of 0 is sent as 0xffff, as skb_checksum_help does)
        # and IPv4 header regions (no such mapping, RFC 791)
        self._l4 = _Regions()
        self._ip = _Regions()

    def bind(self, arena: memoryview) -> None:
        """Use ``arena`` (a writable byte memoryview) for the next cuts."""
        self._arena = arena

    def _views(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16]]:
        """numpy views of the bound arena (bytes, big-endian words), made when a
        sum first needs them: a TUN that never sees a super-packet never imports numpy."""
        if self._viewed is not self._arena:
            import numpy as np

            self._viewed = self._arena
            self._bytes = np.frombuffer(self._arena, np.uint8)
            self._words = self._bytes[: len(self._bytes) & ~1].view(">u2")
        return self._bytes, self._words

    def cut(self, vnet: Buffer, at: int, size: int, spans: list[tuple[int, int]], gap: int) -> int:
        """Apply the virtio header ``vnet`` to ``arena[at : at + size]``: append its
        span(s) to ``spans`` (dropped: none) and return where the next read goes."""
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(vnet)
        kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        if kind == VIRTIO_NET_HDR_GSO_NONE and gso_type == kind:
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                if csum_offset + 2 > size - csum_start or csum_start < 0:
                    self.stats.drop(DROP_CSUM)
                    return at
                self._complete(at, size, csum_start, csum_offset)
            spans.append((at, size))
            return _next(at + size + gap)
        if kind not in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
            self.stats.drop(DROP_GSO_TYPE)
            return at
        if not gso_size:
            self.stats.drop(DROP_GSO_SIZE)
            return at
        if hdr_len > size:
            self.stats.drop(DROP_HDR_LEN)
            return at
        headers = _tcp_headers(self._arena, at, size, kind == VIRTIO_NET_HDR_GSO_TCPV4)
        if headers is None:
            self.stats.drop(DROP_HEADERS)
            return at
        ihl, hlen = headers
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (csum_start != ihl or csum_offset != _TCP_CSUM):
            self.stats.drop(DROP_CSUM)
            return at
        if at + cut_room(size, hlen, gso_size, gap) > len(self._arena):
            self.stats.drop(DROP_NO_ROOM)
            return at
        return self._segment(at, size, ihl, hlen, gso_size, gap, spans)

    def finish(self) -> None:
        """Compute every checksum registered since the last call (step 4)."""
        for regions, mangle in ((self._l4, True), (self._ip, False)):
            if not regions.lo:
                continue
            if len(regions.lo) <= _FEW:
                for lo, hi, at in zip(regions.lo, regions.hi, regions.at, strict=True):
                    self._store_now(lo, hi, at, mangle)
            else:
                self._store_all(regions, mangle)
            regions.clear()

    # -- internals -------------------------------------------------------------------

    def _complete(self, at: int, size: int, csum_start: int, csum_offset: int) -> None:
        """Step 1: NEEDS_CSUM without GSO (the field holds the pseudo-header sum)."""
        self.stats.csum_completed += 1
        lo, hi, store = at + csum_start, at + size, at + csum_start + csum_offset
        if lo & 1 or hi - lo <= _SMALL:  # odd start: not word-aligned in the arena
            self._store_now(lo, hi, store, True)
            return
        self._l4.lo.append(lo)
        self._l4.hi.append(hi)
        self._l4.at.append(store)

    def _store_now(self, lo: int, hi: int, at: int, mangle: bool) -> None:
        value = 0xFFFF - _sum16(self._arena[lo:hi])
        _U16.pack_into(self._arena, at, value if value or not mangle else 0xFFFF)

    def _store_all(self, regions: _Regions, mangle: bool) -> None:
        import numpy as np

        data, all_words = self._views()
        lo = np.array(regions.lo, np.int64)
        hi = np.array(regions.hi, np.int64)
        data[hi[(hi - lo) & 1 == 1]] = 0  # the zero pad of an odd length: the gap behind
        base = int(lo[0]) >> 1  # only the words the regions cover (reduceat casts them all)
        words = all_words[base : (int(hi[-1]) + 1) >> 1].astype(np.uint32)
        bounds = np.empty(2 * len(lo) - 1, np.int64)  # the last region runs to the end
        bounds[0::2] = (lo >> 1) - base
        bounds[1::2] = ((hi[:-1] + 1) >> 1) - base
        sums = np.add.reduceat(words, bounds)[0::2]
        sums = (sums & 0xFFFF) + (sums >> 16)  # fold twice: < 2**17, then <= 0xffff
        sums = (sums & 0xFFFF) + (sums >> 16)
        values = 0xFFFF - sums
        if mangle:
            values[values == 0] = 0xFFFF
        at = np.array(regions.at, np.int64)
        data[at] = values >> 8
        data[at + 1] = values & 0xFF

    def _segment(
        self,
        at: int,
        size: int,
        ihl: int,
        hlen: int,
        gso_size: int,
        gap: int,
        spans: list[tuple[int, int]],
    ) -> int:
        """Steps 2-3: cut ``arena[at : at + size]`` in place, last segment first."""
        arena = self._arena
        payload = size - hlen
        count = max(1, -(-payload // gso_size))
        last = payload - (count - 1) * gso_size  # the last segment's payload
        stride = _stride(hlen, gso_size, gap)
        v4 = arena[at] >> 4 == 4  # _tcp_headers checked it against the gso_type
        kinds = _templates(arena[at : at + hlen], ihl, hlen, gso_size, last, count)
        seq, ack, offset, _, window = _TCP_FIELDS.unpack_from(arena, at + ihl + 4)[:5]
        ident, frag, ttl, proto = _IP4_FIELDS.unpack_from(arena, at + 4)[:4] if v4 else (0,) * 4
        sums = self._payload_sums(at + hlen, payload, gso_size, count)
        pack_tcp, pack_ip = _TCP_FIELDS.pack_into, _IP4_FIELDS.pack_into
        tcp_at, src = ihl + 4, at + hlen + (count - 1) * gso_size
        for i in range(count - 1, -1, -1):  # last first: the moves go forward (step 2)
            dst = at + i * stride
            length = gso_size if i < count - 1 else last
            if i:
                arena[dst + hlen : dst + hlen + length] = arena[src : src + length]
            header, tcp_sum, ip_sum, flags = kinds[2 if i == count - 1 else 0 if i == 0 else 1]
            arena[dst : dst + hlen] = header
            number = (seq + i * gso_size) & 0xFFFFFFFF
            total = tcp_sum + (number >> 16) + (number & 0xFFFF) + sums[i]
            check = 0xFFFF - ((total - 1) % 0xFFFF + 1)  # RFC 1071 with the pseudo-header
            pack_tcp(arena, dst + tcp_at, number, ack, offset, flags, window, check)
            if v4:
                number = (ident + i) & 0xFFFF
                check = 0xFFFF - ((ip_sum + number - 1) % 0xFFFF + 1)
                pack_ip(arena, dst + 4, number, frag, ttl, proto, check)
            src -= gso_size
        starts = range(at, at + count * stride, stride)
        spans.extend(zip(starts, [hlen + gso_size] * (count - 1) + [hlen + last], strict=True))
        self.stats.gso_reads += 1
        self.stats.gso_segments += count
        return _next(at + count * stride)

    def _payload_sums(self, start: int, payload: int, gso_size: int, count: int) -> list[int]:
        """Each segment's payload sum (16-bit words, not folded), before the moves:
        one numpy reduceat over the contiguous payload (step 4)."""
        if gso_size & 1 or start & 1:  # segments would not start on word boundaries
            arena = self._arena
            return [
                _sum16(arena[lo : min(lo + gso_size, start + payload)])
                for lo in range(start, start + payload, gso_size)
            ] or [0]
        if not payload:
            return [0]
        import numpy as np

        data, all_words = self._views()
        end = start + payload
        if payload & 1:
            data[end] = 0  # the zero pad of the last word (room behind the read)
        words = all_words[start >> 1 : (end + 1) >> 1]
        step = gso_size >> 1
        return np.add.reduceat(words, np.arange(0, count * step, step), dtype=np.uint64).tolist()  # type: ignore[no-any-return]


def _next(at: int) -> int:
    return at + (at & 1)


def _tcp_headers(arena: memoryview, at: int, size: int, v4: bool) -> tuple[int, int] | None:
    """(IP header length, IP + TCP header length) of a TCP super-packet, or None."""
    if v4:
        if size < 40 or arena[at] >> 4 != 4:
            return None
        ihl = (arena[at] & 0x0F) * 4
        total, frag = struct.unpack_from("!H2xH", arena, at + 2)
        if ihl < 20 or arena[at + 9] != _TCP or frag & 0x3FFF or total != size:
            return None  # not TCP, a fragment (MF or offset), a length that disagrees
    else:
        if size < 60 or arena[at] >> 4 != 6 or _U16.unpack_from(arena, at + 4)[0] + 40 != size:
            return None  # a length that disagrees (or a jumbogram)
        ihl, nxt = 40, arena[at + 6]
        while nxt in _IPV6_OPTIONS and ihl + 8 <= size:  # RFC 8200 §4.3, §4.6
            nxt, ihl = arena[at + ihl], ihl + (arena[at + ihl + 1] + 1) * 8
        if nxt != _TCP:
            return None  # not TCP, or behind a routing or fragment header
    if ihl + 20 > size:
        return None
    hlen = ihl + (arena[at + ihl + 12] >> 4) * 4
    if hlen < ihl + 20 or hlen > size:
        return None
    return ihl, hlen


def _templates(
    header: memoryview, ihl: int, hlen: int, gso_size: int, last: int, count: int
) -> tuple[tuple[bytes, int, int, int], ...]:
    """(headers, TCP sum, IPv4 header sum, TCP flags) of the first, middle and last
    segments (step 3): lengths and flags set, the TCP checksum field holding the
    pseudo-header sum (so that the TCP sum covers it), sequence number, IPv4 ID
    and IPv4 checksum zero (written per segment, added to the sums per segment).
    A lone segment keeps every flag."""
    v4 = header[0] >> 4 == 4
    flags = header[ihl + 13]
    pseudo = int.from_bytes(header[12:20] if v4 else header[8:40], "big") + _TCP
    out = []
    for payload, tcp_flags in (
        (gso_size, flags & ~(_FIN | _PSH)),
        (gso_size, flags & ~(_FIN | _PSH | _CWR)),
        (last, flags & ~_CWR if count > 1 else flags),
    ):
        h = bytearray(header)
        tcp_len = hlen - ihl + payload
        if v4:
            _U16.pack_into(h, 2, hlen + payload)
            h[4:6] = h[_IP4_CSUM : _IP4_CSUM + 2] = b"\0\0"
        else:
            _U16.pack_into(h, 4, hlen - 40 + payload)  # extension headers included
        h[ihl + 4 : ihl + 8] = b"\0\0\0\0"
        h[ihl + 13] = tcp_flags
        _U16.pack_into(h, ihl + _TCP_CSUM, _fold(pseudo + tcp_len))
        ip_sum = int.from_bytes(h[:ihl], "big") % 0xFFFF if v4 else 0
        out.append((bytes(h), int.from_bytes(h[ihl:], "big") % 0xFFFF, ip_sum, tcp_flags))
    return tuple(out)


def vnet_header(
    flags: int = 0,
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    """A ``struct virtio_net_hdr`` (for the in-memory TUN and tests)."""
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


__all__ = [
    "MIN_GSO_SIZE",
    "READ_SIZE",
    "SEGMENT_ROOM",
    "VNET_HDR_LEN",
    "CutStats",
    "Cutter",
    "cut_room",
    "read_room",
    "vnet_header",
]
