"""Two named Child SAs per peer through two in-memory daemons on the virtual clock.

Site A is 198.51.100.0/24 and site B 203.0.113.0/24; child "low" joins the
lower halves, child "high" the upper ones (tools.lab.TWO_CHILDREN). The first
comes up in IKE_AUTH, the second with CREATE_CHILD_SA; each has its own SADB
tunnel, routes, lifetime and rekeys; a deleted one is created again.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Pair, Site, children, established, start_site
from tests.helpers.packets import udp_packet
from tools.lab import SITE_A_HALVES, SITE_B_HALVES, TWO_CHILDREN, SiteOptions, write_site_configs
from tunneld.io.udp import Address, MemoryNetwork

# (site A host, site B host) per child
HOSTS = {"low": ("198.51.100.10", "203.0.113.10"), "high": ("198.51.100.200", "203.0.113.200")}
TWO = SiteOptions(children=TWO_CHILDREN)
BOTH_START = SiteOptions(children=TWO_CHILDREN, auto_b="start")
# child "low" rekeyed about every minute, "high" about every three
TIMED = SiteOptions(
    children=(
        (*TWO_CHILDREN[0][:3], 'child_lifetime = "60s"\n'),
        (*TWO_CHILDREN[1][:3], 'child_lifetime = "180s"\n'),
    ),
    extra_peer="dpd_delay = 0\n",
)


def by_child(site: Site) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for child in children(site):
        out.setdefault(child["child"], []).append(child)  # type: ignore[arg-type]
    return out


def active(site: Site, name: str) -> dict[str, Any] | None:
    return next((c for c in by_child(site).get(name, []) if c["outbound_active"]), None)


async def wait_for_both(pair: Pair, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not all(active(s, n) for s in (pair.a, pair.b) for n in HOSTS):
            await trio.sleep(0.05)


async def exchange(pair: Pair, n: int, tag: bytes) -> dict[str, tuple[int, int]]:
    """n packets each way per child; per child, how many arrived at B and at A."""
    tun_a, tun_b = pair.a.devices.tun, pair.b.devices.tun
    assert tun_a is not None and tun_b is not None
    for name, (host_a, host_b) in HOSTS.items():
        for i in range(n):
            tun_a.host_send(udp_packet(host_a, host_b, tag + b" %s a->b %d" % (name.encode(), i)))
            tun_b.host_send(udp_packet(host_b, host_a, tag + b" %s b->a %d" % (name.encode(), i)))
    await trio.sleep(0.5)
    got_b, got_a = tun_b.host_recv_nowait(), tun_a.host_recv_nowait()
    counts = {}
    for name, (host_a, host_b) in HOSTS.items():
        at_b = sum(1 for p in got_b if p[16:20] == ipaddress.IPv4Address(host_b).packed)
        at_a = sum(1 for p in got_a if p[16:20] == ipaddress.IPv4Address(host_a).packed)
        counts[name] = (at_b, at_a)
    return counts


@pytest.mark.parametrize("pair", [TWO, BOTH_START], indirect=True, ids=["a-starts", "both-start"])
async def test_two_children_come_up_with_their_own_tunnels_and_routes(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_both(pair)
    await trio.sleep(5)  # past the responder's grace: nobody made a second copy
    sides = ((pair.a, SITE_A_HALVES, SITE_B_HALVES), (pair.b, SITE_B_HALVES, SITE_A_HALVES))
    for site, local, remote in sides:
        found = by_child(site)
        assert sorted(found) == ["high", "low"]
        assert all(len(sas) == 1 for sas in found.values()), found
        for name, lo, re in (("low", local[0], remote[0]), ("high", local[1], remote[1])):
            (child,) = found[name]
            assert (child["local_ts"], child["remote_ts"]) == ([lo], [re])
        routes = {str(n) for n in site.devices.route_table.installed()}
        assert routes == set(remote)
    peer = "gw-b"
    assert {t.name for t in pair.a.daemon.sadb.tunnels} == {f"{peer}/low", f"{peer}/high"}
    a, b = by_child(pair.a), by_child(pair.b)
    for name in HOSTS:  # the SPIs cross over, child by child
        assert a[name][0]["spi_in"] == b[name][0]["spi_out"]
    assert await exchange(pair, 20, b"x") == {"low": (20, 20), "high": (20, 20)}
    for site in (pair.a, pair.b):
        for name, (child,) in by_child(site).items():
            assert (child["in"]["packets"], child["out"]["packets"]) == (20, 20), name
    (ike,) = established(pair.a.daemon)  # both-start: the duplicate IKE SA was deleted
    assert {c["child"] for c in ike["child_sas"]} == {"low", "high"}


@pytest.mark.parametrize("pair", [TIMED], indirect=True)
async def test_each_child_is_rekeyed_on_its_own_lifetime_without_loss(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_both(pair)
    start = trio.current_time()
    sent = lost = 0
    seen: dict[str, set[str]] = {"low": set(), "high": set()}
    while trio.current_time() - start < 400:
        counts = await exchange(pair, 3, b"t")
        for at_b, at_a in counts.values():
            sent += 6
            lost += 6 - at_b - at_a
        for name in HOSTS:
            child = active(pair.a, name)
            if child is not None:
                seen[name].add(child["spi_in"])
        if 100 < trio.current_time() - start < 101:  # low rekeyed already, high not yet
            gens = {n: [c["generation"] for c in sas] for n, sas in by_child(pair.a).items()}
            assert max(gens["low"]) >= 1 and gens["high"] == [0], gens
        await trio.sleep(0.5)
    assert lost == 0 and sent > 1500
    # 400 s: "low" (54-60 s) at least 6 rekeys, "high" (162-180 s) 2
    assert len(seen["low"]) >= 7 and 3 <= len(seen["high"]) <= 4, seen
    peer = pair.a.daemon.status()["peers"][0]
    assert peer["counters"]["ike_sas_established"] == 1


@pytest.mark.parametrize("deleter", ["a", "b"])
@pytest.mark.parametrize("pair", [TWO], indirect=True)
async def test_a_deleted_child_is_created_again_the_other_untouched(
    pair: Pair, deleter: str, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for_both(pair)
    low_before = {active(s, "low")["spi_in"] for s in (pair.a, pair.b)}  # type: ignore[index]
    site = pair.a if deleter == "a" else pair.b
    old = active(site, "high")
    assert old is not None
    peer = site.daemon.peers["gw-b" if deleter == "a" else "gw-a"]
    assert peer.delete_child(int(old["spi_in"], 16))
    with trio.fail_after(10):
        while True:
            await trio.sleep(0.05)
            new = [active(s, "high") for s in (pair.a, pair.b)]
            if all(new) and old["spi_in"] not in {c["spi_in"] for c in new if c}:
                break
    assert {active(s, "low")["spi_in"] for s in (pair.a, pair.b)} == low_before  # type: ignore[index]
    assert all(len(by_child(s)["high"]) == 1 for s in (pair.a, pair.b))
    assert await exchange(pair, 10, b"after") == {"low": (10, 10), "high": (10, 10)}
    assert pair.a.daemon.status()["peers"][0]["counters"]["ike_sas_established"] == 1


class RebindingNat(MemoryNetwork):
    """gw-a's source ports shifted by ``shift`` (a NAT); replies to a port of an old
    mapping are lost."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 20000

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        if src[0] == "192.0.2.1":
            src = (src[0], src[1] + self.shift)
        elif dst[0] == "192.0.2.1":
            if dst[1] - self.shift not in (500, 4500):
                return  # the old mapping is gone
            dst = (dst[0], dst[1] - self.shift)
        super().transmit(data, src, dst)


