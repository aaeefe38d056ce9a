"""An IKE SA we delete on purpose whose DELETE goes unanswered is no dead peer (peer rule 6).

Found in tests/netns/test_rekey_netns.py: gw-a was killed (-9) and restarted;
gw-b replaced the stale IKE SA (INITIAL_CONTACT) and sent a DELETE for it that
the restarted gw-a could not answer. When its retransmissions ran out, gw-b
reported "peer dead", counted a dead peer detection, set last_error and
applied dpd_action, although the peer was alive on the new IKE SA. The same
happened to an operator's ``down`` towards an unreachable peer: with
``dpd_action = "restart"`` the timed-out DELETE brought the tunnel back up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import trio
import trio.testing

from ike.entropy import DeterministicEntropy
from ike.policy import DEFAULT_RETRANSMIT
from tests.helpers.daemon_memory import IkeSpiPrefix, established, run_daemon
from tools.lab import SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork

AFTER_DELETE_TIMEOUT = DEFAULT_RETRANSMIT.total + 5


def peer_of(daemon: Daemon) -> dict[str, object]:
    (peer,) = daemon.status()["peers"]
    result: dict[str, object] = peer
    return result


async def test_a_stale_ike_sa_whose_delete_times_out_is_no_dead_peer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = write_site_configs(
        tmp_path, "mem", SiteOptions(auto_a="listen", auto_b="start", extra_peer='dpd_delay = "5s"')
    )
    network = MemoryNetwork()
    a = Daemon(
        load_config(conf_a), devices=MemoryDevices(network), entropy=DeterministicEntropy("a")
    )
    async with trio.open_nursery() as nursery:
        await run_daemon(nursery, a, trio.CancelScope())
        old_scope = trio.CancelScope()
        old = Daemon(load_config(conf_b), devices=MemoryDevices(network))
        await run_daemon(nursery, old, old_scope)
        with trio.fail_after(10):
            while not established(a):
                await trio.sleep(0.05)
        old_scope.cancel()  # killed: no DELETE
        await trio.sleep(1)
        new = Daemon(
            load_config(conf_b), devices=MemoryDevices(network), entropy=IkeSpiPrefix("b2", 0)
        )
        await run_daemon(nursery, new, trio.CancelScope())
        with trio.fail_after(10):
            while len(established(a)) != 1 or len(peer_of(a)["ike_sas"]) != 1:  # type: ignore[arg-type]
                await trio.sleep(0.05)  # INITIAL_CONTACT: the stale SA is forgotten at once
        await trio.sleep(AFTER_DELETE_TIMEOUT)
        # no DELETE for the stale SA reached the restarted gateway (it would not know the SPI)
        assert new.status()["ike_dispatch"]["unknown_spi"] == 0
        peer = peer_of(a)
        assert len(peer["ike_sas"]) == 1 and len(established(a)) == 1  # type: ignore[arg-type]
        assert peer["last_error"] is None, peer["last_error"]
        assert peer["counters"]["dead_peer_detections"] == 0  # type: ignore[index]
        nursery.cancel_scope.cancel()


class Blackhole:
    """A MemoryNetwork impairment that drops everything while ``on``."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, data: bytes, src: object, dst: object) -> Iterator[bytes]:
        if not self.on:
            yield data


async def test_down_towards_an_unreachable_peer_stays_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions())
    conf_a.write_text(conf_a.read_text() + 'dpd_action = "restart"\n')
    conf_b.write_text(conf_b.read_text() + 'dpd_delay = "0s"\n')  # gw-b never restarts it
    hole = Blackhole()
    network = MemoryNetwork(impair=hole)
    a = Daemon(load_config(conf_a), devices=MemoryDevices(network))
    b = Daemon(load_config(conf_b), devices=MemoryDevices(network))
    async with trio.open_nursery() as nursery:
        await run_daemon(nursery, b, trio.CancelScope())
        await run_daemon(nursery, a, trio.CancelScope())
        with trio.fail_after(10):
            while not established(a):
                await trio.sleep(0.05)
        before = peer_of(a)["counters"]["ike_sas_established"]  # type: ignore[index]
        hole.on = True
        assert (await a._control({"cmd": "down", "peer": "gw-b"}))["ok"]
        await trio.sleep(AFTER_DELETE_TIMEOUT)
        hole.on = False
        await trio.sleep(30)  # a restart would have found gw-b by now
        peer = peer_of(a)
        assert peer["state"] == "down" and peer["ike_sas"] == [], peer
        assert peer["counters"]["dead_peer_detections"] == 0  # type: ignore[index]
        assert peer["counters"]["ike_sas_established"] == before  # type: ignore[index]
        nursery.cancel_scope.cancel()
