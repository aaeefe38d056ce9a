"""A peer ``address`` that is a DNS name (peer.py rule 11), on the virtual clock.

Each daemon gets its own hosts table (``MemoryDevices.hosts``, the in-memory
twin of the system resolver): the name is resolved when the peer task starts
and before every initiation; a failure is logged once, retried, and never
ends anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Site, run_daemon
from tests.helpers.packets import udp_packet
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork
from tunneld.peer import RETRY_MAX

NAME_A, NAME_B = "gw-a.example.org", "gw-b.example.org"


def by_name(tmp_path: Path) -> tuple[Path, Path]:
    """Both gateways start, each names the other by DNS name instead of its address."""
    conf_a, conf_b = write_site_configs(
        tmp_path, "dns", SiteOptions(auto_a="start", auto_b="start")
    )
    for conf, address, name in ((conf_a, GWB_UNDERLAY, NAME_B), (conf_b, GWA_UNDERLAY, NAME_A)):
        text = conf.read_text()
        assert f'address = "{address}"' in text
        conf.write_text(text.replace(f'address = "{address}"', f'address = "{name}"'))
    return conf_a, conf_b


async def start(
    nursery: trio.Nursery, conf: Path, network: MemoryNetwork, hosts: dict[str, str]
) -> Site:
    config = load_config(conf)
    devices = MemoryDevices(network, hosts)
    daemon = Daemon(config, devices=devices)
    await run_daemon(nursery, daemon, trio.CancelScope())
    return Site(daemon, devices, config.gateway.control_socket)


def peer(site: Site) -> dict[str, object]:
    (only,) = site.daemon.status()["peers"]
    return only


async def until_up(*sites: Site, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not all(peer(s)["child_sas"] for s in sites):
            await trio.sleep(0.05)


async def test_both_sides_start_with_dns_names(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = by_name(tmp_path)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, conf_a, network, {NAME_B: GWB_UNDERLAY})
        b = await start(nursery, conf_b, network, {NAME_A: GWA_UNDERLAY})
        await until_up(a, b, timeout=10)
        assert peer(a)["remote"] == f"{NAME_B}:500" and peer(a)["resolved"] == GWB_UNDERLAY
        assert peer(b)["remote"] == f"{NAME_A}:500" and peer(b)["resolved"] == GWA_UNDERLAY
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"by name"))
        with trio.fail_after(2):
            assert (await tun_b.host_recv()).endswith(b"by name")
        await trio.sleep(30)  # simultaneous initiations settle on one IKE SA each
        for site in (a, b):  # (a deleted duplicate lingers, closed, for late retransmissions)
            live = [i for i in peer(site)["ike_sas"] if i["state"] != "closed"]  # type: ignore[attr-defined]
            assert len(live) == 1
        nursery.cancel_scope.cancel()


async def test_a_name_that_does_not_resolve_is_logged_once_and_retried(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = by_name(tmp_path)
    network = MemoryNetwork()
    hosts_a: dict[str, str] = {}  # gw-a cannot resolve gw-b's name yet (gw-b can gw-a's)
    async with trio.open_nursery() as nursery:
        b = await start(nursery, conf_b, network, {NAME_A: GWA_UNDERLAY})
        a = await start(nursery, conf_a, network, hosts_a)
        await trio.sleep(30)  # several retries
        failures = [
            r for r in caplog.records if r.getMessage().startswith("cannot resolve the peer's")
        ]
        assert [r.__dict__["peer"] for r in failures] == ["gw-b"]  # once, not once per retry
        assert str(peer(a)["last_error"]).startswith(f"cannot resolve {NAME_B}")
        assert peer(a)["state"] == "down" and peer(a)["resolved"] is None

        hosts_a[NAME_B] = GWB_UNDERLAY  # the name appears: gw-a initiates at its next retry
        await until_up(a, timeout=RETRY_MAX + 5)
        assert peer(a)["resolved"] == GWB_UNDERLAY
        assert peer(b)["state"] == "established"
        nursery.cancel_scope.cancel()


async def test_the_name_is_resolved_again_before_every_initiation(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = by_name(tmp_path)
    text = conf_b.read_text().replace(f'address = "{NAME_A}"', f'address = "{GWA_UNDERLAY}"')
    conf_b.write_text(text.replace('auto = "start"', 'auto = "listen"'))
    network = MemoryNetwork()
    hosts_a = {NAME_B: "192.0.2.77"}  # wrong at first: nobody there
    async with trio.open_nursery() as nursery:
        b = await start(nursery, conf_b, network, {})
        a = await start(nursery, conf_a, network, hosts_a)
        await trio.sleep(5)
        assert peer(a)["resolved"] == "192.0.2.77" and not peer(a)["child_sas"]
        hosts_a[NAME_B] = GWB_UNDERLAY  # the DNS record changes
        await until_up(a, b, timeout=60)  # the failed IKE_SA_INIT gives up, then a retry
        assert peer(a)["resolved"] == GWB_UNDERLAY
        nursery.cancel_scope.cancel()
