"""The in-memory twins of the TUN and UDP devices (tunneld.io)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from tunneld.io import MemoryNetwork, MemoryTun
from tunneld.io.udp import Address

# -- MemoryTun ---------------------------------------------------------------------


async def test_tun_host_to_daemon_batches_in_order() -> None:
    tun = MemoryTun(queue_limit=100)
    for i in range(10):
        tun.host_send(bytes([0x45, i]))
    await tun.wait_readable()
    assert tun.read_batch(4) == [bytes([0x45, i]) for i in range(4)]
    assert tun.read_batch(64) == [bytes([0x45, i]) for i in range(4, 10)]
    assert tun.read_batch(64) == []
    assert tun.stats.read_packets == 10


async def test_tun_wait_readable_blocks_until_host_sends() -> None:
    tun = MemoryTun()
    woke = trio.Event()

    async def reader() -> None:
        await tun.wait_readable()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        tun.host_send(b"\x45pkt")
        await woke.wait()
    assert tun.read_batch() == [b"\x45pkt"]


async def test_tun_daemon_to_host() -> None:
    tun = MemoryTun()
    tun.write(memoryview(b"\x45abc"))
    tun.write(b"\x45def")
    assert await tun.host_recv() == b"\x45abc"
    assert tun.host_recv_nowait() == [b"\x45def"]
    assert tun.stats.written_packets == 2


async def test_tun_queue_limits_drop_and_count() -> None:
    tun = MemoryTun(queue_limit=2)
    for _ in range(3):
        tun.host_send(b"\x45")
        tun.write(b"\x45")
    assert tun.host_drops == 1
    assert tun.stats.write_drops == 1
    assert len(tun.read_batch()) == 2
    assert len(tun.host_recv_nowait()) == 2


async def test_tun_close_wakes_waiters() -> None:
    tun = MemoryTun()
    woken: list[type[BaseException]] = []

    async def waiter() -> None:
        try:
            await tun.wait_readable()
        except trio.ClosedResourceError as exc:
            woken.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        tun.close()
    assert woken == [trio.ClosedResourceError]
    with pytest.raises(trio.ClosedResourceError):
        tun.write(b"\x45")


# -- MemoryNetwork / MemoryUdp -----------------------------------------------------


async def test_udp_delivery_and_batches() -> None:
    net = MemoryNetwork()
    a = net.bind("192.0.2.1", 4500)
    b = net.bind("192.0.2.2", 4500)
    a.sendto(b"one", ("192.0.2.2", 4500))
    a.send_many(("192.0.2.2", 4500), [b"two", bytearray(b"three")])
    await b.wait_readable()
    got = b.recv_batch(64)
    src = ("192.0.2.1", 4500)
    assert got == [(b"one", src), (b"two", src), (b"three", src)]
    assert a.send_many_calls == [(("192.0.2.2", 4500), 2)]
    assert a.stats.sent_datagrams == 3 and b.stats.recv_datagrams == 3
    assert net.stats.delivered == 3


async def test_udp_ipv6_addresses_are_normalised() -> None:
    net = MemoryNetwork()
    a = net.bind("2001:db8::1", 4500)
    b = net.bind("2001:0db8:0::2", 4500)
    assert b.local_address == ("2001:db8::2", 4500)
    a.sendto(b"x", ("2001:db8:0:0::2", 4500))
    assert b.recv_batch() == [(b"x", ("2001:db8::1", 4500))]


async def test_udp_unreachable_queue_full_and_rebind() -> None:
    net = MemoryNetwork()
    a = net.bind("192.0.2.1", 0)
    b = net.bind("192.0.2.2", 500, queue_limit=1)
    a.sendto(b"lost", ("192.0.2.9", 500))
    a.sendto(b"kept", ("192.0.2.2", 500))
    a.sendto(b"full", ("192.0.2.2", 500))
    assert (net.stats.unreachable, net.stats.queue_drops, net.stats.delivered) == (1, 1, 1)
    with pytest.raises(OSError) as info:
        net.bind("192.0.2.2", 500)
    assert info.value.errno == errno.EADDRINUSE
    b.close()
    net.bind("192.0.2.2", 500)  # the address is free again
    with pytest.raises(ValueError):
        net.bind("0.0.0.0", 500)


async def test_udp_impairment_hook_loses_duplicates_and_corrupts() -> None:
    seen: list[tuple[bytes, Address, Address]] = []

    def impair(data: bytes, src: Address, dst: Address) -> list[bytes]:
        seen.append((data, src, dst))
        if data == b"drop":
            return []
        if data == b"dup":
            return [data, data]
        if data == b"flip":
            return [b"FLIP"]
        return [data]

    net = MemoryNetwork(impair)
    a = net.bind("192.0.2.1", 4500)
    b = net.bind("192.0.2.2", 4500)
    for payload in (b"drop", b"dup", b"flip", b"ok"):
        a.sendto(payload, ("192.0.2.2", 4500))
    assert [d for d, _ in b.recv_batch()] == [b"dup", b"dup", b"FLIP", b"ok"]
    assert net.stats.impaired_drops == 1
    assert seen[0] == (b"drop", ("192.0.2.1", 4500), ("192.0.2.2", 4500))


async def test_udp_closed_endpoint_refuses_io() -> None:
    net = MemoryNetwork()
    a = net.bind("192.0.2.1", 4500)
    a.close()
    with pytest.raises(trio.ClosedResourceError):
        a.sendto(b"x", ("192.0.2.2", 4500))
    with pytest.raises(trio.ClosedResourceError):
        await a.wait_readable()
