"""A hub and its spokes in one process (issue 10): the responder picks the peer
entry by the identity the initiator proves, not by its address. In-memory
devices on trio's virtual clock; the configurations: tests/helpers/hubs.py.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ike.policy import COOKIE_THRESHOLD, HALF_OPEN_TIMEOUT
from tests.helpers.daemon_memory import Site, start_site
from tests.helpers.hubs import (
    HUB_UNDERLAY,
    HubFiles,
    spoke_id,
    spoke_site,
    spoke_underlay,
    write_hub_configs,
)
from tests.helpers.packets import udp_packet
from tests.tools.flood import init_datagrams
from tunneld.cli import format_status
from tunneld.io.udp import MemoryNetwork


@asynccontextmanager
async def hub_and_spokes(
    files: HubFiles, start: int | None = None
) -> AsyncIterator[tuple[Site, list[Site]]]:
    """The hub, then the first ``start`` spokes (all by default)."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub, _ = await start_site(nursery, files.hub, network)
        spokes = [
            (await start_site(nursery, path, network))[0]
            for path in files.spokes[: start if start is not None else len(files.spokes)]
        ]
        yield hub, spokes
        nursery.cancel_scope.cancel()


def peers(site: Site) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in site.daemon.status()["peers"]}


def up(site: Site) -> set[str]:
    return {
        name for name, p in peers(site).items() if p["state"] == "established" and p["child_sas"]
    }


async def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def reception(site: Site) -> dict[str, Any]:
    status: dict[str, Any] = site.daemon.status()["reception"]
    return status


async def test_three_listen_only_entries_each_found_by_identity(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "entries")
    async with hub_and_spokes(files) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s1", "s2", "s3"})
        t0 = trio.current_time()
        for k, spoke in enumerate(spokes, 1):
            assert up(spoke) == {"hub"}
            (child,) = peers(hub)[f"s{k}"]["child_sas"]
            assert child["remote_ts"] == [spoke_site(k)]
        # nothing was filed under another spoke's entry (the symptom)
        for p in peers(hub).values():
            assert p["last_unauthenticated_failure"] is None
            assert p["counters"]["half_open_ended"] == 0
        assert reception(hub)["identity_unknown"] == 0
        assert trio.current_time() - t0 < 1


async def test_spoke_traffic_reaches_its_own_entry(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "entries")
    async with hub_and_spokes(files) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s1", "s2", "s3"})
        tun_hub = hub.devices.tun
        assert tun_hub is not None
        for k, spoke in enumerate(spokes, 1):
            host = str(ipaddress.ip_network(spoke_site(k))[10])
            tun_hub.host_send(udp_packet("198.51.100.10", host, b"to s%d" % k))
            assert spoke.devices.tun is not None
            with trio.fail_after(5):
                got = await spoke.devices.tun.host_recv()
            assert got.endswith(b"to s%d" % k)


async def test_an_unknown_identity_is_refused_and_counted_apart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.directory")
    files = write_hub_configs(tmp_path, "entries")
    text = files.hub.read_text()
    cut = text.index('[[peer]]\nname = "s3"')  # the hub forgets s3
    files.hub.write_text(text[:cut].replace('"203.0.113.48/28"', '"203.0.113.64/28"'))
    async with hub_and_spokes(files) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s1", "s2"})
        await wait_until(lambda: reception(hub)["identity_unknown"] >= 2)
        assert up(spokes[2]) == set()
        seen = reception(hub)
        assert "no peer entry serves identity 's3.branch.example.org'" in (
            seen["last_unauthenticated_failure"] or ""
        )
        assert seen["half_open_ended"] >= 2
        for p in peers(hub).values():  # s3's attempts are nobody's business but the reception's
            assert p["last_unauthenticated_failure"] is None
        logged = [r for r in caplog.records if r.name == "tunneld.directory"]
        assert logged and logged[0].msg.startswith("IKE_AUTH refused: no peer entry serves")
        assert vars(logged[0])["identity"] == spoke_id(3)  # a field: the formatters escape it
        assert len(logged) < seen["half_open_ended"]  # rate-limited


