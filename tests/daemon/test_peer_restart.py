"""A peer that restarts and comes back with INITIAL_CONTACT (RFC 7296 §2.4).

Found against strongSwan: charon was killed (no DELETE), restarted and
initiated again with N(INITIAL_CONTACT). tunneld, the responder, then held
two IKE SAs with the same peer and kept the one with the larger SPI pair
(its rule for simultaneous initiations), which was the stale one half the
time: it deleted the fresh IKE SA and the tunnel stayed down. INITIAL_CONTACT
says the peer holds no other IKE SA with us, so every older one is stale.

Here the restarting peer is a second tunneld daemon whose IKE SPIs are
chosen so that the stale IKE SA always has the larger SPI pair.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from ike.entropy import DeterministicEntropy
from tests.helpers.daemon_memory import IkeSpiPrefix, established, run_daemon
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork


async def test_initial_contact_from_a_restarted_peer_replaces_the_stale_ike_sa(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = write_site_configs(
        tmp_path, "mem", SiteOptions(auto_a="listen", auto_b="start")
    )
    network = MemoryNetwork()
    devices_a = MemoryDevices(network)
    a = Daemon(load_config(conf_a), devices=devices_a, entropy=DeterministicEntropy("a"))
    async with trio.open_nursery() as nursery:
        await run_daemon(nursery, a, trio.CancelScope())
        old_scope = trio.CancelScope()
        old = Daemon(
            load_config(conf_b), devices=MemoryDevices(network), entropy=IkeSpiPrefix("b1", 0xFF)
        )
        await run_daemon(nursery, old, old_scope)
        with trio.fail_after(10):
            while not established(a):
                await trio.sleep(0.05)
        (stale,) = established(a)

        old_scope.cancel()  # the peer dies: no DELETE reaches us
        await trio.sleep(1)
        devices_b = MemoryDevices(network)
        new = Daemon(load_config(conf_b), devices=devices_b, entropy=IkeSpiPrefix("b2", 0x00))
        await run_daemon(nursery, new, trio.CancelScope())

        def converged() -> bool:
            ours, theirs = established(a), established(new)
            return len(theirs) == 1 and [i["spi_i"] for i in ours] == [theirs[0]["spi_i"]]

        with trio.fail_after(20):
            while not converged():
                await trio.sleep(0.05)
        await trio.sleep(60)  # whatever happens to the stale IKE SA meanwhile
        assert converged()
        (fresh,) = established(a)
        assert fresh["spi_i"] != stale["spi_i"] and fresh["spi_i"].startswith("00")
        (peer,) = a.status()["peers"]
        assert len(peer["child_sas"]) == 1

        tun_a, tun_b = devices_a.tun, devices_b.tun
        assert tun_a is not None and tun_b is not None
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"after restart"))
        with trio.fail_after(5):
            assert (await tun_b.host_recv()).endswith(b"after restart")
        nursery.cancel_scope.cancel()
