"""The fixtures of the namespace (tests/netns) and interop (tests/interop) tests.

Registered for the whole suite by tests/conftest.py; each skips unless run as
root with network namespaces and /dev/net/tun (and strongSwan, for those
that start charon).

- ``lab``: the five-namespace lab of netns-scripts/lab.sh (sitelab.py) under
  a fresh prefix, ``lab_stem`` + random; ``lab_stem`` is a fixture for a
  module or conftest to override (each suite names its namespaces). Torn down
  after the test, processes inside killed; then no namespace of it and no
  process naming the test's ``tmp_path`` may be left.
- ``static_pair``: the lab plus two static-key gateways
  (tests/tools/static_pair.py); yields the lab's prefix.
- ``make_sites``: ``make(SiteOptions) -> Sites``, two ``tunneld run``
  gateways of one configuration in the lab (lab_sites.py), killed afterwards.
- ``strongswan``: ``make(role) -> StrongSwan``, charon in ``PREFIX-role``;
  ``tunneld_gateway``: ``make(role, config) -> Gateway``, a not yet started
  ``tunneld run -c config``. Every one started is stopped, and checked gone,
  before the lab is torn down, also when the test fails.
- ``swan_pair``: ``make(Setup, ...) -> Pair``, tunneld on gw-a and strongSwan
  on gw-b, up and established (pairing.start_pair on the fixtures above).
- ``inside_netns``: runs the test's own thread inside a fresh, empty
  namespace (loopback up), for tests of the kernel TUN and UDP devices.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_sites import Sites, open_sites
from tests.helpers.pairing import Pair, Setup, start_pair
from tests.helpers.sitelab import (
    PREFIX_STEM,
    REPO,
    Lab,
    lab_topology,
    processes_mentioning,
    run,
)
from tests.helpers.swan import CHARON, StrongSwan, SwanError
from tools.lab import Gateway, SiteOptions, unique_prefix

CLONE_NEWNET = 0x40000000
NEEDS_STRONGSWAN = {"strongswan", "swan_pair"}


def need_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root, network namespaces and /dev/net/tun")


def need_strongswan() -> None:
    if not (Path(CHARON).exists() and shutil.which("swanctl")):
        pytest.skip("strongSwan (charon, swanctl) is not installed")


# -- the lab ---------------------------------------------------------------------------


@pytest.fixture
def lab_stem() -> str:
    """The first letters of the lab's namespace names (lab.sh: prefix <= 8 of [a-z0-9])."""
    return PREFIX_STEM


@pytest.fixture
def lab(lab_stem: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    need_root()
    if NEEDS_STRONGSWAN & set(request.fixturenames):
        need_strongswan()  # before the namespaces are made for nothing
    with lab_topology(stem=lab_stem) as topology:
        yield topology
    left = processes_mentioning(tmp_path)
    assert not left, f"processes still running from {tmp_path}: {left}"


@pytest.fixture
def static_pair(lab: Lab) -> Iterator[str]:
    harness = [sys.executable, "-m", "tests.tools.static_pair"]
    try:
        run(*harness, "up", lab.prefix)
        yield lab.prefix
    finally:
        subprocess.run([*harness, "down", lab.prefix], capture_output=True, timeout=60, cwd=REPO)
        shutil.rmtree(f"/run/tunneld-static-pair/{lab.prefix}", ignore_errors=True)  # its logs


@pytest.fixture
def make_sites(lab: Lab, tmp_path: Path) -> Iterator[Callable[[SiteOptions], Sites]]:
    with open_sites(lab, tmp_path) as make:
        yield make


# -- strongSwan and tunneld as the lab's gateways ----------------------------------------


@pytest.fixture
def strongswan(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], StrongSwan]]:
    need_strongswan()
    made: list[StrongSwan] = []

    def make(role: str) -> StrongSwan:
        gateway = StrongSwan(lab.ns(role), tmp_path / f"swan-{role}")
        made.append(gateway)
        return gateway

    yield make
    errors = []
    for gateway in made:
        try:
            gateway.stop()
        except (SwanError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
    if errors:
        raise SwanError("; ".join(errors))


@pytest.fixture
def tunneld_gateway(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str, Path], Gateway]]:
    """`make(role, config)`: a not yet started `tunneld run -c config` in PREFIX-role."""
    made: list[Gateway] = []

    def make(role: str, config: Path) -> Gateway:
        socket = Path(tomllib.loads(config.read_text())["gateway"]["control_socket"])
        gateway = Gateway(lab, role, config, socket, tmp_path / f"tunneld-{role}.log")
        made.append(gateway)
        return gateway

    yield make
    alive = []
    for gateway in made:
        gateway.stop(timeout=5)  # SIGTERM (DELETE to the peer), SIGKILL if it hangs
        if gateway.proc is not None and gateway.proc.poll() is None:
            alive.append(gateway.proc.pid)
    assert not alive, f"tunneld still running: {alive}"


@pytest.fixture
def swan_pair(
    lab: Lab,
    tmp_path: Path,
    strongswan: Callable[[str], StrongSwan],
    tunneld_gateway: Callable[[str, Path], Gateway],
) -> Callable[..., Pair]:
    """`make(setup, *, alter_swan=None, wait=True)`: see pairing.start_pair."""

    def make(setup: Setup, **options: Any) -> Pair:
        return start_pair(setup, lab, tmp_path, strongswan, tunneld_gateway, **options)

    return make


# -- a namespace of the test's own ---------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def inside_netns() -> Iterator[str]:
    """Move this thread into a new namespace for the test; back and delete after."""
    need_root()
    name = unique_prefix("hio") + "-io"
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(original)
    finally:
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
