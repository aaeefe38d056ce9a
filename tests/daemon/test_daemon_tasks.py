"""Nothing accumulates across rekeys: trio tasks (status ``tasks``), SAs, IKE SPI routes.

The same check runs against real daemons in tests/netns/test_rekey_netns.py
(300 forced rekeys, RSS and task count); here it is exact, on the virtual clock.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, Site, children, wait_for_children

REKEYS = 40


def generation(site: Site) -> int:
    (child,) = children(site)
    return int(child["generation"])  # type: ignore[call-overload]


async def rekey_and_wait(pair: Pair, *, ike: bool) -> None:
    """One forced rekey from gw-a; back when both sides hold exactly the new SAs."""
    peer_a, peer_b = pair.a.daemon.peers["gw-b"], pair.b.daemon.peers["gw-a"]
    before = (generation(pair.a), peer_a.status.ike_rekeys)
    assert (await pair.a.daemon._control({"cmd": "rekey", "peer": "gw-b", "ike": ike}))["ok"]
    with trio.fail_after(5):
        while True:
            await trio.sleep(0.01)
            a, b = children(pair.a), children(pair.b)
            if len(a) != 1 or len(b) != 1 or not b[0]["outbound_active"]:
                continue
            now = (generation(pair.a), peer_a.status.ike_rekeys)
            if now == (before[0] + (not ike), before[1] + ike):
                assert peer_b.status.ike_rekeys == now[1]
                return


async def test_tasks_sas_and_spi_routes_stay_flat_across_rekeys(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_children(pair.a, pair.b)
    await rekey_and_wait(pair, ike=False)  # warm up: every code path ran once
    await rekey_and_wait(pair, ike=True)
    await trio.sleep(200)  # delete delays and lingering IKE SAs are over
    start = [(s.daemon.status()["tasks"], len(s.daemon._by_spi)) for s in (pair.a, pair.b)]
    for i in range(REKEYS):
        await rekey_and_wait(pair, ike=i % 10 == 9)
    await trio.sleep(200)
    end = [(s.daemon.status()["tasks"], len(s.daemon._by_spi)) for s in (pair.a, pair.b)]
    assert end == start
    assert start[0][0] > 5  # the daemon's own tasks are counted
    for site in (pair.a, pair.b):
        (tunnel,) = site.daemon.sadb.tunnels
        (peer,) = site.daemon.status()["peers"]
        assert len(tunnel.inbound_spis) == 1 and peer["retiring_spis"] == []
        assert len(peer["ike_sas"]) == 1
