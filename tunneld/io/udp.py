"""UDP sockets: the kernel one (with GSO/GRO) and an in-memory twin.

Interface used by the packet pumps (docs/architecture.md, "I/O"):
``async wait_readable()``, ``recv_batch(max) -> list[(payload, (host, port))]``,
``sendto(data, addr)``, ``send_many(addr, packets)``, ``send_run(addr, data,
segment)``, ``close()``.

Kernel socket, the performance levers (DESIGN.md §5):

- ``recv_batch`` drains the socket until ``EAGAIN`` into one preallocated
  arena and returns memoryviews into it: **a batch is valid only until the next
  ``recv_batch`` call** (copy with ``bytes()`` what must outlive it).
- UDP GRO (``UDP_GRO``, Linux >= 5.0): the kernel may hand over several
  datagrams of one flow coalesced in one buffer, with a cmsg giving the segment
  size; we split them again. On a veth path a GSO super-datagram sent by the
  peer then crosses the stack as one skb and one syscall.
- UDP GSO (``UDP_SEGMENT``, Linux >= 4.18) in ``send_many``: a run of
  equal-size packets (the last may be shorter) goes out in one ``sendmsg``
  that the kernel segments. Errors meaning "no GSO here" switch it off for
  good; a too-large run (``EMSGSIZE``) falls back to one ``sendto`` per packet.
  ``send_run`` takes a run already laid out back to back in one buffer (the
  ESP pump seals into such a buffer): one iovec, no list of packets at all.

Sending never raises on network errors (unreachable, buffer full, refused by a
firewall): UDP is lossy anyway, IKE retransmits, and the pump must not die.
Those cases are counted in :class:`UdpStats`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import mmap
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

Address = tuple[str, int]
Buffer = bytes | bytearray | memoryview
Payload = bytes | memoryview  # what recv_batch hands out
Datagram = tuple[Payload, Address]

# Linux <netinet/udp.h>; Python 3.11's socket module does not export them.
SOL_UDP = 17
UDP_SEGMENT = 103  # GSO segment size, a u16 cmsg or sockopt
UDP_GRO = 104  # receive coalesced datagrams, an int cmsg with the segment size
# What we chose: UDP_MAX_SEGMENTS is 64 on older kernels (128 since 6.11).
GSO_MAX_SEGMENTS = 64
# An IP datagram's length field is 16 bits; leave room for the IP header
# (IPv4 20, IPv6 40: conservative, its payload length excludes the header)
# and the 8-byte UDP header.
_GSO_MAX_BYTES = {socket.AF_INET: 65535 - 20 - 8, socket.AF_INET6: 65535 - 40 - 8}
#: The largest run ``send_run`` accepts for one sendmsg, whatever the family.
GSO_MAX_BYTES = min(_GSO_MAX_BYTES.values())
_SEGMENT = struct.Struct("=H")  # the UDP_SEGMENT cmsg: a u16 in host order
_GSO_OFF_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_ARENA_SIZE = 1 << 20
_MAX_DATAGRAM = 65535
_SOCKET_BUFFER = 4 << 20
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
# Linux <linux/sock_diag.h>: SO_MEMINFO gives SK_MEMINFO_VARS u32s, the drops last (4.8+)
_SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_MEMINFO = struct.Struct("=9I")
_MEMINFO_LEN = _MEMINFO.size


@dataclass
class UdpStats:
    """Counters of one UDP socket (exported in the status output)."""

    recv_datagrams: int = 0
    recv_calls: int = 0
    gro_coalesced: int = 0  # recv calls that returned more than one datagram
    sent_datagrams: int = 0
    gso_sends: int = 0  # sendmsg calls carrying several segments
    send_drops: int = 0  # socket buffer full
    send_errors: int = 0  # unreachable, refused, too big, firewall
    kernel_drops: int = 0  # received by the kernel, dropped there: receive buffer full


def arena(size: int) -> memoryview:
    """A zero-filled, writable buffer whose pages cost memory only once written to
    (anonymous ``mmap``; ``bytearray(size)`` writes every byte, so a daemon paid
    for all of its receive and seal buffers at start, used or not)."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _norm(host: str) -> str:
    return ipaddress.ip_address(host).compressed


