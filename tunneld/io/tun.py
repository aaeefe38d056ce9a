"""TUN devices: the kernel one (python-pytun) and an in-memory twin.

Both offer the interface the packet pumps use (docs/architecture.md, "I/O"):
``async wait_readable()``, ``read_batch_into(arena, max, gap)``, ``read_batch(max)``,
``write(packet)``, ``write_batch(packets)``, ``close()``. A batch is whatever
is queued when the pump wakes up: draining the fd until ``EAGAIN`` per wakeup
is the first performance lever (DESIGN.md §5).

The kernel device is opened with ``IFF_VNET_HDR`` (``offload=True``): every
read starts with a 10-byte ``virtio_net_hdr`` (skipped: no offload is enabled
for reading, so it never announces a GSO packet), and ``write_batch`` merges
TCP segments into one GSO write (:mod:`tunneld.io.offload`).

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
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import pytun
import trio

from tunneld.io.offload import PLAIN_HDR, VNET_HDR_LEN, Buffer, coalesce

Payload = bytes | memoryview  # what read_batch hands out
Span = tuple[int, int]  # (start, size) of one packet read_batch_into put in the arena
_WRITTEN, _DROPPED, _MERGE_REFUSED = object(), object(), object()

# Enough for any inner packet the MTU lets through, plus slack: a read larger
# than the MTU can only come from a misconfigured MTU, and is truncated.
_READ_SIZE = 65535


@dataclass
class TunStats:
    """Counters of one TUN device (exported in the status output)."""

    read_packets: int = 0
    written_packets: int = 0
    merged_writes: int = 0  # writes that carried several TCP segments (offload)
    write_drops: int = 0  # kernel refused (queue full, malformed packet)


class TunDevice:
    """A kernel TUN device (``IFF_TUN | IFF_NO_PI``), non-blocking."""

    def __init__(self, dev: pytun.TunTapDevice, *, vnet_hdr: bool = False) -> None:
        self._dev = dev  # keeps the fd alive: pytun closes it on deallocation
        self._fd: int = dev.fileno()
        self.vnet_hdr = vnet_hdr
        self._vnet_in = bytearray(VNET_HDR_LEN)  # read_batch_into drops the header here
        self._closed = False
        self.name: str = dev.name
        self.stats = TunStats()

    @classmethod
    def open(cls, name: str, mtu: int, *, offload: bool = True) -> TunDevice:
        """Create (or attach to) TUN ``name``, set its MTU and bring it up.

        ``offload``: open with ``IFF_VNET_HDR`` so that :meth:`write_batch` can
        hand TCP segments to the kernel merged (see :mod:`tunneld.io.offload`).
        """
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
        dev = pytun.TunTapDevice(name=name, flags=flags)
        try:
            dev.mtu = mtu
            dev.up()
            os.set_blocking(dev.fileno(), False)
        except BaseException:
            dev.close()
            raise
        return cls(dev, vnet_hdr=offload)

    @property
    def mtu(self) -> int:
        return int(self._dev.mtu)

    def fileno(self) -> int:
        return self._fd

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)

    def read_batch_into(self, arena: memoryview, max_packets: int, gap: int) -> list[Span]:
        """Read queued packets into ``arena``, back to back with ``gap`` free bytes
        after each: ``[(start, size)]``, without the virtio header.

        Stops at EAGAIN, after ``max_packets``, or when the arena could not hold
        a 64 KiB packet more (so nothing is ever truncated).
        """
        spans: list[Span] = []
        readv, fd = os.readv, self._fd
        limit, at = len(arena) - _READ_SIZE - gap, 0
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

    def read_batch(self, max_packets: int = 64) -> list[Payload]:
        """Every packet queued right now (up to ``max_packets``); may be empty."""
        out: list[Payload] = []
        read = os.read
        fd = self._fd
        try:
            if self.vnet_hdr:
                # No offloads are enabled for reading (TUNSETOFFLOAD is never
                # called), so the header only ever says "complete packet".
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
        self._to_daemon: deque[bytes] = deque()
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
        self._check_open()
        spans: list[Span] = []
        limit, at = len(arena) - _READ_SIZE - gap, 0
        while self._to_daemon and len(spans) < max_packets and at <= limit:
            packet = self._to_daemon.popleft()[:_READ_SIZE]  # the kernel truncates too
            arena[at : at + len(packet)] = packet
            spans.append((at, len(packet)))
            at += len(packet) + gap
        self.stats.read_packets += len(spans)
        return spans

    def read_batch(self, max_packets: int = 64) -> list[Payload]:
        self._check_open()
        n = min(max_packets, len(self._to_daemon))
        out: list[Payload] = [self._to_daemon.popleft() for _ in range(n)]
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
