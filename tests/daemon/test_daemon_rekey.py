"""Rekeying through two in-memory daemons on the virtual clock: make-before-break
with traffic flowing, forced rekeys, volume limits, liveness."""

from __future__ import annotations

import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, children, wait_for_children
from tests.helpers.packets import udp_packet


async def pump_traffic(pair: Pair, n: int, tag: bytes) -> tuple[list[bytes], list[bytes]]:
    """n packets each way; returns what arrived at B and at A."""
    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    for i in range(n):
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", tag + b" a->b %d" % i))
        tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", tag + b" b->a %d" % i))
    await trio.sleep(0.5)
    return tun_b.host_recv_nowait(), tun_a.host_recv_nowait()


def spis(site: object) -> set[str]:
    return {c["spi_in"] for c in children(site)}  # type: ignore[arg-type]


async def test_forced_child_rekey_switches_spis_without_loss(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    before_a, before_b = spis(pair.a), spis(pair.b)
    got_b, got_a = await pump_traffic(pair, 50, b"before")
    assert len(got_b) == len(got_a) == 50
    assert (await pair.a.daemon._control({"cmd": "rekey", "peer": "gw-b"}))["ok"]
    # traffic while the CREATE_CHILD_SA exchange and the DELETE run
    got_b, got_a = await pump_traffic(pair, 50, b"during")
    assert len(got_b) == len(got_a) == 50
    with trio.fail_after(10):
        while spis(pair.a) & before_a or spis(pair.b) & before_b or not spis(pair.a):
            await trio.sleep(0.05)
    (child_a,) = children(pair.a)
    (child_b,) = children(pair.b)
    assert child_a["generation"] == 1 and child_b["generation"] == 1
    assert child_a["spi_in"] == child_b["spi_out"] and child_a["spi_out"] == child_b["spi_in"]
    got_b, got_a = await pump_traffic(pair, 50, b"after")
    assert len(got_b) == len(got_a) == 50
    assert children(pair.a)[0]["out"]["packets"] == 50  # the new SA carried the last batch
    # the old inbound SAs are kept for the delete delay, then dropped
    peer_a = pair.a.daemon.status()["peers"][0]
    assert set(peer_a["retiring_spis"]) == before_a
    await trio.sleep(6)
    assert pair.a.daemon.status()["peers"][0]["retiring_spis"] == []
    assert all(pair.a.daemon.sadb.inbound(int(s, 16)) is None for s in before_a)
