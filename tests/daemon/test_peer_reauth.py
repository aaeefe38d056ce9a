"""A peer that reauthenticates make-before-break (RFC 7296 §2.8.3), as strongSwan does.

Found against strongSwan 5.9.8 (`swanctl --rekey --ike --reauth` with
``make_before_break = yes``, tests/interop/test_swan_rekey.py): charon
builds a complete new IKE SA with its Child SA (IKE_SA_INIT, IKE_AUTH,
without INITIAL_CONTACT since it still holds the old one), then deletes the
old IKE SA itself. tunneld, the responder, (1) switched its outbound traffic
to the new Child SA as soon as it answered IKE_AUTH, before charon had
installed the SA (charon installs when it has processed the answer), and
(2) took the old IKE SA for a stale one and deleted it at once, racing
charon's own switch-over: probes sent at one per millisecond lost a few
packets on every reauthentication.

Here gateway B is played by bare :class:`ike.session.IkeSession` objects on
the in-memory network, so the test decides when the old IKE SA goes; which
Child SA tunneld sends on is read off the SPI of the ESP packets it sends.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import trio
import trio.testing

from ike.entropy import DeterministicEntropy
from ike.events import ChildSaUp
from ike.session import IkeSession, peek_header
from ike.sessionconfig import SessionConfig
from tests.helpers.packets import udp_packet
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, HOST_A, HOST_B, SiteOptions, write_site_configs
from tunneld.childsas import data_plane_sas
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices, session_config
from tunneld.dataplane.udpencap import UdpKind, classify, ike_payload
from tunneld.io.udp import MemoryNetwork, MemoryUdp
from tunneld.peer import REAUTH_GRACE
from tunneld.routes import MemoryRoutes

SITE_B = ipaddress.ip_network("203.0.113.0/24")


class RecordingRoutes(MemoryRoutes):
    """MemoryRoutes that remembers every removal (a route flap drops packets)."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[object] = []

    def remove(self, net: object) -> None:  # type: ignore[override]
        self.removed.append(net)
        super().remove(net)  # type: ignore[arg-type]


