"""A peer that moves (peer.py rule 10, sadb rule 7), on the virtual clock.

gw-a sits behind a NAT whose outside port can change (a rebinding) or whose
outside address can change (roaming); gw-b has no ``address`` for gw-a. Only
authenticated packets move gw-b's IKE SA and Child SAs: ESP with a valid ICV
that is the newest on its SA, or an authenticated IKE message. A forged ESP
packet (bad ICV) or a replayed one from another address moves nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers.daemon_memory import Site, start_site, wait_for_children
from tests.helpers.packets import udp_packet
from tools.lab import SiteOptions, write_site_configs
from tunneld.dataplane.drops import DropReason
from tunneld.io.udp import Address, MemoryNetwork

PRIVATE_HOST = "192.0.2.1"  # gw-a's own address
PUBLIC_HOST = "192.0.2.100"  # what gw-b sees first: the NAT's outside address
ROAMED_HOST = "192.0.2.101"  # the NAT's outside address after roaming
ATTACKER = ("192.0.2.66", 4500)


class MovingNat(MemoryNetwork):
    """A NAT in front of gw-a: its outside address and port shift can change; replies to
    an outside address or port no longer in use are lost (the mapping is gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.public, self.shift = PUBLIC_HOST, 20000
        self.esp_to_b: list[bytes] = []  # ESP gw-a sent (for replays)
        self.ike_to_b: list[bytes] = []  # IKE on 4500 gw-a sent, marker included

    def transmit(self, data: bytes, src: Address, dst: Address) -> None:
        if src[0] == PRIVATE_HOST:
            if dst[1] == 4500 and data[:4] != b"\0\0\0\0" and len(data) > 1:
                self.esp_to_b.append(data)
            elif dst[1] == 4500 and data[:4] == b"\0\0\0\0":
                self.ike_to_b.append(data)
            src = (self.public, src[1] + self.shift)
        elif dst[0] in (PUBLIC_HOST, ROAMED_HOST):
            if dst[0] != self.public or dst[1] - self.shift not in (500, 4500):
                self.stats.unreachable += 1
                return
            dst = (PRIVATE_HOST, dst[1] - self.shift)
        super().transmit(data, src, dst)


def configs(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    conf_a, conf_b = write_site_configs(tmp_path, "move", SiteOptions(extra_peer=extra))
    text = conf_b.read_text().replace('address = "192.0.2.1"\n', "")  # gw-b: gw-a from anywhere
    conf_b.write_text(text)
    return conf_a, conf_b


def peer_b(b: Site) -> dict[str, object]:
    (peer,) = b.daemon.status()["peers"]
    return peer


def esp_destination(b: Site) -> tuple[str, int]:
    (tunnel,) = b.daemon.sadb.tunnels
    return tunnel.peer


async def ping(a: Site, b: Site, timeout: float = 1.0) -> None:
    """One packet each way through the tunnel (a -> b first)."""
    tun_a, tun_b = a.devices.tun, b.devices.tun
    assert tun_a is not None and tun_b is not None
    tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"out"))
    with trio.fail_after(timeout):
        assert (await tun_b.host_recv()).endswith(b"out")
    tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"back"))
    with trio.fail_after(timeout):
        assert (await tun_a.host_recv()).endswith(b"back")


def moves(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "peer address changed"]


async def test_esp_from_a_new_port_moves_every_sa_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path)
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        await ping(a, b)
        assert esp_destination(b) == (PUBLIC_HOST, 24500)

        network.shift = 30000  # the NAT rebinds: a new outside port
        await ping(a, b, timeout=0.1)  # a's ESP from the new port moves b at once
        assert esp_destination(b) == (PUBLIC_HOST, 34500)
        (ike,) = peer_b(b)["ike_sas"]  # type: ignore[misc]
        assert ike["remote"] == f"{PUBLIC_HOST}:34500"  # the IKE SA followed the ESP
        assert peer_b(b)["address"] == f"{PUBLIC_HOST}:34500"
        (record,) = moves(caplog)
        assert record.__dict__["old"] == f"{PUBLIC_HOST}:24500"
        assert record.__dict__["new"] == f"{PUBLIC_HOST}:34500"
        assert record.__dict__["by"] == "ESP"
        for _ in range(5):  # more traffic from there: no second log line
            await ping(a, b, timeout=0.1)
        assert len(moves(caplog)) == 1
        assert peer_b(b)["counters"]["address_changes"] == 1  # type: ignore[index]

        # the IKE SA works on the new path: a liveness check from b is answered
        b.daemon.peers["gw-a"].rekey(ike=False)
        await trio.sleep(5)
        await ping(a, b, timeout=0.1)
        assert esp_destination(b) == (PUBLIC_HOST, 34500)
        nursery.cancel_scope.cancel()


async def test_forged_and_replayed_esp_from_elsewhere_move_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path)
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        await ping(a, b)
        captured = network.esp_to_b[-1]  # a valid packet b has already accepted
        sadb = b.daemon.sadb
        drops_before = dict(sadb.drops)

        forged = bytearray(captured)
        forged[-1] ^= 1  # a bad ICV, with a fresh sequence number
        forged[4:8] = (0xFFFFFF).to_bytes(4, "big")
        network.transmit(bytes(forged), ATTACKER, ("192.0.2.2", 4500))
        network.transmit(captured, ATTACKER, ("192.0.2.2", 4500))  # a replay
        await trio.sleep(1)
        assert sadb.drops[DropReason.AUTH_FAILED] == drops_before[DropReason.AUTH_FAILED] + 1
        assert sadb.drops[DropReason.REPLAY] == drops_before[DropReason.REPLAY] + 1
        assert esp_destination(b) == (PUBLIC_HOST, 24500)
        (ike,) = peer_b(b)["ike_sas"]  # type: ignore[misc]
        assert ike["remote"] == f"{PUBLIC_HOST}:24500"
        assert moves(caplog) == []
        await ping(a, b, timeout=0.1)  # the tunnel still works on its path
        nursery.cancel_scope.cancel()


