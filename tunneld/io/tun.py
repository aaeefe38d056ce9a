"""TUN devices: the kernel one (python-pytun) and an in-memory twin.

Both offer the interface the packet pumps use (docs/architecture.md, "I/O"):
``async wait_readable()``, ``read_batch_into(arena, max, gap)``, ``read_batch(max)``,
``write(packet)``, ``write_batch(packets)``, ``close()``. A batch is whatever
is queued when the pump wakes up: draining the fd until ``EAGAIN`` per wakeup
is the first performance lever (DESIGN.md §5).

The kernel device is opened with ``IFF_VNET_HDR`` (``offload=True``): every
read and write starts with a 10-byte ``virtio_net_hdr``. ``write_batch``
merges TCP segments into one GSO write (:mod:`tunneld.io.offload`). With
``tso=True`` (the default with ``offload``) ``TUNSETOFFLOAD`` enables
``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN`` for reading: the
kernel then hands over TCP super-packets of up to 64 KiB and leaves
transport checksums to us, and :meth:`TunDevice.read_batch_into` cuts them
into segments with complete checksums (:mod:`tunneld.io.segment`), so the
pumps above see ordinary packets. Without ``tso`` the header only ever says
"complete packet".

Buffer reuse on read was measured (1,372-byte packets, idle namespace):
``os.read`` allocating a fresh ``bytes`` took 0.7 us per packet, ``os.readv``
into one preallocated bytearray plus copying the packet out 1.06 us. The ESP
pump needs no copy out: :meth:`TunDevice.read_batch_into` reads the packets
back to back into the buffer that AES-GCM seals from (``OutboundSA.seal_into``),
so nothing is allocated per packet; ``read_batch`` (fresh ``bytes``) stays for
callers that keep packets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import pytun
import trio

from tunneld.io.offload import PLAIN_HDR, VNET_HDR_LEN, Buffer, coalesce
from tunneld.io.segment import DROP_RUNT, CutStats, Cutter, read_room

Payload = bytes | memoryview  # what read_batch hands out
Span = tuple[int, int]  # (start, size) of one packet read_batch_into put in the arena
_WRITTEN, _DROPPED, _MERGE_REFUSED = object(), object(), object()

# Enough for any inner packet the MTU lets through, plus slack: a read larger
# than the MTU can only come from a misconfigured MTU, and is truncated.
_READ_SIZE = 65535
# linux/if_tun.h: _IOW('T', 208, unsigned int) and the offloads we can take
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TSO_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN


def _set_offload(fd: int, flags: int) -> bool:
    """TUNSETOFFLOAD; False if the kernel refuses (then no TSO: plain reads)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError:
        return False
    return True


@dataclass
class TunStats(CutStats):
    """Counters of one TUN device (exported in the status output); the TSO ones
    (``gso_reads``, ``gso_segments``, ``csum_completed``, ``read_drops``) come
    from :class:`tunneld.io.segment.CutStats`."""

    read_packets: int = 0  # reads (a super-packet counts once)
    written_packets: int = 0
    merged_writes: int = 0  # writes that carried several TCP segments (offload)
    write_drops: int = 0  # kernel refused (queue full, malformed packet)