async def test_an_address_change_seen_on_one_child_moves_both(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Authenticated ESP of child "low" from a new port moves "high" as well (and the IKE
    SA): gw-b's traffic on "high" reaches gw-a at once, before any "high" ESP came back."""
    conf_a, conf_b = write_site_configs(tmp_path, "move", TWO)
    conf_b.write_text(conf_b.read_text().replace('address = "192.0.2.1"\n', ""))
    network = RebindingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        pair = Pair(a, b, network, nursery, trio.CancelScope(), trio.CancelScope())
        await wait_for_both(pair)
        assert await exchange(pair, 5, b"before") == {"low": (5, 5), "high": (5, 5)}
        network.shift = 30000  # the NAT rebinds
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        tun_a.host_send(udp_packet(*HOSTS["low"], b"low first"))  # only "low" ESP from a
        with trio.fail_after(1):
            assert (await tun_b.host_recv()).endswith(b"low first")
        await trio.sleep(0.1)
        peers = {t.name: t.peer for t in b.daemon.sadb.tunnels}
        assert peers == {"gw-a/low": ("192.0.2.1", 34500), "gw-a/high": ("192.0.2.1", 34500)}
        tun_b.host_send(udp_packet(HOSTS["high"][1], HOSTS["high"][0], b"high back"))
        with trio.fail_after(1):
            assert (await tun_a.host_recv()).endswith(b"high back")
        nursery.cancel_scope.cancel()
