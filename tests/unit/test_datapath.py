"""The trio packet pumps (tunneld.datapath) over in-memory TUN and UDP devices.

A small fake SA database stands in for the real one here (ESP framing without
crypto: SPI | seq | inner), so that batching, grouping, demultiplexing and
drop counting are tested on their own; test_datapath_sadb.py runs the same
pumps over the real SADatabase.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import pytest
import trio
import trio.testing

from tests.helpers import packets
from tunneld.datapath import IKE_NO_HANDLER, DataPath, IkeDatagram
from tunneld.dataplane.drops import DropReason, EspDrop
from tunneld.io import MemoryNetwork, MemoryTun, MemoryUdp
from tunneld.io.udp import Address, Buffer

GW_A, GW_B, GW_C = "192.0.2.1", "192.0.2.2", "192.0.2.3"
HOST_A, HOST_B, HOST_C = "198.51.100.10", "203.0.113.10", "203.0.113.200"
IKE_HEADER = bytes(28)  # the pumps do not parse IKE: any 28+ bytes will do
MARKER = b"\x00\x00\x00\x00"
FAKE_ICV = bytes(16)  # with the 8-byte "IV", the fake ESP is as long as real ESP


def ipv4(src: str, dst: str, payload: bytes = b"payload") -> bytes:
    """A minimal IPv4 packet (only the fake SADB reads it)."""
    return packets.ipv4(src, dst, payload)


async def recv(tun: MemoryTun) -> bytes:
    with trio.fail_after(5):
        return await tun.host_recv()


async def receive(inbox: trio.MemoryReceiveChannel[IkeDatagram]) -> IkeDatagram:
    with trio.fail_after(5):
        return await inbox.receive()


class FakeSadb:
    """SPI | seq | zero IV | inner | zero ICV.

    Refuses unknown SPIs, replays and destinations without a peer. The pumps
    call the buffer variants (``*_into``), which frame the same bytes.
    """

    def __init__(self, out_spi: int, in_spi: int, peers: dict[str, Address]) -> None:
        self.out_spi, self.in_spi, self.seq = out_spi, in_spi, 0
        self.peers = {ipaddress.IPv4Address(k).packed: v for k, v in peers.items()}
        self.seen: set[int] = set()

    def encapsulate(self, inner: bytes) -> tuple[bytes, Address]:
        peer = self.peers.get(inner[16:20])
        if peer is None:
            raise EspDrop(DropReason.NO_POLICY)
        self.seq += 1
        return struct.pack("!II8x", self.out_spi, self.seq) + inner + FAKE_ICV, peer

    def decapsulate(self, esp: Buffer) -> bytes:
        spi, seq = struct.unpack("!II", esp[:8])
        if spi != self.in_spi:
            raise EspDrop(DropReason.UNKNOWN_SPI)
        if seq in self.seen:
            raise EspDrop(DropReason.REPLAY)
        self.seen.add(seq)
        return bytes(esp[16:-16])

    def encapsulate_batch(
        self,
        plain: memoryview,
        spans: Iterable[tuple[int, int]],
        out: memoryview,
        max_count: int,
        max_bytes: int,
    ) -> tuple[list[tuple[Address, int, int, int]], list[DropReason]]:
        """Runs of consecutive equal-size packets to one peer (no byte limit here)."""
        runs: list[tuple[Address, int, int, int]] = []
        dropped, end = [], 0
        for start, size in spans:
            try:
                esp, peer = self.encapsulate(bytes(plain[start : start + size]))
            except EspDrop as drop:
                dropped.append(drop.reason)
                continue
            out[end : end + len(esp)] = esp
            last = runs[-1] if runs else None
            if (
                last
                and last[0] == peer
                and last[3] == len(esp)
                and last[2] - last[1] < max_count * len(esp)
            ):
                runs[-1] = (peer, last[1], end + len(esp), len(esp))
            else:
                runs.append((peer, end, end + len(esp), len(esp)))
            end += len(esp)
        return runs, dropped

    def decapsulate_batch(
        self,
        packets: Sequence[Buffer],
        out: memoryview,
        sources: Sequence[tuple[str, int]] | None = None,
    ) -> tuple[list[memoryview], list[DropReason]]:
        inner, dropped, end = [], [], 0
        for esp in packets:
            try:
                packet = self.decapsulate(esp)
            except EspDrop as drop:
                dropped.append(drop.reason)
                continue
            out[end : end + len(packet)] = packet
            inner.append(out[end : end + len(packet)])
            end += len(packet)
        return inner, dropped


class Gateway:
    def __init__(
        self,
        net: MemoryNetwork,
        addr: str,
        sadb: FakeSadb,
        on_ike: Callable[[IkeDatagram], None] | None = None,
    ) -> None:
        self.tun = MemoryTun(name=f"tun-{addr}")
        self.nat_t = net.bind(addr, 4500)
        self.ike = net.bind(addr, 500)
        # the IKE handler: by default it queues what it is given, for the test to read
        self.inbox_send, self.inbox = trio.open_memory_channel[IkeDatagram](math.inf)
        self.path = DataPath(
            sadb, self.tun, {4500: self.nat_t, 500: self.ike}, on_ike or self.inbox_send.send_nowait
        )


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Gateway, Gateway, MemoryNetwork]]:
    net = MemoryNetwork()
    a = Gateway(net, GW_A, FakeSadb(0x1000, 0x2000, {HOST_B: (GW_B, 4500)}))
    b = Gateway(net, GW_B, FakeSadb(0x2000, 0x1000, {HOST_A: (GW_A, 4500)}))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.path.run)
        await nursery.start(b.path.run)
        yield a, b, net
        nursery.cancel_scope.cancel()


async def test_packets_cross_both_ways(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, b, _ = pair
    a.tun.host_send(ipv4(HOST_A, HOST_B, b"ping"))
    assert await recv(b.tun) == ipv4(HOST_A, HOST_B, b"ping")
    b.tun.host_send(ipv4(HOST_B, HOST_A, b"pong"))
    assert await recv(a.tun) == ipv4(HOST_B, HOST_A, b"pong")
    assert a.path.outbound.packets == 1 and a.path.inbound.packets == 1
    assert b.path.stats()["udp"]["4500"]["recv_datagrams"] == 1


async def test_a_batch_is_read_at_once_and_sent_in_one_call(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, b, _ = pair
    packets = [ipv4(HOST_A, HOST_B, b"%03d" % i) for i in range(40)]
    for p in packets:  # all queued before the pump wakes up
        a.tun.host_send(p)
    got = [await recv(b.tun) for _ in packets]
    assert got == packets
    assert (a.path.outbound.batches, a.path.outbound.largest_batch) == (1, 40)
    assert a.nat_t.send_many_calls == [((GW_B, 4500), 40)]
    assert b.path.inbound.batches == 1


async def test_consecutive_packets_are_grouped_per_destination() -> None:
    net = MemoryNetwork()
    peers = {HOST_B: (GW_B, 4500), HOST_C: (GW_C, 4500)}
    a = Gateway(net, GW_A, FakeSadb(0x1000, 0x2000, peers))
    net.bind(GW_B, 4500), net.bind(GW_C, 4500)
    order = [HOST_B, HOST_B, HOST_C, HOST_C, HOST_C, HOST_B, "192.0.2.99"]
    for dst in order:
        a.tun.host_send(ipv4(HOST_A, dst))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.path.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert a.nat_t.send_many_calls == [((GW_B, 4500), 2), ((GW_C, 4500), 3), ((GW_B, 4500), 1)]
    assert a.path.outbound.drops == {DropReason.NO_POLICY.value: 1}


async def test_demux_ike_keepalive_and_esp_drops(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, b, net = pair
    peer = net.bind("192.0.2.50", 4500)
    ike = IKE_HEADER + b"ike body"
    peer.sendto(MARKER + ike, (GW_B, 4500))  # IKE on NAT-T: marker stripped
    peer.sendto(b"\xff", (GW_B, 4500))  # NAT keepalive
    peer.sendto(struct.pack("!II", 0x9999, 1) + bytes(40), (GW_B, 4500))  # unknown SPI
    peer.sendto(b"\x01\x02", (GW_B, 4500))  # too short for anything
    a.tun.host_send(ipv4(HOST_A, HOST_B))
    await recv(b.tun)
    assert await receive(b.inbox) == IkeDatagram(ike, ("192.0.2.50", 4500), (GW_B, 4500))
    assert b.path.inbound.keepalives == 1
    assert b.path.inbound.ike_datagrams == 1
    assert b.path.inbound.drops == {
        DropReason.UNKNOWN_SPI.value: 1,
        DropReason.MALFORMED.value: 1,
    }


async def test_port_500_is_all_ike(pair: tuple[Gateway, Gateway, MemoryNetwork]) -> None:
    _, b, net = pair
    peer = net.bind("192.0.2.50", 500)
    peer.sendto(IKE_HEADER + b"init", (GW_B, 500))
    got = await receive(b.inbox)
    assert got == IkeDatagram(IKE_HEADER + b"init", ("192.0.2.50", 500), (GW_B, 500))


async def test_replayed_esp_is_dropped_and_counted(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, b, net = pair
    captured: list[bytes] = []
    net.impair = lambda data, src, dst: captured.append(data) or [data]
    a.tun.host_send(ipv4(HOST_A, HOST_B))
    await recv(b.tun)
    net.impair = None
    attacker = net.bind("192.0.2.66", 4500)
    attacker.sendto(captured[0], (GW_B, 4500))
    a.tun.host_send(ipv4(HOST_A, HOST_B, b"after"))
    assert await recv(b.tun) == ipv4(HOST_A, HOST_B, b"after")
    assert b.path.inbound.drops == {DropReason.REPLAY.value: 1}
    assert b.tun.host_recv_nowait() == []


async def test_ike_datagrams_reach_the_handler_as_they_are_read_and_esp_flows(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, b, net = pair
    peer = net.bind("192.0.2.50", 4500)
    for i in range(6):
        peer.sendto(MARKER + IKE_HEADER + bytes([i]), (GW_B, 4500))
    a.tun.host_send(ipv4(HOST_A, HOST_B))
    await recv(b.tun)
    assert [(await receive(b.inbox)).data[-1] for _ in range(6)] == [0, 1, 2, 3, 4, 5]
    assert b.path.inbound.drops == {} and b.path.inbound.ike_datagrams == 6


async def test_without_an_ike_handler_ike_is_counted_and_dropped() -> None:
    net = MemoryNetwork()
    udp = net.bind(GW_B, 4500)
    path = DataPath(FakeSadb(0x2000, 0x1000, {}), MemoryTun("t"), {4500: udp}, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(path.run)
        net.bind("192.0.2.50", 4500).sendto(MARKER + IKE_HEADER, (GW_B, 4500))
        with trio.fail_after(5):
            while not path.inbound.drops:
                await trio.sleep(0.001)
        assert path.inbound.drops == {IKE_NO_HANDLER: 1}
        nursery.cancel_scope.cancel()


async def test_send_ike_adds_marker_only_on_nat_t(
    pair: tuple[Gateway, Gateway, MemoryNetwork],
) -> None:
    a, _, net = pair
    peer4500 = net.bind("192.0.2.50", 4500)
    peer500 = net.bind("192.0.2.50", 500)
    a.path.send_ike(b"msg", 4500, ("192.0.2.50", 4500))
    a.path.send_ike(b"msg", 500, ("192.0.2.50", 500))
    a.path.send_keepalive(("192.0.2.50", 4500))
    assert peer4500.recv_batch() == [(MARKER + b"msg", (GW_A, 4500)), (b"\xff", (GW_A, 4500))]
    assert peer500.recv_batch() == [(b"msg", (GW_A, 500))]


async def test_without_an_esp_socket_construction_fails() -> None:
    net = MemoryNetwork()
    udp: MemoryUdp = net.bind(GW_A, 500)
    with pytest.raises(ValueError, match="ESP port"):
        DataPath(FakeSadb(1, 2, {}), MemoryTun(), {500: udp}, None)


# -- the IKE port's share of the thread (tunneld.ikeshare) --------------------------------

IKE_COST = 0.0001  # virtual seconds of thread the handler takes per datagram (a cookie)
FLOOD_SECONDS = 1.0
FLOOD_PER_MS = 16  # 16,000/s: more than the handler can take (10,000/s with the thread)


async def flood_with_costly_ike(clock: trio.testing.MockClock, esp: bool) -> tuple[int, int, int]:
    """A flood at gw-b's IKE port for FLOOD_SECONDS, each datagram costing IKE_COST of the
    thread (the handler moves the virtual clock), with or without ESP from gw-a every
    millisecond: (IKE datagrams handled, ESP packets sent, inner packets delivered)."""
    net = MemoryNetwork()
    handled = 0

    def costly(_dgram: IkeDatagram) -> None:
        nonlocal handled
        clock.jump(IKE_COST)
        handled += 1

    a = Gateway(net, GW_A, FakeSadb(0x1000, 0x2000, {HOST_B: (GW_B, 4500)}))
    b = Gateway(net, GW_B, FakeSadb(0x2000, 0x1000, {HOST_A: (GW_A, 4500)}), costly)
    attacker = net.bind("192.0.2.99", 500)
    sent = delivered = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(a.path.run)
        await nursery.start(b.path.run)
        end = trio.current_time() + FLOOD_SECONDS
        while trio.current_time() < end:
            for _ in range(FLOOD_PER_MS):
                attacker.sendto(IKE_HEADER, (GW_B, 500))
            if esp:
                a.tun.host_send(ipv4(HOST_A, HOST_B))
                sent += 1
            await trio.sleep(0.001)
            delivered += len(b.tun.host_recv_nowait())
        nursery.cancel_scope.cancel()
    return handled, sent, delivered


async def test_while_esp_flows_a_flood_at_the_ike_port_gets_a_share_of_the_thread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled, sent, delivered = await flood_with_costly_ike(autojump_clock, esp=True)
    share = handled * IKE_COST / FLOOD_SECONDS
    assert 0.1 < share <= 0.2 + 0.02, share  # SHARE, plus the burst and one batch
    assert delivered >= sent - 2 and sent > 0.5 * FLOOD_SECONDS / 0.001  # ESP went first


async def test_with_no_esp_a_flood_at_the_ike_port_is_read_flat_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled, _, _ = await flood_with_costly_ike(autojump_clock, esp=False)
    assert handled * IKE_COST / FLOOD_SECONDS > 0.9  # every moment the thread had