class TunDevice:
    """A kernel TUN device (``IFF_TUN | IFF_NO_PI``), non-blocking."""

    def __init__(
        self, dev: pytun.TunTapDevice, *, vnet_hdr: bool = False, tso: bool = False
    ) -> None:
        self._dev = dev  # keeps the fd alive: pytun closes it on deallocation
        self._fd: int = dev.fileno()
        self.vnet_hdr = vnet_hdr
        self.tso = tso and vnet_hdr
        self._vnet_in = bytearray(VNET_HDR_LEN)  # read_batch_into reads the header here
        self._closed = False
        self.name: str = dev.name
        self.stats = TunStats()
        self._cutter = Cutter(self.stats)
        self._scratch: memoryview | None = None  # read_batch's arena

    @classmethod
    def open(cls, name: str, mtu: int, *, offload: bool = True, tso: bool = True) -> TunDevice:
        """Create (or attach to) TUN ``name``, set its MTU and bring it up.

        ``offload``: open with ``IFF_VNET_HDR`` so that :meth:`write_batch` can
        hand TCP segments to the kernel merged (see :mod:`tunneld.io.offload`).
        ``tso`` (with ``offload``): let the kernel hand over TCP super-packets and
        unfinished checksums, which reads then cut and complete (module docstring).
        """
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
        dev = pytun.TunTapDevice(name=name, flags=flags)
        try:
            # Set (or, on a persistent device opened again, cleared) before the
            # device is up: the reader must understand every header it gets.
            tso = offload and tso and _set_offload(dev.fileno(), TSO_OFFLOADS)
            if offload and not tso:
                _set_offload(dev.fileno(), 0)
            dev.mtu = mtu
            dev.up()
            os.set_blocking(dev.fileno(), False)
        except BaseException:
            dev.close()
            raise
        if tso:
            # The cutter's batched checksums use numpy: imported now, not by the
            # first batch that needs it (its import stalled the pump long enough
            # to overflow the TUN queue at 5,000 packets/s: 6 of 10,000 lost)
            import numpy  # noqa: F401
        return cls(dev, vnet_hdr=offload, tso=tso)

    @property
    def mtu(self) -> int:
        return int(self._dev.mtu)

    def fileno(self) -> int:
        return self._fd

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    def read_batch_into(self, arena: memoryview, max_packets: int, gap: int) -> list[Span]:
        """Read queued packets into ``arena``, back to back with at least ``gap``
        free bytes after each: ``[(start, size)]``, without the virtio header.

        With TSO a super-packet becomes several spans (its segments) and a
        packet the virtio header says is unfinished is completed (module
        docstring); what the header makes unusable is dropped and counted
        (``stats.read_drops``). Stops at EAGAIN, once ``max_packets`` spans are
        there, or when the arena could not take one more read
        (:func:`read_room`: nothing is ever truncated).
        """
        if self.tso:
            return self._read_cut(arena, max_packets, gap)
        spans: list[Span] = []
        readv, fd = os.readv, self._fd
        limit, at = len(arena) - read_room(False, gap), 0
        header = [self._vnet_in] if self.vnet_hdr else []
        skip = len(header) and VNET_HDR_LEN
        try:
            while len(spans) < max_packets and at <= limit:
                size = readv(fd, [*header, arena[at : at + _READ_SIZE]]) - skip
                if size < 0:
                    size = 0  # a runt shorter than the header: the SADB drops it
                spans.append((at, size))
                at += size + gap
        except BlockingIOError:
            pass
        self.stats.read_packets += len(spans)
        return spans

    def _read_cut(self, arena: memoryview, max_packets: int, gap: int) -> list[Span]:
        """read_batch_into with TSO: each read goes through the cutter."""
        spans: list[Span] = []
        readv, fd, vnet = os.readv, self._fd, self._vnet_in
        cutter = self._cutter
        cutter.bind(arena)
        limit, at, reads = len(arena) - read_room(True, gap), 0, 0
        iov: list[Buffer] = [vnet, arena]
        try:
            while len(spans) < max_packets and at <= limit:
                iov[1] = arena[at : at + _READ_SIZE]
                size = readv(fd, iov) - VNET_HDR_LEN
                reads += 1
                if size < 0:
                    self.stats.drop(DROP_RUNT)
                elif vnet[0] or vnet[1]:  # flags or gso_type: the cutter's work
                    at = cutter.cut(vnet, at, size, spans, gap)
                else:
                    spans.append((at, size))
                    at += size + gap
                    at += at & 1  # 2-aligned: checksum regions are word-aligned
        except BlockingIOError:
            pass
        finally:
            cutter.finish()
            self.stats.read_packets += reads
        return spans

    def read_batch(self, max_packets: int = 64) -> list[Payload]:
        """Every packet queued right now (up to ``max_packets``); may be empty."""
        if self.tso:  # through the cutter, then copied out
            if self._scratch is None:
                self._scratch = memoryview(bytearray(2 * read_room(True, 8)))
            arena = self._scratch
            return [bytes(arena[a : a + n]) for a, n in self.read_batch_into(arena, max_packets, 8)]
        out: list[Payload] = []
        read = os.read
        fd = self._fd
        try:
            if self.vnet_hdr:
                # Without TSO no offload is enabled for reading (TUNSETOFFLOAD
                # cleared), so the header only ever says "complete packet".
                while len(out) < max_packets:
                    out.append(memoryview(read(fd, _READ_SIZE))[VNET_HDR_LEN:])
            else:
                while len(out) < max_packets:
                    out.append(read(fd, _READ_SIZE))
        except BlockingIOError:
            pass
        self.stats.read_packets += len(out)
        return out

    def write(self, packet: Buffer) -> None:
        """Hand one inner IP packet to the kernel; a refusal is counted, not raised."""
        if self.vnet_hdr:
            self._writev([PLAIN_HDR, packet], 1)
        else:
            self._writev([packet], 1)

    def write_batch(self, packets: Sequence[Buffer]) -> None:
        """Hand a batch to the kernel, TCP segments of one flow merged when possible."""
        if not self.vnet_hdr:
            for packet in packets:
                self._writev([packet], 1)
            return
        for iov, originals in coalesce(packets):
            outcome = self._writev(iov, len(originals))
            if outcome is _MERGE_REFUSED:  # the packets themselves are fine
                for packet in originals:
                    self._writev([PLAIN_HDR, packet], 1)
            elif outcome is _WRITTEN and len(originals) > 1:
                self.stats.merged_writes += 1

    def _writev(self, iov: list[Buffer], count: int) -> object:
        try:
            os.writev(self._fd, iov)
        except BlockingIOError:
            self.stats.write_drops += count
            return _DROPPED
        except OSError as exc:
            # EINVAL/EIO: the kernel did not take the packet (bad version nibble,
            # truncated header, a merge it cannot do); count, never raise.
            if exc.errno not in (errno.EINVAL, errno.EIO, errno.EFAULT, errno.ENOBUFS):
                raise
            if count > 1:
                return _MERGE_REFUSED
            self.stats.write_drops += 1
            return _DROPPED
        self.stats.written_packets += count
        return _WRITTEN

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # outside trio.run: nobody waits on it
            trio.lowlevel.notify_closing(self._fd)
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self._fd}, closed={self._closed})"


