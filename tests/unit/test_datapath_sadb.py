"""The packet pumps over the real SADatabase (AES-GCM ESP) and in-memory devices.

Two gateways share a MemoryNetwork; the network's impairment hook records the
wire so that the ESP is checked independently with scapy's ESP implementation
(the oracle), and replays/forgeries are played back at gateway B.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator

import pytest
import trio
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation

from tunneld.datapath import DataPath, IkeDatagram
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.io import MemoryNetwork, MemoryTun
from tunneld.io.udp import Address

GW_A, GW_B = "192.0.2.1", "192.0.2.2"
NET_A, NET_B = "198.51.100.0/24", "203.0.113.0/24"
SPI_AB, SPI_BA = 0x0000A0B0, 0x0000B0A0
KEY_AB, SALT_AB = os.urandom(32), os.urandom(4)
KEY_BA, SALT_BA = os.urandom(32), os.urandom(4)


def inner(src: str, dst: str, payload: bytes) -> bytes:
    return bytes(IP(src=src, dst=dst, id=1) / UDP(sport=1000, dport=2000) / payload)


Sa = tuple[int, bytes, bytes]  # SPI, key, salt
AB: Sa = (SPI_AB, KEY_AB, SALT_AB)
BA: Sa = (SPI_BA, KEY_BA, SALT_BA)


def sadb(peer: str, local: str, remote: str, out: Sa, in_: Sa) -> SADatabase:
    db = SADatabase()
    db.add_tunnel("t", (peer, 4500), [local], [remote])
    db.add_inbound("t", InboundSA(*in_))
    db.install_next("t", OutboundSA(*out))
    db.promote("t")
    return db


class Side:
    def __init__(self, net: MemoryNetwork, addr: str, db: SADatabase, batch: int = 64) -> None:
        self.tun = MemoryTun(queue_limit=4096)
        self.udp = net.bind(addr, 4500, queue_limit=4096)
        self.inbox_send, self.inbox = trio.open_memory_channel[IkeDatagram](math.inf)
        self.path = DataPath(
            db, self.tun, {4500: self.udp}, self.inbox_send.send_nowait, batch=batch
        )
        self.db = db

    async def recv(self) -> bytes:
        with trio.fail_after(5):
            return await self.tun.host_recv()


Wire = list[tuple[bytes, Address, Address]]


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[Side, Side, MemoryNetwork, Wire]]:
    wire: Wire = []

    def record(data: bytes, src: Address, dst: Address) -> list[bytes]:
        wire.append((data, src, dst))
        return [data]

    net = MemoryNetwork(record)
    a = Side(
        net, GW_A, sadb(GW_B, NET_A, NET_B, (SPI_AB, KEY_AB, SALT_AB), (SPI_BA, KEY_BA, SALT_BA))
    )
    b = Side(
        net, GW_B, sadb(GW_A, NET_B, NET_A, (SPI_BA, KEY_BA, SALT_BA), (SPI_AB, KEY_AB, SALT_AB))
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(a.path.run)
        await nursery.start(b.path.run)
        yield a, b, net, wire
        nursery.cancel_scope.cancel()


async def test_esp_on_the_wire_decrypts_with_an_independent_implementation(
    gateways: tuple[Side, Side, MemoryNetwork, Wire],
) -> None:
    a, b, _, wire = gateways
    packet = inner("198.51.100.10", "203.0.113.10", b"hello through the tunnel")
    a.tun.host_send(packet)
    assert await b.recv() == packet
    ((esp_bytes, src, dst),) = wire
    assert (src, dst) == ((GW_A, 4500), (GW_B, 4500))
    oracle = SecurityAssociation(ESP, spi=SPI_AB, crypt_algo="AES-GCM", crypt_key=KEY_AB + SALT_AB)
    outer = IP(src=GW_A, dst=GW_B) / ESP(bytes(esp_bytes))
    # tunnel mode: scapy keeps the outer header and puts the inner packet under it
    assert bytes(oracle.decrypt(outer).payload) == packet
    assert b"hello" not in esp_bytes


async def test_many_packets_both_ways_in_order(
    gateways: tuple[Side, Side, MemoryNetwork, Wire],
) -> None:
    a, b, _, _ = gateways
    there = [inner("198.51.100.10", "203.0.113.10", b"%04d" % i * 50) for i in range(200)]
    back = [inner("203.0.113.10", "198.51.100.10", b"%04d" % i) for i in range(200)]
    for p in there:
        a.tun.host_send(p)
    for p in back:
        b.tun.host_send(p)
    assert [await b.recv() for _ in there] == there
    assert [await a.recv() for _ in back] == back
    assert a.path.outbound.packets == 200 and b.path.inbound.packets == 200
    assert a.path.outbound.batches < 200  # batched per wakeup
    assert b.db.snapshot()["drops"] == dict.fromkeys(b.db.snapshot()["drops"], 0)


async def test_replay_forgery_and_policy_drops_are_counted(
    gateways: tuple[Side, Side, MemoryNetwork, Wire],
) -> None:
    a, b, net, wire = gateways
    a.tun.host_send(inner("198.51.100.10", "203.0.113.10", b"one"))
    await b.recv()
    captured = wire[0][0]
    attacker = net.bind("192.0.2.66", 4500)
    attacker.sendto(captured, (GW_B, 4500))  # replay
    forged = bytearray(captured)
    forged[-1] ^= 1
    forged[4:8] = (99).to_bytes(4, "big")  # a fresh sequence number, broken ICV
    attacker.sendto(bytes(forged), (GW_B, 4500))
    # a site A host spoofing a source outside the local selectors never leaves A (B
    # would refuse it too: its inbound check, tests/unit/test_sadb.py)
    a.tun.host_send(inner("10.9.9.9", "203.0.113.10", b"spoofed"))
    a.tun.host_send(inner("198.51.100.10", "203.0.113.10", b"two"))
    assert await b.recv() == inner("198.51.100.10", "203.0.113.10", b"two")
    assert b.path.inbound.drops == {"replay": 1, "auth_failed": 1}
    assert b.tun.host_recv_nowait() == []
    assert a.path.outbound.drops == {"no_policy": 1}
    # nor does a destination outside every tunnel
    a.tun.host_send(inner("198.51.100.10", "192.0.2.200", b"nowhere"))
    with trio.fail_after(5):
        while a.path.outbound.drops["no_policy"] < 2:
            await trio.sleep(0.001)
    assert a.path.outbound.drops == {"no_policy": 2}


async def test_equal_size_runs_leave_together_and_arrive_intact(
    gateways: tuple[Side, Side, MemoryNetwork, Wire],
) -> None:
    """The send buffer holds one GSO run: equal sizes, a shorter packet closes it,
    a larger one opens the next (moved to the front of the buffer, overlapping)."""
    a, b, _, wire = gateways
    sizes = [100, 100, 100, 60, 100, 300, 300]  # UDP payloads; ESP adds the same to each
    packets = [inner("198.51.100.10", "203.0.113.10", bytes([n]) * s) for n, s in enumerate(sizes)]
    for p in packets:
        a.tun.host_send(p)
    assert [await b.recv() for _ in packets] == packets
    peer = (GW_B, 4500)
    assert a.udp.send_many_calls == [(peer, 4), (peer, 1), (peer, 2)]
    assert [len(data) for data, _, _ in wire] == [len(p) + 36 for p in packets]  # aligned sizes


@pytest.mark.parametrize(("payload", "runs"), [(1372, [45, 45, 10]), (100, [64, 64, 22])])
async def test_runs_respect_the_gso_limits(payload: int, runs: list[int]) -> None:
    """At most 64 datagrams and GSO_MAX_BYTES per run (1400-byte inner: 45 x 1436),
    whatever the batch size."""
    net = MemoryNetwork()
    a = Side(net, GW_A, sadb(GW_B, NET_A, NET_B, AB, BA), batch=256)
    b = Side(net, GW_B, sadb(GW_A, NET_B, NET_A, BA, AB), batch=256)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.path.run)
        await nursery.start(b.path.run)
        await _send_and_count_runs(a, b, payload, runs)
        nursery.cancel_scope.cancel()


async def _send_and_count_runs(a: Side, b: Side, payload: int, runs: list[int]) -> None:
    packets = [
        inner("198.51.100.10", "203.0.113.10", i.to_bytes(2, "big") * (payload // 2))
        for i in range(sum(runs))
    ]
    for p in packets:
        a.tun.host_send(p)
    assert [await b.recv() for _ in packets] == packets
    counts = [n for _, n in a.udp.send_many_calls]
    assert counts == runs
