"""Two daemons in one process, joined by in-memory devices, on trio's virtual clock.

Everything but the kernel is real: configuration files, PKI, IKE sessions,
the SA database, the packet pumps and the control socket. The TUN devices,
UDP sockets and routes are the in-memory twins from ``tunneld.io`` and
``tunneld.routes``. The ``pair`` fixture (registered by tests/conftest.py)
starts gw-b, then gw-a, from ``write_site_configs``; parametrize it
indirectly with a ``SiteOptions``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from ike.entropy import DeterministicEntropy
from tools.lab import SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork


@dataclass
class Site:
    daemon: Daemon
    devices: MemoryDevices
    socket: Path


@dataclass
class Pair:
    a: Site
    b: Site
    network: MemoryNetwork
    nursery: trio.Nursery
    cancel_a: trio.CancelScope
    cancel_b: trio.CancelScope


async def start_site(
    nursery: trio.Nursery, conf: Path, network: MemoryNetwork
) -> tuple[Site, trio.CancelScope]:
    config = load_config(conf)
    devices = MemoryDevices(network)
    daemon = Daemon(config, devices=devices)
    scope = trio.CancelScope()
    await run_daemon(nursery, daemon, scope)
    return Site(daemon, devices, config.gateway.control_socket), scope


async def run_daemon(nursery: trio.Nursery, daemon: Daemon, scope: trio.CancelScope) -> None:
    """Start ``daemon.run`` in ``nursery`` under ``scope``; return once it is ready."""

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await daemon.run(task_status=task_status)

    await nursery.start(run)


@pytest.fixture
async def pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    options = getattr(request, "param", None) or SiteOptions()
    conf_a, conf_b = write_site_configs(tmp_path, "mem", options)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b, cancel_b = await start_site(nursery, conf_b, network)
        a, cancel_a = await start_site(nursery, conf_a, network)
        yield Pair(a, b, network, nursery, cancel_a, cancel_b)
        nursery.cancel_scope.cancel()


def children(site: Site) -> list[dict[str, object]]:
    return [c for p in site.daemon.status()["peers"] for c in p["child_sas"]]


async def wait_for_children(*sites: Site, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not all(children(s) for s in sites):
            await trio.sleep(0.05)


def established(daemon: Daemon) -> list[dict[str, object]]:
    """The established IKE SAs of ``daemon``'s one peer."""
    (peer,) = daemon.status()["peers"]
    return [ike for ike in peer["ike_sas"] if ike["state"] == "established"]


class IkeSpiPrefix:
    """Deterministic randomness whose 8-byte draws (IKE SPIs) start with ``first``."""

    def __init__(self, seed: str, first: int) -> None:
        self._inner = DeterministicEntropy(seed)
        self._first = first

    def random_bytes(self, n: int) -> bytes:
        data = self._inner.random_bytes(n)
        return bytes((self._first,)) + data[1:] if n == 8 else data