async def test_an_address_narrows_the_entry(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "entries")
    text = files.hub.read_text()
    wrong = f'name = "s1"\naddress = "{spoke_underlay(2)}"'  # s1's entry serves s2's address
    right = f'name = "s3"\naddress = "{spoke_underlay(3)}"'
    files.hub.write_text(text.replace('name = "s1"', wrong).replace('name = "s3"', right))
    async with hub_and_spokes(files) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s2", "s3"})
        await wait_until(lambda: reception(hub)["identity_unknown"] >= 1)
        assert up(spokes[0]) == set()


async def test_one_pattern_entry_serves_every_spoke(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern")
    async with hub_and_spokes(files) as (hub, _):
        names = {f"branches/{spoke_id(k)}" for k in (1, 2, 3)}
        await wait_until(lambda: up(hub) == names)
        for k in (1, 2, 3):
            (child,) = peers(hub)[f"branches/{spoke_id(k)}"]["child_sas"]
            assert child["remote_ts"] == [spoke_site(k)]  # narrowed from the spoke's TSi
        assert hub.devices.route_table.installed() == {
            ipaddress.ip_network(spoke_site(k)) for k in (1, 2, 3)
        }
        (entry,) = reception(hub)["hubs"]
        assert entry["spokes"] == 3 and entry["spokes_refused"] == 0
        text = format_status(hub.daemon.status())
        assert "hub branches (*.branch.example.org): 3/64 spokes, 0 refused" in text
        assert f"peer branches/{spoke_id(2)} [established]" in text


async def test_the_spokes_table_fixes_a_spokes_subnets(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern", table=True)
    text = files.hub.read_text()  # s1 may have only the upper half of what it proposes
    files.hub.write_text(text.replace('= ["203.0.113.16/28"]', '= ["203.0.113.24/29"]'))
    async with hub_and_spokes(files) as (hub, _):
        await wait_until(lambda: len(up(hub)) == 3)
        (child,) = peers(hub)[f"branches/{spoke_id(1)}"]["child_sas"]
        assert child["remote_ts"] == ["203.0.113.24/29"]


async def test_max_spokes_bounds_the_hub(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern", max_spokes=2)
    async with hub_and_spokes(files, start=2) as (hub, spokes):
        await wait_until(lambda: len(up(hub)) == 2)
        network = spokes[0].devices.network
        async with trio.open_nursery() as nursery:
            third, _ = await start_site(nursery, files.spokes[2], network)
            await wait_until(lambda: reception(hub)["hubs"][0]["spokes_refused"] >= 2)
            assert up(third) == set() and len(peers(hub)) == 2
            assert "max_spokes = 2" in reception(hub)["last_unauthenticated_failure"]
            nursery.cancel_scope.cancel()


async def test_a_second_spoke_claiming_the_same_subnets_is_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern", spokes=2)
    s2 = files.spokes[1].read_text()  # s2 claims s1's site
    s2 = s2.replace(f'local_subnets = ["{spoke_site(2)}"]', f'local_subnets = ["{spoke_site(1)}"]')
    files.spokes[1].write_text(
        s2.replace(f'"198.51.100.0/24", "{spoke_site(1)}"', '"198.51.100.0/24"')
    )
    async with hub_and_spokes(files, start=1) as (hub, spokes):
        await wait_until(lambda: len(up(hub)) == 1)
        async with trio.open_nursery() as nursery:
            second, _ = await start_site(nursery, files.spokes[1], spokes[0].devices.network)
            await wait_until(lambda: reception(hub)["hubs"][0]["spokes_refused"] >= 1)
            why = reception(hub)["last_unauthenticated_failure"]
            assert "claims 203.0.113.16/28, which overlaps 203.0.113.16/28" in why
            assert up(second) == set() and up(hub) == {f"branches/{spoke_id(1)}"}
            nursery.cancel_scope.cancel()


async def test_listen_only_psk_entries_each_prove_their_own_key(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The entry is found by IDi, then AUTH must verify with *that* entry's PSK: s3
    holding s1's key (and claiming its own identity) gets nowhere."""
    files = write_hub_configs(tmp_path, "entries", psk=True)
    s3 = files.spokes[2].read_text()
    files.spokes[2].write_text(s3.replace(str(tmp_path / "s3.psk"), str(tmp_path / "s1.psk")))
    async with hub_and_spokes(files) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s1", "s2"})
        await wait_until(lambda: reception(hub)["half_open_ended"] >= 2)
        assert up(spokes[2]) == set()
        assert "shared-key AUTH does not verify" in reception(hub)["last_unauthenticated_failure"]
        assert reception(hub)["identity_unknown"] == 0  # found, then not proven


async def test_a_dn_pattern_serves_spokes_by_certificate_subject(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern")
    files.hub.write_text(
        files.hub.read_text().replace('id = "*.branch.example.org"', 'id = "CN=*"')
    )
    for k, path in enumerate(files.spokes, 1):  # each spoke sends its subject DN (CN=sK)
        path.write_text(path.read_text().replace(f'id = "{spoke_id(k)}"', f'id = "CN=s{k}"'))
    async with hub_and_spokes(files) as (hub, _):
        await wait_until(lambda: up(hub) == {f"branches/cn=s{k}" for k in (1, 2, 3)})
        assert peers(hub)["branches/cn=s2"]["ike_sas"][0]["remote_id"] == "CN=s2"


async def test_an_idle_spoke_makes_room_for_a_new_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern", max_spokes=2)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub, _ = await start_site(nursery, files.hub, network)
        s1, _ = await start_site(nursery, files.spokes[0], network)
        await start_site(nursery, files.spokes[1], network)
        await wait_until(lambda: len(up(hub)) == 2)
        s1.daemon.stop()  # DELETE: s1's spoke on the hub goes idle
        gone = f"branches/{spoke_id(1)}"
        await wait_until(lambda: peers(hub)[gone]["state"] == "down")
        await start_site(nursery, files.spokes[2], network)
        await wait_until(lambda: up(hub) == {f"branches/{spoke_id(k)}" for k in (2, 3)})
        assert gone not in peers(hub) and reception(hub)["hubs"][0]["spokes_refused"] == 0
        nursery.cancel_scope.cancel()


async def test_a_spoke_held_down_is_refused_until_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """`tunneld down ENTRY/IDENTITY` holds a spoke like any peer: its new IKE SAs,
    which reach the hub through the reception, are refused and counted."""
    files = write_hub_configs(tmp_path, "pattern")
    async with hub_and_spokes(files) as (hub, _):
        name = f"branches/{spoke_id(1)}"
        await wait_until(lambda: len(up(hub)) == 3)
        answer = await hub.daemon._control({"cmd": "down", "peer": name})
        assert answer == {"ok": True}
        await wait_until(lambda: reception(hub)["held_refused"] >= 2)
        assert name not in up(hub) and peers(hub)[name]["counters"]["refused_initiations"] >= 2
        await hub.daemon._control({"cmd": "up", "peer": name})
        await wait_until(lambda: name in up(hub))


async def test_spoofed_initiations_wait_at_the_reception_counted_and_capped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The hub cannot tell a spoke's IKE_SA_INIT from a spoofed one before IKE_AUTH:
    they wait at the reception, under the front door's threshold and caps, and touch
    no spoke's status; the third spoke still gets in (with a cookie) meanwhile."""
    files = write_hub_configs(tmp_path, "entries")
    rng = random.Random(5)
    async with hub_and_spokes(files, start=2) as (hub, spokes):
        await wait_until(lambda: up(hub) == {"s1", "s2"})
        network = spokes[0].devices.network
        for i, data in enumerate(init_datagrams(rng)):  # 2,000/s from random addresses
            if i == 2000:
                break
            src = (f"192.0.2.{rng.randrange(100, 250)}", rng.randrange(1024, 65536))
            network.transmit(data, src, (HUB_UNDERLAY, 500))
            if i % 2:
                await trio.sleep(0.001)
        door = hub.daemon.status()["front_door"]
        assert door["half_open"] == COOKIE_THRESHOLD == reception(hub)["half_open_ike_sas"]
        assert door["decisions"]["cookie requested"] == 2000 - COOKIE_THRESHOLD
        async with trio.open_nursery() as nursery:
            await start_site(nursery, files.spokes[2], network)
            await wait_until(lambda: up(hub) == {"s1", "s2", "s3"}, timeout=10)
            nursery.cancel_scope.cancel()
        assert hub.daemon.status()["front_door"]["decisions"]["admitted with a valid cookie"] >= 1
        await trio.sleep(HALF_OPEN_TIMEOUT + 1)
        assert reception(hub)["half_open_ike_sas"] == 0
        assert "timed out" in reception(hub)["last_unauthenticated_failure"]
        for p in peers(hub).values():
            assert p["last_unauthenticated_failure"] is None and p["half_open_ike_sas"] == 0
