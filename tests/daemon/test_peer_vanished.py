"""A peer that keeps losing its IKE SA without telling us (issue #10).

Measured against Libreswan 4.10 as initiator (it could not install its Child
SA on this kernel): it dropped each IKE SA silently and initiated a new one
without INITIAL_CONTACT, and tunneld held up to three IKE SAs with it, all
``established``. Here gw-b is a tunneld daemon started again and again with
INITIAL_CONTACT switched off, each instance cancelled without a DELETE.

Rule 5b of peer.py keeps an older IKE SA for a make-before-break
reauthentication (the peer deletes it itself) for at most REAUTH_GRACE
seconds. A peer that initiates yet again while that is pending cannot be
reauthenticating the SA that was superseded first: it has forgotten it. So
gw-a holds at most one established IKE SA plus at most one superseded one
(status says which), and without traffic DPD ends what is left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from ike.entropy import DeterministicEntropy
from ike.sessionconfig import SessionConfig
from tests.helpers.daemon_memory import established, run_daemon
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions, write_site_configs
from tunneld import daemon as daemon_module
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork
from tunneld.peer import REAUTH_GRACE


def without_initial_contact(monkeypatch: pytest.MonkeyPatch) -> None:
    real: Callable[..., SessionConfig] = daemon_module.session_config

    def patched(*args: object, **kwargs: object) -> SessionConfig:
        return dataclasses.replace(real(*args, **kwargs), send_initial_contact=False)

    monkeypatch.setattr(daemon_module, "session_config", patched)


def superseded(daemon: Daemon) -> list[dict[str, object]]:
    (peer,) = daemon.status()["peers"]
    return [ike for ike in peer["ike_sas"] if ike.get("superseded")]


async def test_a_peer_that_reinitiates_without_initial_contact_leaves_one_ike_sa(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_initial_contact(monkeypatch)
    conf_a, conf_b = write_site_configs(
        tmp_path, "mem", SiteOptions(auto_a="listen", auto_b="start")
    )
    network = MemoryNetwork()
    devices_a = MemoryDevices(network)
    a = Daemon(load_config(conf_a), devices=devices_a, entropy=DeterministicEntropy("a"))
    most = 0
    async with trio.open_nursery() as nursery:
        await run_daemon(nursery, a, trio.CancelScope())
        for round_ in range(4):  # each instance of gw-b vanishes after 3 s
            scope = trio.CancelScope()
            devices_b = MemoryDevices(network)
            b = Daemon(
                load_config(conf_b), devices=devices_b, entropy=DeterministicEntropy(f"b{round_}")
            )
            await run_daemon(nursery, b, scope)
            with trio.fail_after(10):
                while len(established(b)) != 1:
                    await trio.sleep(0.05)
            for _ in range(30):
                await trio.sleep(0.1)
                live = [i for i in established(a) if not i.get("superseded")]
                most = max(most, len(established(a)))
                assert len(live) == 1, established(a)
                assert len(superseded(a)) <= 1
            if round_ < 3:
                scope.cancel()  # gone: no DELETE reaches gw-a
                await trio.sleep(0.5)
        assert most == 2  # one live, one superseded (never the three measured)
        await trio.sleep(REAUTH_GRACE)  # the last superseded one has had its grace
        (fresh,) = established(a)
        assert fresh["spi_i"] == established(b)[0]["spi_i"] and not fresh["superseded"]
        tun_a, tun_b = devices_a.tun, devices_b.tun
        assert tun_a is not None and tun_b is not None
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"to the last one"))
        with trio.fail_after(5):
            assert (await tun_b.host_recv()).endswith(b"to the last one")
        nursery.cancel_scope.cancel()