class ScriptedPeer:
    """Gateway B as bare IKE sessions: the test says when each starts and ends."""

    def __init__(self, network: MemoryNetwork, config: SessionConfig) -> None:
        self.config = config
        self.socks = {port: network.bind(GWB_UNDERLAY, port) for port in (500, 4500)}
        self.sessions: list[IkeSession] = []
        self.children: dict[IkeSession, ChildSaUp] = {}
        self.esp_spis: list[int] = []  # SPI of every ESP packet tunneld sent us
        self.entropy = DeterministicEntropy("reauthenticating peer")
        self._wake = trio.Event()

    def initiate(self, *, initial_contact: bool) -> IkeSession:
        config = dataclasses.replace(self.config, send_initial_contact=initial_contact)
        now = trio.current_time()
        session = IkeSession.initiator(
            config, self.entropy, now, (GWB_UNDERLAY, 500), (GWA_UNDERLAY, 500)
        )
        session.initiate(now)
        self.sessions.append(session)
        self._flush()
        return session

    def close(self, session: IkeSession) -> None:
        session.close(trio.current_time())
        self._flush()

    def send_esp(self, session: IkeSession, inner: bytes) -> None:
        """One ESP packet on ``session``'s Child SA, as B's data plane would send it."""
        _, outbound = data_plane_sas(self.children[session], 64)
        self.socks[4500].sendto(outbound.encrypt(inner, 4), (GWA_UNDERLAY, 4500))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for port, sock in self.socks.items():
                nursery.start_soon(self._receive, port, sock)
            nursery.start_soon(self._timers)

    async def _receive(self, port: int, sock: MemoryUdp) -> None:
        while True:
            await sock.wait_readable()
            for data, src in sock.recv_batch():
                self._input(port, bytes(data), src)

    def _input(self, port: int, data: bytes, src: tuple[str, int]) -> None:
        if port == 4500:
            kind, data = classify(data)
            if kind is UdpKind.ESP:
                self.esp_spis.append(int.from_bytes(data[:4], "big"))
                return
        header = peek_header(data)
        for session in self.sessions:
            if session.matches(header):
                session.receive_datagram(data, src, (GWB_UNDERLAY, port), trio.current_time())
        self._flush()

    async def _timers(self) -> None:
        while True:
            deadlines = [d for s in self.sessions if (d := s.next_deadline()) is not None]
            with trio.move_on_at(min(deadlines, default=trio.current_time() + 1)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            for session in self.sessions:
                deadline = session.next_deadline()
                if deadline is not None and deadline <= now:
                    session.handle_timer(now)
            self._flush(wake=False)

    def _flush(self, *, wake: bool = True) -> None:
        """Send what the sessions queued, note their Child SAs; ``wake``: the deadlines
        may have changed, so the timer task looks again."""
        for session in self.sessions:
            for data, src, dst in session.datagrams_to_send():
                payload = ike_payload(data) if src[1] == 4500 else data
                self.socks[src[1]].sendto(payload, dst)
            while (event := session.next_event()) is not None:
                if isinstance(event, ChildSaUp):
                    self.children[session] = event
        if wake:
            self._wake.set()


class Lab:
    def __init__(self, daemon: Daemon, devices: MemoryDevices, routes: RecordingRoutes) -> None:
        self.daemon, self.devices, self.routes = daemon, devices, routes

    def established(self) -> list[dict[str, object]]:
        (peer,) = self.daemon.status()["peers"]
        return [ike for ike in peer["ike_sas"] if ike["state"] == "established"]

    async def spi_of_next_packet(self, peer: ScriptedPeer) -> int:
        """Send one packet from site A; the SPI of the ESP packet B receives."""
        seen = len(peer.esp_spis)
        assert self.devices.tun is not None
        self.devices.tun.host_send(udp_packet(HOST_A, HOST_B, b"probe"))
        with trio.fail_after(2):
            while len(peer.esp_spis) == seen:
                await trio.sleep(0.01)
        return peer.esp_spis[-1]


async def start(tmp_path: Path, nursery: trio.Nursery) -> tuple[Lab, ScriptedPeer]:
    conf_a, conf_b = write_site_configs(tmp_path, "mem", SiteOptions(auto_a="listen"))
    network = MemoryNetwork()
    devices = MemoryDevices(network)
    devices.route_table = routes = RecordingRoutes()
    daemon = Daemon(load_config(conf_a), devices=devices, entropy=DeterministicEntropy("a"))
    await nursery.start(daemon.run)
    config_b = load_config(conf_b)
    peer = ScriptedPeer(network, session_config(config_b, config_b.peers[0], lambda spi: False))
    nursery.start_soon(peer.run)
    return Lab(daemon, devices, routes), peer


async def establish(lab: Lab, peer: ScriptedPeer, *, initial_contact: bool) -> IkeSession:
    session = peer.initiate(initial_contact=initial_contact)
    with trio.fail_after(5):
        while session not in peer.children:
            await trio.sleep(0.01)
    return session


async def test_tunneld_sends_on_the_old_child_sa_until_the_peer_deletes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        lab, peer = await start(tmp_path, nursery)
        old = await establish(lab, peer, initial_contact=True)
        old_spi = peer.children[old].inbound_spi
        assert await lab.spi_of_next_packet(peer) == old_spi

        new = await establish(lab, peer, initial_contact=False)  # make-before-break reauth
        await trio.sleep(1)
        # B has not deleted the old IKE SA: tunneld keeps it and keeps sending on it
        # (B may not have installed the new SA when tunneld's answer left).
        assert old.established and len(lab.established()) == 2
        assert await lab.spi_of_next_packet(peer) == old_spi

        peer.close(old)  # B deletes the old IKE SA: now the new Child SA carries traffic
        with trio.fail_after(5):
            while len(lab.established()) != 1:
                await trio.sleep(0.01)
        assert await lab.spi_of_next_packet(peer) == peer.children[new].inbound_spi
        assert lab.routes.installed() == {SITE_B} and lab.routes.removed == []
        nursery.cancel_scope.cancel()


async def test_esp_on_the_new_child_sa_moves_tunneld_over_before_the_delete(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        lab, peer = await start(tmp_path, nursery)
        await establish(lab, peer, initial_contact=True)
        new = await establish(lab, peer, initial_contact=False)
        peer.send_esp(new, udp_packet(HOST_B, HOST_A, b"on the new SA"))  # B installed it
        assert lab.devices.tun is not None
        with trio.fail_after(2):
            assert (await lab.devices.tun.host_recv()).endswith(b"on the new SA")
        await trio.sleep(1.5)  # the counters are looked at once a second
        assert await lab.spi_of_next_packet(peer) == peer.children[new].inbound_spi
        assert lab.routes.removed == []
        nursery.cancel_scope.cancel()


async def test_an_old_ike_sa_the_peer_never_deletes_is_deleted_after_a_grace_period(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        lab, peer = await start(tmp_path, nursery)
        old = await establish(lab, peer, initial_contact=True)
        new = await establish(lab, peer, initial_contact=False)
        await trio.sleep(REAUTH_GRACE - 1)
        assert old.established
        await trio.sleep(2)
        assert not old.established  # tunneld deleted it
        assert [ike["spi_i"] for ike in lab.established()] == [new.spi_i.hex()]
        assert await lab.spi_of_next_packet(peer) == peer.children[new].inbound_spi
        assert lab.routes.removed == []
        nursery.cancel_scope.cancel()