async def test_an_old_packet_arriving_late_from_the_old_address_does_not_move_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Authentic and not a replay, but not the newest: it arrives after packets from the
    new address (it was held up in the old path), so the peer stays where it went."""
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path)
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        tun_a = a.devices.tun
        assert tun_a is not None
        held: list[bytes] = []
        real_transmit = network.transmit

        def hold_one(data: bytes, src: Address, dst: Address) -> None:
            if src[0] == PRIVATE_HOST and dst[1] == 4500 and data[:4] != b"\0\0\0\0" and not held:
                held.append(data)  # in flight on the old path, delivered later
                return
            real_transmit(data, src, dst)

        network.transmit = hold_one  # type: ignore[method-assign]
        tun_a.host_send(udp_packet("198.51.100.10", "203.0.113.10", b"late"))
        await trio.sleep(0.1)
        network.transmit = real_transmit  # type: ignore[method-assign]
        network.shift = 30000
        await ping(a, b, timeout=0.1)
        assert esp_destination(b) == (PUBLIC_HOST, 34500)
        MemoryNetwork.transmit(network, held[0], (PUBLIC_HOST, 24500), ("192.0.2.2", 4500))
        await trio.sleep(0.1)
        assert esp_destination(b) == (PUBLIC_HOST, 34500)
        assert len(moves(caplog)) == 1
        nursery.cancel_scope.cancel()


async def test_roaming_by_ike_alone_moves_the_child_sas(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """gw-a gets a new outside address and sends IKE first (a Child SA rekey): the
    authenticated request moves gw-b's IKE SA and every Child SA, old and new."""
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path)
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        network.public = ROAMED_HOST
        assert a.daemon.peers["gw-b"].rekey(ike=False)
        with trio.fail_after(5):
            while peer_b(b)["counters"]["child_rekeys"] < 1:  # type: ignore[index]
                await trio.sleep(0.05)
        assert esp_destination(b) == (ROAMED_HOST, 24500)
        (record,) = moves(caplog)
        assert record.__dict__["by"] == "IKE"
        assert record.__dict__["new"] == f"{ROAMED_HOST}:24500"
        await ping(a, b, timeout=0.1)
        nursery.cancel_scope.cancel()


async def test_only_the_hub_talks_after_a_rebinding_the_spokes_liveness_check_repairs_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Hub -> spoke is a one-way black hole after the rebinding (the hub sends to the old
    port; the spoke is silent, its NAT keepalives prove nothing). The spoke hears nothing
    for dpd_delay, asks (from the new port), the hub authenticates that and moves."""
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path, 'dpd_delay = "10s"\n')
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        await ping(a, b)
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        network.shift = 30000
        rebound = trio.current_time()
        while not tun_a.host_recv_nowait():  # the hub sends every 100 ms
            tun_b.host_send(udp_packet("203.0.113.10", "198.51.100.10", b"hub"))
            await trio.sleep(0.1)
            assert trio.current_time() - rebound < 15, "the spoke never got through again"
        repaired = trio.current_time() - rebound
        print(f"MEASURED hub->spoke repaired {repaired:.2f} s after the rebinding (dpd_delay 10 s)")
        assert repaired <= 10 + 1 + 0.5  # dpd_delay + the 1 s watch
        (record,) = moves(caplog)
        assert record.__dict__["by"] == "IKE"  # the liveness check moved it
        assert peer_b(b)["liveness"]["state"] == "alive"  # type: ignore[index]
        nursery.cancel_scope.cancel()


async def test_forged_and_replayed_ike_from_elsewhere_move_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An IKE request of gw-a's, replayed from another address (a retransmission
    from a third party: not answered there), and one with a broken ICV."""
    caplog.set_level(logging.INFO, logger="tunneld.peer")
    conf_a, conf_b = configs(tmp_path)
    network = MovingNat()
    async with trio.open_nursery() as nursery:
        b, _ = await start_site(nursery, conf_b, network)
        a, _ = await start_site(nursery, conf_a, network)
        await wait_for_children(a, b)
        assert a.daemon.peers["gw-b"].rekey(ike=False)
        await trio.sleep(3)
        # gw-a's requests (IKE header after the 4-byte marker: flags at 19, R = 0x20)
        requests = [d for d in network.ike_to_b if not d[4 + 19] & 0x20]
        replayed = requests[-1]  # answered by gw-b already: a retransmission
        forged = bytearray(replayed)  # the next message ID: new, but the ICV fails
        next_id = int.from_bytes(forged[24:28], "big") + 1
        forged[24:28] = next_id.to_bytes(4, "big")
        for datagram in (replayed, bytes(forged)):
            MemoryNetwork.transmit(network, datagram, ATTACKER, ("192.0.2.2", 4500))
        await trio.sleep(1)
        (ike,) = peer_b(b)["ike_sas"]  # type: ignore[misc]
        assert ike["remote"] == f"{PUBLIC_HOST}:24500"
        assert esp_destination(b) == (PUBLIC_HOST, 24500)
        assert moves(caplog) == []
        drops = ike["drops"]
        assert drops["retransmitted request from another address"] == 1
        assert drops["unauthenticated or malformed request"] == 1
        await ping(a, b, timeout=0.1)
        nursery.cancel_scope.cancel()
