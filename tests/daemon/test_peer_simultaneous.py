"""Both gateways initiate at once (``auto = "start"`` on both sides), issue #8.

Measured in the namespace lab: both gateways started together, 1 ms probes
both ways; in 2 of 5 runs B->A lost ~2,000 of 5,000 probes. gw-b's IKE_AUTH
carried N(INITIAL_CONTACT) although gw-b already had another IKE SA with gw-a;
gw-a forgot its concurrent IKE SA without a DELETE (INITIAL_CONTACT) while gw-b
kept exactly that one (larger SPI pair): two rules disagreed about the survivor.

Here two daemons run on the virtual clock over a network whose IKE datagrams
take a seeded random time (as each gateway's DH and signatures would); ESP
goes at once. Each seed varies the SPIs, which gateway starts first and by
how much, and so the order in which the four IKE_SA_INIT/IKE_AUTH exchanges
meet. From the moment both daemons report the Child SA (the same pair: a
responder's Child SA of a duplicate shows on its side before the initiator
has installed it), a probe every millisecond crosses each way; none may be
lost, and at the end each side holds the same one IKE SA and one Child SA
pair.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ike.entropy import DeterministicEntropy
from tests.helpers.packets import udp_packet
from tools.lab import HOST_A, HOST_B, SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork

SEEDS = 40
PROBE_SECONDS = 2.0
IKE_DELAY_MAX = 0.004  # seconds an IKE datagram may take (processing, not the wire)
START_SKEW_MAX = 0.010  # seconds between the two daemons' starts
DELETE_DELAY = 5.0  # the configuration's default


def is_ike(data: bytes, dst: tuple[str, int]) -> bool:
    """IKE on port 500, or behind the non-ESP marker on 4500 (RFC 3948 §2.2)."""
    return dst[1] == 500 or data[:4] == b"\x00\x00\x00\x00"


class SlowIkeNetwork(MemoryNetwork):
    """IKE datagrams arrive after a seeded random delay, in order per path; ESP at once."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._last: dict[tuple[Any, Any], float] = {}
        self.nursery: trio.Nursery | None = None

    def transmit(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if self.nursery is None or not is_ike(data, dst):
            super().transmit(data, src, dst)
            return
        path = (src, dst)
        at = trio.current_time() + self._rng.uniform(0, IKE_DELAY_MAX)
        at = max(at, self._last.get(path, 0.0) + 1e-6)  # in order: never at the same time
        self._last[path] = at
        self.nursery.start_soon(self._later, at, data, src, dst)

    async def _later(self, at: float, data: bytes, src: Any, dst: Any) -> None:
        await trio.sleep_until(at)
        super().transmit(data, src, dst)


@dataclass
class Gateway:
    daemon: Daemon
    devices: MemoryDevices

    @property
    def peer(self) -> dict[str, Any]:
        (peer,) = self.daemon.status()["peers"]
        result: dict[str, Any] = peer
        return result


async def start(
    nursery: trio.Nursery,
    clock: trio.testing.MockClock,
    conf: Path,
    network: MemoryNetwork,
    seed: str,
) -> Gateway:
    """A daemon started at this very moment of virtual time: while its control socket
    is bound (in a thread) the clock must not jump, or the other daemon's timers run."""
    devices = MemoryDevices(network)
    daemon = Daemon(load_config(conf), devices=devices, entropy=DeterministicEntropy(seed))
    clock.autojump_threshold = math.inf
    try:
        await nursery.start(daemon.run)
    finally:
        clock.autojump_threshold = 0
    return Gateway(daemon, devices)


@dataclass
class Probes:
    """One probe a millisecond from each site to the other; what arrived."""

    sent: dict[str, int] = field(default_factory=lambda: {"a->b": 0, "b->a": 0})
    received: dict[str, set[int]] = field(default_factory=lambda: {"a->b": set(), "b->a": set()})

    async def send(self, a: Gateway, b: Gateway, seconds: float) -> None:
        tun_a, tun_b = a.devices.tun, b.devices.tun
        assert tun_a is not None and tun_b is not None
        for i in range(int(seconds * 1000)):
            tun_a.host_send(udp_packet(HOST_A, HOST_B, b"a->b %d" % i))
            tun_b.host_send(udp_packet(HOST_B, HOST_A, b"b->a %d" % i))
            self.sent["a->b"] += 1
            self.sent["b->a"] += 1
            await trio.sleep(0.001)

    async def receive(self, gw: Gateway, direction: str) -> None:
        tun = gw.devices.tun
        assert tun is not None
        while True:
            packet = await tun.host_recv()
            label, _, seq = packet[28:].partition(b" ")
            assert label.decode() == direction
            self.received[direction].add(int(seq))

    def lost(self) -> dict[str, int]:
        return {d: self.sent[d] - len(self.received[d]) for d in self.sent}


def survivors(gw: Gateway) -> list[tuple[str, str]]:
    """The IKE SAs not closed (a closed one may linger to answer retransmissions)."""
    return [(i["spi_i"], i["spi_r"]) for i in gw.peer["ike_sas"] if i["state"] != "closed"]


def child_pairs(gw: Gateway) -> list[tuple[str, str]]:
    return [(c["spi_in"], c["spi_out"]) for c in gw.peer["child_sas"]]


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_simultaneous_start_converges_without_losing_a_probe(
    seed: int, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(f"start {seed}")
    conf_a, conf_b = write_site_configs(
        tmp_path, "mem", SiteOptions(auth="psk", auto_a="start", auto_b="start")
    )
    network = SlowIkeNetwork(seed)
    skew = rng.uniform(0, START_SKEW_MAX)
    b_first = rng.random() < 0.5
    async with trio.open_nursery() as nursery:
        network.nursery = nursery
        first, second = (conf_b, conf_a) if b_first else (conf_a, conf_b)
        gw1 = await start(nursery, autojump_clock, first, network, f"{seed} first")
        await trio.sleep(skew)
        gw2 = await start(nursery, autojump_clock, second, network, f"{seed} second")
        a, b = (gw2, gw1) if b_first else (gw1, gw2)

        with trio.fail_after(10):
            while not set(child_pairs(a)) & {pair[::-1] for pair in child_pairs(b)}:
                await trio.sleep(0.001)  # both report the Child SA (the same pair)
        probes = Probes()
        nursery.start_soon(probes.receive, b, "a->b")
        nursery.start_soon(probes.receive, a, "b->a")
        await probes.send(a, b, PROBE_SECONDS)
        await trio.sleep(1)  # the last probes arrive
        assert probes.lost() == {"a->b": 0, "b->a": 0}, (seed, probes.lost())

        await trio.sleep(DELETE_DELAY + 1)  # losers' inbound SAs are gone by now
        assert len(survivors(a)) == 1 and survivors(a) == survivors(b), (seed, survivors(a))
        assert {i["state"] for gw in (a, b) for i in gw.peer["ike_sas"]} <= {
            "established",
            "closed",
        }
        (pair_a,) = child_pairs(a)
        assert child_pairs(b) == [pair_a[::-1]]
        for gw in (a, b):
            assert gw.peer["retiring_spis"] == [], gw.peer
            assert gw.peer["counters"]["dead_peer_detections"] == 0
            assert gw.peer["last_error"] is None, gw.peer["last_error"]
        nursery.cancel_scope.cancel()
