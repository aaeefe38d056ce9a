"""The kernel devices of tunneld.io (TunDevice, UdpSocket) inside a fresh namespace.

Each test's thread runs in its own empty network namespace (``inside_netns``),
so sockets and TUN devices live and die there.
"""

from __future__ import annotations

import errno
import itertools
import socket
import subprocess
from collections.abc import Sequence

import pytest
import trio
from scapy.layers.inet import IP, UDP

from tunneld.io import TunDevice, UdpSocket
from tunneld.io.segment import read_room
from tunneld.io.udp import Address, Buffer

pytestmark = pytest.mark.netns


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


async def drain(sock: UdpSocket, want: int) -> list[tuple[bytes, Address]]:
    """Copy datagrams out as they come (recv_batch views die at the next call)."""
    got: list[tuple[bytes, Address]] = []
    with trio.fail_after(5):
        while len(got) < want:
            await sock.wait_readable()
            got += [(bytes(data), src) for data, src in sock.recv_batch(64)]
    return got


# -- UdpSocket ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_udp_sendto_and_recv_batch(inside_netns: str, host: str) -> None:
    a, b = UdpSocket.bind(host, 0), UdpSocket.bind(host, 0)
    try:
        for i in range(5):
            a.sendto(b"datagram %d" % i, b.local_address)
        got = await drain(b, 5)
        assert got == [(b"datagram %d" % i, a.local_address) for i in range(5)]
        assert len(a.local_address) == 2  # IPv6 addresses come back as (host, port) too
        assert b.stats.recv_datagrams == 5 and a.stats.sent_datagrams == 5
    finally:
        a.close(), b.close()


async def test_recv_batch_views_share_one_arena_and_respect_max(inside_netns: str) -> None:
    a, b = UdpSocket.bind("127.0.0.1", 0, gro=False), UdpSocket.bind("127.0.0.1", 0)
    try:
        for i in range(10):
            a.sendto(bytes([i]) * 100, b.local_address)
        first = b.recv_batch(4)
        assert [bytes(d) for d, _ in first] == [bytes([i]) * 100 for i in range(4)]
        assert all(isinstance(d, memoryview) for d, _ in first)
        rest = b.recv_batch(64)
        assert [bytes(d) for d, _ in rest] == [bytes([i]) * 100 for i in range(4, 10)]
        assert bytes(first[0][0]) == bytes([4]) * 100  # the arena was reused, as documented
        assert b.recv_batch(64) == []
    finally:
        a.close(), b.close()


async def test_send_many_uses_gso_and_gro_splits_it_again(inside_netns: str) -> None:
    a, b = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0)
    try:
        assert b.gro_enabled
        packets = [bytes([i]) * 1400 for i in range(20)] + [b"short tail"]
        a.send_many(b.local_address, packets)
        assert a.stats.gso_sends == 1 and a.stats.sent_datagrams == 21
        got = await drain(b, 21)
        assert [d for d, _ in got] == packets
        # loopback keeps the GSO datagram whole up to a GRO socket: one receive, split here
        assert b.stats.gro_coalesced == 1 and b.stats.recv_calls == 1
    finally:
        a.close(), b.close()


async def test_send_many_splits_runs_at_size_changes(inside_netns: str) -> None:
    a, b = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        sizes = [500, 500, 500, 100, 100, 700, 600, 600, 600] + [300] * 70
        packets = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
        a.send_many(b.local_address, packets)
        # runs: 500x3+100 | 100 alone | 700+600 | 600x2+300 ... (64 at most per run)
        assert a.stats.sent_datagrams == len(packets)
        assert [d for d, _ in await drain(b, len(packets))] == packets
        assert a.stats.gso_sends >= 4
    finally:
        a.close(), b.close()


async def test_send_run_sends_one_buffer_as_gso_segments(inside_netns: str) -> None:
    a, b = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        packets = [bytes([i]) * 1000 for i in range(10)] + [b"tail" * 50]
        a.send_run(b.local_address, memoryview(b"".join(packets)), 1000)
        a.send_run(b.local_address, b"alone", 1000)  # one datagram: a plain sendto
        assert a.stats.gso_sends == 1 and a.stats.sent_datagrams == 12
        assert [d for d, _ in await drain(b, 12)] == [*packets, b"alone"]
    finally:
        a.close(), b.close()


async def test_send_run_falls_back_per_segment(inside_netns: str) -> None:
    ip("link", "set", "lo", "mtu", "1500")
    raw = _NoGsoSocket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    a, big = UdpSocket(raw, gro=False), UdpSocket.bind("127.0.0.1", 0)
    b = UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        a.send_run(b.local_address, b"x" * 700 + b"y" * 300, 700)  # GSO refused
        assert not a.gso_enabled and a.stats.sent_datagrams == 2
        big.send_run(b.local_address, b"z" * 4000, 2000)  # segments above the MTU
        assert big.gso_enabled and big.stats.sent_datagrams == 2
        got = [d for d, _ in await drain(b, 4)]
        assert got == [b"x" * 700, b"y" * 300, b"z" * 2000, b"z" * 2000]
    finally:
        a.close(), big.close(), b.close()


class _NoGsoSocket(socket.socket):
    """A kernel socket that refuses UDP_SEGMENT like an old kernel would."""

    def sendmsg(self, buffers: Sequence[Buffer], *args: object) -> int:  # type: ignore[override]
        raise OSError(errno.ENOPROTOOPT, "no GSO here")


async def test_gso_refused_falls_back_to_sendto_and_stays_off(inside_netns: str) -> None:
    raw = _NoGsoSocket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    a, b = UdpSocket(raw, gro=False), UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        packets = [b"x" * 300] * 5
        a.send_many(b.local_address, packets)
        assert not a.gso_enabled
        a.send_many(b.local_address, packets)
        assert a.stats.sent_datagrams == 10 and a.stats.gso_sends == 0
        assert len(await drain(b, 10)) == 10
    finally:
        a.close(), b.close()


