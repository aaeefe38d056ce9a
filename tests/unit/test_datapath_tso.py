"""The outbound pump with TSO: one super-packet read from the TUN leaves as ESP
packets of one segment each, in GSO runs, and arrives as valid TCP segments.

Over the real SADatabase and in-memory devices (the fixtures of
test_datapath_sadb.py); the segments are checked with scapy (fields and
checksums, tests/unit/test_io_segment.py), the ESP with scapy's ESP.
"""

from __future__ import annotations

import os

import trio
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation

from tests.helpers.tso import MSS, check_segments, gso, super_packet
from tunneld.datapath import DataPath
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.io import MemoryNetwork, MemoryTun, MemoryUdp
from tunneld.io.udp import Address

GW_A, GW_B = "192.0.2.1", "192.0.2.2"
SPI_AB, KEY_AB, SALT_AB = 0xA0B0, os.urandom(32), os.urandom(4)
SPI_BA, KEY_BA, SALT_BA = 0xB0A0, os.urandom(32), os.urandom(4)


def gateway(net: MemoryNetwork, addr: str, peer: str, local: str, remote: str,
            out: tuple[int, bytes, bytes], in_: tuple[int, bytes, bytes],
            ) -> tuple[MemoryTun, MemoryUdp, DataPath]:  # fmt: skip
    db = SADatabase()
    db.add_tunnel("t", (peer, 4500), [local], [remote])
    db.add_inbound("t", InboundSA(*in_))
    db.install_next("t", OutboundSA(*out))
    db.promote("t")
    tun, udp = MemoryTun(queue_limit=4096), net.bind(addr, 4500, queue_limit=4096)
    return tun, udp, DataPath(db, tun, {4500: udp}, None)


async def test_a_super_packet_leaves_as_one_esp_packet_per_segment_in_gso_runs() -> None:
    wire: list[tuple[bytes, Address, Address]] = []

    def record(data: bytes, src: Address, dst: Address) -> list[bytes]:
        wire.append((data, src, dst))
        return [data]

    net = MemoryNetwork(record)
    ab, ba = (SPI_AB, KEY_AB, SALT_AB), (SPI_BA, KEY_BA, SALT_BA)
    tun_a, udp_a, path_a = gateway(net, GW_A, GW_B, "198.51.100.0/24", "203.0.113.0/24", ab, ba)
    tun_b, _, path_b = gateway(net, GW_B, GW_A, "203.0.113.0/24", "198.51.100.0/24", ba, ab)
    total = 47 * MSS + 100
    packet = super_packet(total, "PA")
    async with trio.open_nursery() as nursery:
        await nursery.start(path_a.run)
        await nursery.start(path_b.run)
        tun_a.host_send_offload(gso(packet, MSS), packet)
        with trio.fail_after(5):
            got = [await tun_b.host_recv() for _ in range(48)]
        nursery.cancel_scope.cancel()
    check_segments(got, total, MSS, "PA")
    # 45 sealed 1,400-byte segments (1,436 bytes each) fill one GSO send; the rest next
    assert udp_a.send_many_calls == [((GW_B, 4500), 45), ((GW_B, 4500), 3)]
    assert [len(data) for data, _, _ in wire] == [1436] * 47 + [len(got[-1]) + 36]
    oracle = SecurityAssociation(ESP, spi=SPI_AB, crypt_algo="AES-GCM", crypt_key=KEY_AB + SALT_AB)
    opened = [bytes(oracle.decrypt(IP(src=GW_A, dst=GW_B) / ESP(d)).payload) for d, _, _ in wire]
    assert opened == got
    assert tun_a.stats.gso_reads == 1 and tun_a.stats.read_packets == 1
    assert path_a.outbound.packets == 48 and path_a.outbound.drops == {}
