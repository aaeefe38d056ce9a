"""Hostile networks against real daemons on the virtual clock (issue #9).

The attacker sits on the WAN and sends spoofed datagrams: IKE_SA_INIT from
the peer's own address (random ports), one now and then or thousands a
second. None of it may cost a DH before a cookie, grow state past the caps,
keep a tunnel down, or touch what status says about the real peer. The
namespace versions with real packets and throughput are in
tests/netns/test_hostile_netns.py.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ike.policy import COOKIE_SOURCE_THRESHOLD, HALF_OPEN_TIMEOUT
from tests.helpers.daemon_memory import Pair, Site, children, start_site, wait_for_children
from tests.tools.flood import init_datagrams
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions, write_site_configs
from tunneld.datapath import IkeDatagram
from tunneld.io.udp import MemoryNetwork

GW_A_IKE = (GWA_UNDERLAY, 500)


def spoofed_inits(seed: int = 1) -> Iterator[tuple[bytes, tuple[str, int]]]:
    """IKE_SA_INIT requests with fresh SPIs, 'from' gw-b's address, random ports."""
    rng = random.Random(seed)
    for data in init_datagrams(rng):
        yield data, (GWB_UNDERLAY, rng.randrange(1024, 65536))


async def flood(network: MemoryNetwork, count: int, per_ms: int = 2, seed: int = 1) -> None:
    """``count`` spoofed requests to gw-a at ``per_ms`` per millisecond (2,000/s)."""
    source = spoofed_inits(seed)
    for i in range(count):
        data, src = next(source)
        network.transmit(data, src, GW_A_IKE)
        if i % per_ms == per_ms - 1:
            await trio.sleep(0.001)


def front_door(site: Site) -> dict[str, object]:
    status: dict[str, object] = site.daemon.status()["front_door"]
    return status


def peer_of(site: Site) -> dict[str, object]:
    (peer,) = site.daemon.status()["peers"]
    result: dict[str, object] = peer
    return result