async def test_gso_segment_above_mtu_falls_back_and_keeps_gso(inside_netns: str) -> None:
    ip("link", "set", "lo", "mtu", "1500")
    a, b = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        packets = [b"y" * 2000] * 3  # segments larger than the MTU: EMSGSIZE
        a.send_many(b.local_address, packets)
        assert a.gso_enabled  # too big is not "no GSO"
        assert a.stats.sent_datagrams == 3  # sent one by one (fragmented)
        assert [d for d, _ in await drain(b, 3)] == packets
    finally:
        a.close(), b.close()


async def test_send_errors_are_counted_not_raised(inside_netns: str) -> None:
    a = UdpSocket.bind("127.0.0.1", 0)
    try:
        a.sendto(b"nowhere", ("192.0.2.99", 4500))  # no route in an empty namespace
        a.send_many(("192.0.2.99", 4500), [b"z" * 100] * 3)
        assert a.stats.send_errors == 4 and a.stats.sent_datagrams == 0
    finally:
        a.close()


# -- TunDevice -------------------------------------------------------------------


async def test_tun_reads_routed_packets_and_writes_to_the_stack(inside_netns: str) -> None:
    with TunDevice.open("tnd0", 1400) as tun:
        assert tun.mtu == 1400
        assert "mtu 1400" in ip("link", "show", "tnd0") and "UP" in ip("link", "show", "tnd0")
        ip("addr", "add", "192.0.2.1/24", "dev", "tnd0")
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        app.bind(("192.0.2.1", 5555))
        app.setblocking(False)
        try:
            for i in range(8):  # routed into the TUN: the daemon reads them
                app.sendto(b"out %d" % i, ("192.0.2.7", 6666))
            with trio.fail_after(5):
                await tun.wait_readable()
            # one wakeup drains them all (IPv6 link-local chatter may come along)
            batch = [bytes(p) for p in tun.read_batch(64) if p[0] >> 4 == 4]
            assert len(batch) == 8
            first = IP(batch[0])
            assert (first.src, first.dst, first[UDP].dport) == ("192.0.2.1", "192.0.2.7", 6666)
            assert [bytes(IP(p)[UDP].payload) for p in batch] == [b"out %d" % i for i in range(8)]

            reply = IP(src="192.0.2.7", dst="192.0.2.1") / UDP(sport=6666, dport=5555) / b"in"
            tun.write(bytes(reply))  # the daemon delivers: the kernel hands it to the app
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(app)
            assert app.recvfrom(100) == (b"in", ("192.0.2.7", 6666))

            tun.write(b"\x00not an IP packet")
            assert tun.stats.write_drops == 1 and tun.stats.written_packets == 1
        finally:
            app.close()
    assert "tnd0" not in ip("link")  # closing a non-persistent TUN removes it


@pytest.mark.parametrize("offload", [True, False])
async def test_tun_read_batch_into_fills_the_arena_back_to_back(
    inside_netns: str, offload: bool
) -> None:
    with TunDevice.open("tnd1", 1400, offload=offload) as tun:
        ip("addr", "add", "192.0.2.1/24", "dev", "tnd1")
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(3):
                app.sendto(b"into %d" % i * 100, ("192.0.2.7", 6666))
            with trio.fail_after(5):
                await tun.wait_readable()
            room = read_room(tun.tso, 5)  # free before each read (TSO: a cut super-packet)
            assert tun.tso == offload
            arena = memoryview(bytearray(room + 2 * 65536))  # room for three reads at most
            spans = tun.read_batch_into(arena, 64, 5)
            got = [bytes(arena[at : at + size]) for at, size in spans if arena[at] >> 4 == 4]
            assert [bytes(IP(p)[UDP].payload) for p in got] == [
                b"into %d" % i * 100 for i in range(3)
            ]
            assert all(len(p) == 20 + 8 + 600 for p in got)  # no virtio header in front
            # the gap (with TSO rounded up to 2-aligned starts: checksum words)
            align = (lambda at: at + (at & 1)) if offload else (lambda at: at)
            assert all(b[0] == align(a[0] + a[1] + 5) for a, b in itertools.pairwise(spans))
            assert tun.read_batch_into(arena, 64, 5) == []  # nothing queued: no exception
            for _ in range(3):
                app.sendto(b"x", ("192.0.2.7", 6666))
            await tun.wait_readable()
            assert len(tun.read_batch_into(arena, 2, 5)) == 2  # max_packets
            assert len(tun.read_batch_into(memoryview(bytearray(room - 1)), 64, 5)) == 0  # no room
        finally:
            app.close()


async def test_what_overflows_the_receive_buffer_is_counted_as_kernel_drops(
    inside_netns: str,
) -> None:
    """The IKE port's pump may leave datagrams to the kernel (tunneld.ikeshare): what
    overflows the socket's receive buffer shows in its status (SO_MEMINFO drops)."""
    a, b = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0, gro=False)
    try:
        b.refresh_stats()
        assert b.stats.kernel_drops == 0
        sent = 0
        while b.stats.kernel_drops == 0 and sent < 200_000:  # 4 MiB fill up, unread
            for _ in range(1000):
                a.sendto(bytes(1200), b.local_address)
            sent += 1000
            b.refresh_stats()
        assert 0 < b.stats.kernel_drops < sent
        got = 0
        while batch := b.recv_batch(64):
            got += len(batch)
        b.refresh_stats()
        assert got + b.stats.kernel_drops == a.stats.sent_datagrams == sent
    finally:
        a.close(), b.close()
