"""peer.py rule 4: the daemon's watcher wakes a peer to look at its Child SA counters
only when they moved (a hub's idle spokes sleep on), and then within a second."""

from __future__ import annotations

import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, wait_for_children
from tests.helpers.packets import udp_packet


async def test_an_idle_peer_is_not_woken_and_traffic_is_looked_at(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    (peer,) = pair.b.daemon.peers.values()
    looks: list[float] = []
    original = peer._watch

    def counted(now: float) -> None:
        looks.append(now)
        original(now)

    peer._watch = counted  # type: ignore[method-assign]
    await trio.sleep(1.5)  # a look at the Child SA's first counters may be pending
    looks.clear()
    await trio.sleep(10)
    assert looks == []  # no traffic: ten seconds without a look
    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"wake"))
    with trio.fail_after(5):
        await tun_b.host_recv()
    sent = trio.current_time()
    await trio.sleep(3)
    assert len(looks) == 1 and sent < looks[0] <= sent + 1.0  # once, within the second
    assert peer.children.records and not peer.children.watch_wanted()