async def test_a_spoofed_flood_gets_cookies_and_costs_no_state(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await wait_for_children(pair.a, pair.b)
    (before,) = children(pair.a)
    with caplog.at_level(logging.INFO):
        await flood(pair.network, 4000)  # 2 s at 2,000/s
        door = front_door(pair.a)
        decisions = door["decisions"]
        assert isinstance(decisions, dict)
        # Responder sessions (each a DH) only below the per-source threshold; then cookies.
        assert decisions["admitted"] == COOKIE_SOURCE_THRESHOLD
        assert decisions["cookie requested"] == 4000 - COOKIE_SOURCE_THRESHOLD
        assert door["half_open"] == COOKIE_SOURCE_THRESHOLD
        assert pair.a.daemon.dispatch.cookies_sent == 4000 - COOKIE_SOURCE_THRESHOLD
        peer = peer_of(pair.a)
        assert peer["half_open_ike_sas"] == COOKIE_SOURCE_THRESHOLD
        assert peer["state"] == "established" and peer["last_error"] is None
        assert len(peer["ike_sas"]) == 1  # half-open ones are counted, not listed
        (after,) = children(pair.a)
        assert after["spi_in"] == before["spi_in"]
        await trio.sleep(HALF_OPEN_TIMEOUT + 1)  # the half-open sessions expire
    assert front_door(pair.a)["half_open"] == 0 and peer_of(pair.a)["half_open_ike_sas"] == 0
    assert peer_of(pair.a)["last_error"] is None
    assert "half-open IKE SA timed out" in str(peer_of(pair.a)["last_unauthenticated_failure"])
    lines = [r for r in caplog.records if r.name.startswith("tunneld")]
    assert len(lines) < 20, [r.getMessage() for r in lines]  # no line per spoofed datagram


async def test_a_burst_faster_than_the_peer_task_cannot_pass_the_threshold(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """300 spoofed requests land in one dispatcher step, before the peer task has made a
    single session: the front door counts each admission at once (it used to count the
    session, so up to a peer inbox full of requests got a DH each without a cookie)."""
    await wait_for_children(pair.a, pair.b)
    source, highest = spoofed_inits(seed=3), 0
    for _ in range(5):
        for _ in range(300):  # one dispatcher step: no checkpoint, the peer task waits
            data, src = next(source)
            pair.a.daemon._dispatch(IkeDatagram(data, src, GW_A_IKE))
        highest = max(highest, int(front_door(pair.a)["half_open"]))  # type: ignore[call-overload]
        await trio.sleep(0.001)  # now the peer task makes its sessions
    decisions = front_door(pair.a)["decisions"]
    assert isinstance(decisions, dict)
    assert decisions["admitted"] == COOKIE_SOURCE_THRESHOLD, decisions
    assert highest == COOKIE_SOURCE_THRESHOLD
    assert peer_of(pair.a)["half_open_ike_sas"] == COOKIE_SOURCE_THRESHOLD


async def test_a_new_gateway_gets_in_during_a_flood(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """gw-b restarts while its own address is being spoofed: its cookie gets it in."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions(auto_b="start"))
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        a, _ = await start_site(nursery, conf_a, network)
        b, cancel_b = await start_site(nursery, conf_b, network)
        await wait_for_children(a, b)
        cancel_b.cancel()  # gw-b dies without a word
        await trio.sleep(0.1)
        nursery.start_soon(flood, network, 20_000)  # 10 s of flood
        await trio.sleep(1.0)
        assert front_door(a)["half_open"] == COOKIE_SOURCE_THRESHOLD
        start = trio.current_time()
        b2, _ = await start_site(nursery, conf_b, network)
        with trio.fail_after(5):
            while not (children(b2) and children(a) and peer_of(a)["state"] == "established"):
                await trio.sleep(0.01)
        elapsed = trio.current_time() - start
        assert elapsed < 5, elapsed
        decisions = front_door(a)["decisions"]
        assert isinstance(decisions, dict) and decisions["admitted with a valid cookie"] >= 1
        nursery.cancel_scope.cancel()


async def test_a_spoofed_init_every_20s_does_not_keep_the_tunnel_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Off-path suppression: a half-open session never counts as a live IKE SA, so the
    auto = start side re-initiates after the peer restarted, attack or not."""
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    network = MemoryNetwork()
    source = spoofed_inits(seed=7)

    async def one_every_20s() -> None:
        while True:
            data, src = next(source)
            network.transmit(data, src, GW_A_IKE)
            await trio.sleep(20)

    async with trio.open_nursery() as nursery:
        b, cancel_b = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        nursery.start_soon(one_every_20s)
        cancel_b.cancel()  # gw-b restarts: it forgot everything
        await trio.sleep(1)
        b2, _ = await start_site(nursery, conf_b, network)
        restarted = trio.current_time()
        # gw-a notices with DPD (dpd_delay 30 s, ~41 s of retransmissions at most)
        # and initiates again at once; the spoofed half-open session is no obstacle.
        with trio.fail_after(120):
            while not children(b2):
                await trio.sleep(0.1)
        assert trio.current_time() - restarted < 90
        assert peer_of(a)["half_open_ike_sas"] in (0, 1)
        nursery.cancel_scope.cancel()


async def test_a_bug_in_one_peer_task_resets_that_peer_only(
    pair: Pair, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await wait_for_children(pair.a, pair.b)
    (peer,) = pair.a.daemon.peers.values()
    original = peer._watch
    failed = []

    def broken(now: float) -> None:
        if not failed:
            failed.append(now)
            raise RuntimeError("injected bug")
        original(now)

    peer._watch = broken  # type: ignore[method-assign]
    peer.children.watch_wanted = lambda: True  # type: ignore[method-assign]  # looked at each second
    with caplog.at_level(logging.ERROR, logger="tunneld.daemon"):
        await trio.sleep(2)
    assert failed and pair.a.daemon.dispatch.peer_task_resets == 1
    (record,) = [r for r in caplog.records if "peer task failed" in r.getMessage()]
    assert record.peer == "gw-b" and record.exc_info is not None  # type: ignore[attr-defined]
    # The daemon and its control socket go on; the peer comes back by itself.
    assert (await pair.a.daemon._control({"cmd": "status"}))["ok"]
    await wait_for_children(pair.a, pair.b, timeout=60)
    assert peer_of(pair.a)["state"] == "established"
