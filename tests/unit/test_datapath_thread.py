"""The data thread (tunneld.datapath, "Two ways to run the pumps"): kernel UDP sockets on
the loopback and a TUN stand-in on a SOCK_SEQPACKET socket pair, no root needed.

The pumps run in a thread of their own; what they hand to trio (IKE datagrams, the SA
database's address-change reports) arrives in the trio thread; an exception in the
thread ends ``DataPath.run``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from tunneld.datapath import DataPath, IkeDatagram
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase, Tunnel
from tunneld.io.offload import Buffer
from tunneld.io.udp import Address, UdpSocket

NET_A, NET_B = "198.51.100.0/24", "203.0.113.0/24"
SPI_AB, SPI_BA = 0x0000A0B0, 0x0000B0A0
KEYS = {SPI_AB: (os.urandom(32), os.urandom(4)), SPI_BA: (os.urandom(32), os.urandom(4))}
_READ = 65535


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    total = 20 + len(payload)
    header = bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
    return header + socket.inet_aton(src) + socket.inet_aton(dst) + payload


class SeqpacketTun:
    """A TUN stand-in: one packet per SOCK_SEQPACKET message, non-blocking."""

    def __init__(self, fail: bool = False) -> None:
        self._dev, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._dev.setblocking(False)
        self.host.settimeout(5)
        self._fail = fail

    def fileno(self) -> int:
        return self._dev.fileno()

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._dev)

    def read_batch_into(
        self, arena: memoryview, max_packets: int, gap: int
    ) -> list[tuple[int, int]]:
        if self._fail:
            raise ValueError("broken device")
        spans: list[tuple[int, int]] = []
        at = 0
        while len(spans) < max_packets and at + _READ + gap <= len(arena):
            try:
                size = self._dev.recv_into(arena[at : at + _READ])
            except BlockingIOError:
                break
            spans.append((at, size))
            at += size + gap
        return spans

    def write(self, packet: Buffer) -> None:
        self._dev.send(packet)

    def write_batch(self, packets: Sequence[Buffer]) -> None:
        for packet in packets:
            self._dev.send(packet)

    def close(self) -> None:
        self._dev.close()
        self.host.close()


def sadb(peer: Address, local: str, remote: str, out: int, in_: int) -> SADatabase:
    db = SADatabase()
    db.add_tunnel("t", peer, [local], [remote])
    db.add_inbound("t", InboundSA(in_, *KEYS[in_]))
    db.install_next("t", OutboundSA(out, *KEYS[out]))
    db.promote("t")
    return db


class Side:
    def __init__(self, udp: UdpSocket, db: SADatabase, tun: SeqpacketTun) -> None:
        self.udp, self.db, self.tun = udp, db, tun
        self.ike: list[tuple[IkeDatagram, str]] = []  # with the thread it arrived in
        self.moves: list[tuple[str, Address, str]] = []  # sadb rule 7 reports, likewise
        db.on_move = self._on_move  # as the daemon does, before the data path runs
        self.path = DataPath(db, tun, {4500: udp}, self._on_ike, esp_port=4500, ike_port=500)

    def _on_ike(self, dgram: IkeDatagram) -> None:
        self.ike.append((dgram, threading.current_thread().name))

    def _on_move(self, tunnel: Tunnel, source: Address) -> None:
        self.moves.append((tunnel.name, source, threading.current_thread().name))


Pair = tuple[Side, Side]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    ua, ub = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0)
    a = Side(ua, sadb(ub.local_address, NET_A, NET_B, SPI_AB, SPI_BA), SeqpacketTun())
    b = Side(ub, sadb(ua.local_address, NET_B, NET_A, SPI_BA, SPI_AB), SeqpacketTun())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.path.run)
            await nursery.start(b.path.run)
            yield a, b
            nursery.cancel_scope.cancel()
    finally:
        for side in (a, b):
            side.udp.close()
            side.tun.close()


def _data_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunneld-data"]


async def test_packets_cross_both_ways_in_the_data_thread(pair: Pair) -> None:
    a, b = pair
    assert a.path.threaded and b.path.threaded
    assert len(_data_threads()) == 2
    there = [ipv4("198.51.100.10", "203.0.113.10", b"%04d" % i * 30) for i in range(100)]
    back = [ipv4("203.0.113.10", "198.51.100.10", b"%04d" % i) for i in range(100)]
    # From worker threads: a trio task step holds the lock, the pumps wait for it.
    await trio.to_thread.run_sync(lambda: [a.tun.host.send(p) for p in there])
    got = await trio.to_thread.run_sync(lambda: [b.tun.host.recv(_READ) for _ in there])
    assert got == there
    await trio.to_thread.run_sync(lambda: [b.tun.host.send(p) for p in back])
    got = await trio.to_thread.run_sync(lambda: [a.tun.host.recv(_READ) for _ in back])
    assert got == back
    assert a.path.outbound.packets == 100 and b.path.inbound.packets == 100
    assert b.db.snapshot()["drops"] == dict.fromkeys(b.db.snapshot()["drops"], 0)


async def test_the_thread_ends_with_run() -> None:
    udp = UdpSocket.bind("127.0.0.1", 0)
    tun = SeqpacketTun()
    try:
        path = DataPath(SADatabase(), tun, {4500: udp}, None, esp_port=4500, ike_port=500)
        async with trio.open_nursery() as nursery:
            await nursery.start(path.run)
            assert len(_data_threads()) == 1
            nursery.cancel_scope.cancel()
        assert _data_threads() == []
    finally:
        udp.close()
        tun.close()


async def test_ike_and_address_changes_reach_the_trio_thread(pair: Pair) -> None:
    a, b = pair
    main = threading.current_thread().name
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"\0\0\0\0" + b"I" * 40, a.udp.local_address)
        with trio.fail_after(5):
            while not a.ike:
                await trio.sleep(0.01)
        ((dgram, thread),) = a.ike
        assert dgram.data == b"I" * 40 and dgram.remote[1] == sender.getsockname()[1]
        assert thread == main
    finally:
        sender.close()
    # ESP from B, seen by A as coming from a new address: A's peer is elsewhere now.
    a.db.set_peer("t", ("127.0.0.1", 9))
    b.tun.host.send(ipv4("203.0.113.10", "198.51.100.10", b"moved"))
    with trio.fail_after(5):
        while not a.moves:
            await trio.sleep(0.01)
    assert a.moves == [("t", b.udp.local_address, main)]


async def test_an_exception_in_the_data_thread_ends_run() -> None:
    udp = UdpSocket.bind("127.0.0.1", 0)
    tun = SeqpacketTun(fail=True)
    try:
        path = DataPath(SADatabase(), tun, {4500: udp}, None, esp_port=4500, ike_port=500)
        tun.host.send(ipv4("198.51.100.10", "203.0.113.10", b"x"))
        with pytest.raises(ValueError, match="broken device"):
            with trio.fail_after(5):
                await path.run()
        assert _data_threads() == []
    finally:
        udp.close()
        tun.close()


# -- busy polling ([gateway] busy_poll_us) -------------------------------------------------


def _thread_cpu_ns(thread: threading.Thread) -> int:
    """CPU time the kernel has charged to ``thread`` so far (schedstat: run time, ns)."""
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
        return int(f.read().split()[0])


async def test_busy_polling_catches_the_next_packet_then_sleeps() -> None:
    """A packet that follows within the window is found by polling (``busy_polls``);
    once the window has passed without traffic the thread sleeps again (no CPU)."""
    ua, ub = UdpSocket.bind("127.0.0.1", 0), UdpSocket.bind("127.0.0.1", 0)
    tun_a, tun_b = SeqpacketTun(), SeqpacketTun()
    db_a = sadb(ub.local_address, NET_A, NET_B, SPI_AB, SPI_BA)
    db_b = sadb(ua.local_address, NET_B, NET_A, SPI_BA, SPI_AB)
    window_s = 0.3
    a = DataPath(db_a, tun_a, {4500: ua}, None, esp_port=4500, busy_poll_us=int(window_s * 1e6))
    b = DataPath(db_b, tun_b, {4500: ub}, None, esp_port=4500)
    packets = [ipv4("198.51.100.10", "203.0.113.10", b"%04d" % i) for i in range(5)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            (thread_a,) = _data_threads()
            await nursery.start(b.run)
            for packet in packets:  # each well within the window after the one before
                tun_a.host.send(packet)
                got = await trio.to_thread.run_sync(tun_b.host.recv, _READ)
                assert got == packet
            assert a.busy_polls == len(packets) - 1
            assert a.stats()["busy_polls"] == len(packets) - 1
            await trio.sleep(window_s + 0.1)  # the window has passed: asleep again
            before = _thread_cpu_ns(thread_a)
            await trio.sleep(0.3)
            assert _thread_cpu_ns(thread_a) - before < 10_000_000  # < 10 ms of 300
            nursery.cancel_scope.cancel()
    finally:
        for dev in (ua, ub, tun_a, tun_b):
            dev.close()


def test_busy_poll_must_not_be_negative() -> None:
    udp, tun = UdpSocket.bind("127.0.0.1", 0), SeqpacketTun()
    try:
        with pytest.raises(ValueError, match="busy_poll_us"):
            DataPath(SADatabase(), tun, {4500: udp}, None, busy_poll_us=-1)
    finally:
        udp.close()
        tun.close()
