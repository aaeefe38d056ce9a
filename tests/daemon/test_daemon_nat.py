"""Gateway A behind a NAT (source address and port translated), on the virtual clock:
NAT detection tells A it is behind a NAT, so A (and only A) sends NAT keepalives
every 20 s (RFC 3948 §2.3, §4), and the tunnel works through the translation."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.helpers.daemon_memory import children, start_site, wait_for_children
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions, write_site_configs
from tunneld.io.udp import Address, MemoryNetwork

PRIVATE_HOST = "192.0.2.1"  # gw-a's own address
PUBLIC_HOST = "192.0.2.100"  # what gw-b sees: the NAT's outside address
PORT_SHIFT = 20000  # the NAT maps port p to p + PORT_SHIFT


class NatNetwork(MemoryNetwork):
    """Rewrites gw-a's source address and port, and the replies back (a full-cone NAT)."""

    def __init__(self) -> None:
        super().__init__()
        self.keepalives: list[tuple[Address, Address]] = []

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        if data == b"\xff":
            self.keepalives.append((src, dst))
        if src[0] == PRIVATE_HOST:
            src = (PUBLIC_HOST, src[1] + PORT_SHIFT)
        if dst[0] == PUBLIC_HOST:
            dst = (PRIVATE_HOST, dst[1] - PORT_SHIFT)
        super().transmit(data, src, dst)


def configs(tmp_path: Path) -> tuple[Path, Path]:
    conf_a, conf_b = write_site_configs(tmp_path, "nat", SiteOptions())
    # gw-b cannot know gw-a's translated address: it accepts gw-a from anywhere
    text = conf_b.read_text().replace('address = "192.0.2.1"\n', "")
    conf_b.write_text(text)
    return conf_a, conf_b


async def test_only_the_gateway_behind_the_nat_sends_keepalives(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    conf_a, conf_b = configs(tmp_path)
    network = NatNetwork()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        ike_a = a.daemon.status()["peers"][0]["ike_sas"][0]
        ike_b = b.daemon.status()["peers"][0]["ike_sas"][0]
        assert ike_a["behind_nat"] is True and ike_b["behind_nat"] is False
        assert ike_b["remote"] == f"{PUBLIC_HOST}:{4500 + PORT_SHIFT}"

        # traffic both ways through the translation
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"out"))
        tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"back"))
        with trio.fail_after(5):
            assert (await tun_b.host_recv()).endswith(b"out")
            assert (await tun_a.host_recv()).endswith(b"back")

        start = trio.current_time()
        network.keepalives.clear()
        await trio.sleep(65)
        assert children(a) and children(b)
        senders = {src[0] for src, _ in network.keepalives}
        assert senders == {PRIVATE_HOST}  # gw-b, not behind a NAT, sends none
        assert all(dst == ("192.0.2.2", 4500) for _, dst in network.keepalives)
        assert len(network.keepalives) == 3  # at about +20, +40, +60 s
        counters = a.daemon.status()["peers"][0]["counters"]
        assert counters["nat_keepalives_sent"] >= 3
        assert trio.current_time() - start >= 65
        nursery.cancel_scope.cancel()