class MemoryTun:
    """In-memory twin of :class:`TunDevice` for tests and demos.

    The daemon side uses the same methods as on a kernel TUN. The "host" side
    (what the kernel's IP stack would do) is :meth:`host_send` (a packet routed
    into the tunnel) and :meth:`host_recv` (a packet the daemon delivered).
    Both directions are bounded like a kernel queue: beyond ``queue_limit``
    packets are dropped and counted.
    """

    def __init__(self, name: str = "mem0", mtu: int = 1400, queue_limit: int = 1024) -> None:
        self.name = name
        self.mtu = mtu
        self.queue_limit = queue_limit
        self.stats = TunStats()
        self.host_drops = 0  # host_send beyond queue_limit
        self._cutter = Cutter(self.stats)
        # a packet, or (virtio header, packet) as a TSO-enabled kernel TUN reads it
        self._to_daemon: deque[bytes | tuple[bytes, bytes]] = deque()
        self._to_host: deque[bytes] = deque()
        self._daemon_lot = trio.lowlevel.ParkingLot()
        self._host_lot = trio.lowlevel.ParkingLot()
        self._closed = False

    # -- daemon side (the TunDevice interface) --------------------------------

    async def wait_readable(self) -> None:
        while not self._to_daemon:
            self._check_open()
            await self._daemon_lot.park()
        self._check_open()
        await trio.lowlevel.checkpoint()

    def read_batch_into(self, arena: memoryview, max_packets: int, gap: int) -> list[Span]:
        """As the kernel TUN with TSO: packets sent with a virtio header
        (:meth:`host_send_offload`) go through the same cutter."""
        self._check_open()
        spans: list[Span] = []
        cutter = self._cutter
        cutter.bind(arena)
        queue, at, reads = self._to_daemon, 0, 0
        try:
            while queue and len(spans) < max_packets:
                if at > len(arena) - read_room(isinstance(queue[0], tuple), gap):
                    break
                item = queue.popleft()
                vnet, packet = item if isinstance(item, tuple) else (PLAIN_HDR, item)
                packet = packet[:_READ_SIZE]  # the kernel truncates too
                size = len(packet)
                arena[at : at + size] = packet
                reads += 1
                if vnet[0] or vnet[1]:
                    at = cutter.cut(vnet, at, size, spans, gap)
                else:
                    spans.append((at, size))
                    at += size + gap
                    at += at & 1
        finally:
            cutter.finish()
            self.stats.read_packets += reads
        return spans

    def read_batch(self, max_packets: int = 64) -> list[Payload]:
        self._check_open()
        if any(isinstance(item, tuple) for item in self._to_daemon):
            arena = memoryview(bytearray(2 * read_room(True, 8)))
            return [bytes(arena[a : a + n]) for a, n in self.read_batch_into(arena, max_packets, 8)]
        n = min(max_packets, len(self._to_daemon))
        out: list[Payload] = [bytes(self._to_daemon.popleft()) for _ in range(n)]  # type: ignore[arg-type]
        self.stats.read_packets += n
        return out

    def write_batch(self, packets: Sequence[Buffer]) -> None:
        for packet in packets:
            self.write(packet)

    def write(self, packet: Buffer) -> None:
        self._check_open()
        if len(self._to_host) >= self.queue_limit:
            self.stats.write_drops += 1
            return
        self._to_host.append(bytes(packet))
        self.stats.written_packets += 1
        self._host_lot.unpark_all()

    def close(self) -> None:
        self._closed = True
        self._daemon_lot.unpark_all()
        self._host_lot.unpark_all()

    # -- host side --------------------------------------------------------------

    def host_send(self, packet: bytes) -> None:
        """The host routes ``packet`` into the tunnel (the daemon will read it)."""
        self._check_open()
        if len(self._to_daemon) >= self.queue_limit:
            self.host_drops += 1
            return
        self._to_daemon.append(bytes(packet))
        self._daemon_lot.unpark_all()

    def host_send_offload(self, vnet: bytes, packet: bytes) -> None:
        """Like :meth:`host_send`, with the ``virtio_net_hdr`` a TSO-enabled kernel
        TUN would put in front (a super-packet, or a checksum left to the reader)."""
        self._check_open()
        if len(self._to_daemon) >= self.queue_limit:
            self.host_drops += 1
            return
        self._to_daemon.append((bytes(vnet), bytes(packet)))
        self._daemon_lot.unpark_all()

    async def host_recv(self) -> bytes:
        """Wait for the next packet the daemon wrote toward the host."""
        while not self._to_host:
            self._check_open()
            await self._host_lot.park()
        await trio.lowlevel.checkpoint()
        return self._to_host.popleft()

    def host_recv_nowait(self) -> list[bytes]:
        """Every packet the daemon wrote so far and the host has not taken."""
        out = list(self._to_host)
        self._to_host.clear()
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} is closed")

    def __repr__(self) -> str:
        return f"MemoryTun(name={self.name!r}, mtu={self.mtu}, closed={self._closed})"