class UdpSocket:
    """A non-blocking kernel UDP socket bound to one local address."""

    def __init__(self, sock: socket.socket, *, gro: bool) -> None:
        self._sock = sock
        self._family = sock.family
        self._gso_max_bytes = _GSO_MAX_BYTES[sock.family]
        self.gso_enabled = True
        self.gro_enabled = gro
        self.stats = UdpStats()
        self._view = arena(_ARENA_SIZE)
        host, port = sock.getsockname()[:2]
        self.local_address: Address = (host, port)

    @classmethod
    def bind(cls, host: str, port: int, *, gro: bool = True) -> UdpSocket:
        """Bind ``host:port`` (IPv4 or IPv6 literal); ``port`` 0 picks a free one."""
        family = _family(host)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _grow_buffers(sock)
            sock.bind((host, port))
            sock.setblocking(False)
            gro = gro and _try_setsockopt(sock, SOL_UDP, UDP_GRO, 1)
        except BaseException:
            sock.close()
            raise
        return cls(sock, gro=gro)

    def fileno(self) -> int:
        return self._sock.fileno()

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    def recv_batch(self, max_datagrams: int = 64) -> list[Datagram]:
        """Datagrams queued now (up to about ``max_datagrams``), as views into
        the arena, valid until the next call."""
        if self.gro_enabled:
            return self._recv_gro(max_datagrams)
        out: list[Datagram] = []
        view, recv = self._view, self._sock.recvfrom_into
        off, limit = 0, _ARENA_SIZE - _MAX_DATAGRAM
        while len(out) < max_datagrams and off <= limit:
            try:
                n, addr = recv(view[off:], _MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error queued on the socket
                self.stats.send_errors += 1
                continue
            out.append((view[off : off + n], (addr[0], addr[1])))
            off += n
        self.stats.recv_calls += len(out)
        self.stats.recv_datagrams += len(out)
        return out

    def _recv_gro(self, max_datagrams: int) -> list[Datagram]:
        out: list[Datagram] = []
        view, recv = self._view, self._sock.recvmsg_into
        off, limit = 0, _ARENA_SIZE - _MAX_DATAGRAM
        while len(out) < max_datagrams and off <= limit:
            try:
                n, anc, _flags, addr = recv([view[off:]], _GRO_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError:
                self.stats.send_errors += 1
                continue
            self.stats.recv_calls += 1
            src = (addr[0], addr[1])
            seg = _gro_segment_size(anc)
            if seg == 0 or seg >= n:
                out.append((view[off : off + n], src))
            else:
                self.stats.gro_coalesced += 1
                chunk = view[off : off + n]  # slices of it stop at its end: the last is shorter
                out += [(chunk[p : p + seg], src) for p in range(0, n, seg)]
            off += n
        self.stats.recv_datagrams += len(out)
        return out

    def sendto(self, data: Buffer, addr: Address) -> None:
        try:
            self._sock.sendto(data, addr)
        except BlockingIOError:
            self.stats.send_drops += 1
        except OSError:
            self.stats.send_errors += 1
        else:
            self.stats.sent_datagrams += 1

    def send_many(self, addr: Address, packets: Sequence[Buffer]) -> None:
        """Send ``packets`` in order to ``addr``, in GSO runs where possible."""
        n = len(packets)
        i = 0
        while i < n:
            j = self._run_end(packets, i) if self.gso_enabled else i + 1
            if j - i == 1:
                self.sendto(packets[i], addr)
            else:
                self._send_gso(addr, packets[i:j])
            i = j

    def _run_end(self, packets: Sequence[Buffer], i: int) -> int:
        """End of the GSO run starting at ``i``: equal sizes, the last may be shorter."""
        seg = len(packets[i])
        total, j = seg, i + 1
        stop = min(len(packets), i + GSO_MAX_SEGMENTS)
        while j < stop:
            size = len(packets[j])
            if size > seg or total + size > self._gso_max_bytes:
                break
            total += size
            j += 1
            if size < seg:
                break
        return j

    def send_run(self, addr: Address, data: Buffer, segment: int) -> None:
        """Send ``data`` as datagrams of ``segment`` bytes each, the last may be shorter.

        The caller keeps a run within :data:`GSO_MAX_SEGMENTS` datagrams and
        :data:`GSO_MAX_BYTES`; it goes out in one GSO ``sendmsg`` when the
        kernel takes it, else as one ``sendto`` per datagram.
        """
        size = len(data)
        if size <= segment:
            self.sendto(data, addr)
            return
        if self.gso_enabled and self._gso_sendmsg(addr, [data], segment, -(-size // segment)):
            return
        view = memoryview(data)
        for off in range(0, size, segment):
            self.sendto(view[off : off + segment], addr)

    def _send_gso(self, addr: Address, run: Sequence[Buffer]) -> None:
        if not self._gso_sendmsg(addr, run, len(run[0]), len(run)):
            for p in run:
                self.sendto(p, addr)

    def _gso_sendmsg(self, addr: Address, iov: Sequence[Buffer], segment: int, count: int) -> bool:
        """One GSO sendmsg of ``count`` datagrams; False: send them one by one instead."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment))]
        try:
            self._sock.sendmsg(iov, cmsg, 0, addr)
        except BlockingIOError:
            self.stats.send_drops += count
            return True
        except OSError as exc:
            if exc.errno in _GSO_OFF_ERRNOS:
                self.gso_enabled = False
                log.info("UDP GSO unavailable on %s (%s): one sendto per packet", self, exc)
                return False
            if exc.errno == errno.EMSGSIZE:
                return False
            self.stats.send_errors += count
            return True
        self.stats.gso_sends += 1
        self.stats.sent_datagrams += count
        return True

    def refresh_stats(self) -> None:
        """Read what only the kernel counts into :attr:`stats` (for the status output)."""
        with contextlib.suppress(OSError):
            meminfo = self._sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO_LEN)
            if len(meminfo) >= _MEMINFO_LEN:
                self.stats.kernel_drops = _MEMINFO.unpack_from(meminfo)[_SK_MEMINFO_DROPS]

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(RuntimeError):  # outside trio.run: nobody waits on it
            trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    def __repr__(self) -> str:
        host, port = self.local_address
        return f"UdpSocket({host!r}, {port}, gso={self.gso_enabled}, gro={self.gro_enabled})"


def _grow_buffers(sock: socket.socket) -> None:
    """Large socket buffers absorb a batch; FORCE variants pass rmem_max as root."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if not _try_setsockopt(sock, socket.SOL_SOCKET, force, _SOCKET_BUFFER):
            _try_setsockopt(sock, socket.SOL_SOCKET, plain, _SOCKET_BUFFER)


def _try_setsockopt(sock: socket.socket, level: int, opt: int, value: int) -> bool:
    try:
        sock.setsockopt(level, opt, value)
    except OSError:
        return False
    return True


def _gro_segment_size(anc: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in anc:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
    return 0


# -- in-memory twin -------------------------------------------------------------

# Decides the fate of one datagram: returns the payloads to deliver (none:
# lost; two: duplicated; different bytes: corrupted).
Impairment = Callable[[bytes, Address, Address], Iterable[bytes]]


@dataclass
class NetworkStats:
    delivered: int = 0
    unreachable: int = 0  # nobody bound at the destination
    queue_drops: int = 0  # receiver's queue full
    impaired_drops: int = 0  # the impairment hook returned fewer payloads


class MemoryNetwork:
    """Datagrams between :class:`MemoryUdp` endpoints, delivered immediately."""

    def __init__(self, impair: Impairment | None = None) -> None:
        self.impair = impair
        self.stats = NetworkStats()
        self._endpoints: dict[Address, MemoryUdp] = {}
        self._next_port = 40000

    def bind(self, host: str, port: int, *, queue_limit: int = 1024) -> MemoryUdp:
        """A new endpoint at ``host:port`` (port 0: pick a free one)."""
        host = _norm(host)
        if ipaddress.ip_address(host).is_unspecified:
            raise ValueError("MemoryNetwork endpoints need a concrete address")
        if port == 0:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            port = self._next_port
        if (host, port) in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} already bound")
        udp = MemoryUdp(self, (host, port), queue_limit)
        self._endpoints[(host, port)] = udp
        return udp

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        dst = (_norm(dst[0]), dst[1])
        payloads = [data] if self.impair is None else list(self.impair(data, src, dst))
        if len(payloads) < 1:
            self.stats.impaired_drops += 1
        target = self._endpoints.get(dst)
        for payload in payloads:
            if target is None:
                self.stats.unreachable += 1
            elif target.deliver(payload, src):
                self.stats.delivered += 1
            else:
                self.stats.queue_drops += 1

    def _unbind(self, addr: Address) -> None:
        self._endpoints.pop(addr, None)


class MemoryUdp:
    """In-memory twin of :class:`UdpSocket` (same interface, bytes payloads)."""

    def __init__(self, network: MemoryNetwork, local: Address, queue_limit: int) -> None:
        self.network = network
        self.local_address = local
        self.queue_limit = queue_limit
        self.stats = UdpStats()
        # for tests: batching, one (address, datagrams) per send_many or send_run
        self.send_many_calls: list[tuple[Address, int]] = []
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def deliver(self, data: bytes, src: Address) -> bool:
        """Called by the network: queue ``data``; False when the queue is full."""
        if self._closed or len(self._queue) >= self.queue_limit:
            return False
        self._queue.append((data, src))
        self._lot.unpark_all()
        return True

    async def wait_readable(self) -> None:
        while not self._queue:
            self._check_open()
            await self._lot.park()
        self._check_open()
        await trio.lowlevel.checkpoint()

    def recv_batch(self, max_datagrams: int = 64) -> list[Datagram]:
        self._check_open()
        n = min(max_datagrams, len(self._queue))
        out: list[Datagram] = [self._queue.popleft() for _ in range(n)]
        self.stats.recv_calls += n
        self.stats.recv_datagrams += n
        return out

    def sendto(self, data: Buffer, addr: Address) -> None:
        self._check_open()
        self.stats.sent_datagrams += 1
        self.network.transmit(bytes(data), self.local_address, addr)

    def send_many(self, addr: Address, packets: Sequence[Buffer]) -> None:
        self.send_many_calls.append((addr, len(packets)))
        for p in packets:
            self.sendto(p, addr)

    def send_run(self, addr: Address, data: Buffer, segment: int) -> None:
        view = memoryview(data)
        self.send_many(addr, [view[off : off + segment] for off in range(0, len(view), segment)])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.network._unbind(self.local_address)
            self._lot.unpark_all()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self!r} is closed")

    def __repr__(self) -> str:
        host, port = self.local_address
        return f"MemoryUdp({host!r}, {port})"
