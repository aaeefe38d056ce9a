"""Every ``listen`` address is bound (daemon rule 7), on the virtual clock.

gw-b listens on two addresses; gw-a knows it by the second one. Before, only
the first was bound: gw-a's IKE_SA_INIT went unanswered. Now IKE answers
leave from the address gw-a talks to (or gw-a would drop them: an
IKE_SA_INIT response must come from where the request went), and so do
gw-b's ESP packets and its IKE requests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import start_site, wait_for_children
from tests.helpers.packets import udp_packet
from tools.lab import GWB_UNDERLAY, SiteOptions, write_site_configs
from tunneld.io.udp import Address, MemoryNetwork

SECOND = "192.0.2.3"  # gw-b's second listen address, the one gw-a knows


class Recording(MemoryNetwork):
    """Remembers the source of everything gw-b sends to gw-a."""

    def __init__(self) -> None:
        super().__init__()
        self.from_b: set[Address] = set()

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        if src[0] in (GWB_UNDERLAY, SECOND):
            self.from_b.add(src)
        super().transmit(data, src, dst)


async def test_the_peer_talks_to_our_second_listen_address(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = write_site_configs(tmp_path, "listen", SiteOptions())
    text_a = conf_a.read_text()
    assert f'address = "{GWB_UNDERLAY}"' in text_a
    conf_a.write_text(text_a.replace(f'address = "{GWB_UNDERLAY}"', f'address = "{SECOND}"'))
    text_b = conf_b.read_text()
    conf_b.write_text(
        text_b.replace(f'listen = ["{GWB_UNDERLAY}"]', f'listen = ["{GWB_UNDERLAY}", "{SECOND}"]')
    )
    network = Recording()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b, timeout=10)
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        for _ in range(3):
            tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"to b"))
            tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"to a"))
            with trio.fail_after(1):
                assert (await tun_b.host_recv()).endswith(b"to b")
                assert (await tun_a.host_recv()).endswith(b"to a")
        assert b.daemon.peers["gw-a"].rekey(ike=True)  # a request of gw-b's own
        await trio.sleep(5)
        assert network.from_b == {(SECOND, 500), (SECOND, 4500)}
        (ike,) = [i for i in a.daemon.status()["peers"][0]["ike_sas"] if i["state"] != "closed"]
        assert ike["remote"] == f"{SECOND}:4500"
        assert not [r for r in caplog.records if r.getMessage() == "peer address changed"]
        nursery.cancel_scope.cancel()
