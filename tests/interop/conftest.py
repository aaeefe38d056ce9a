"""Fixtures for interop tests: the lab namespaces, strongSwan and tunneld gateways.

`lab` brings up netns-scripts/lab.sh's five namespaces (sitelab.py) and
removes them after the test; `strongswan` is a factory
`strongswan(role) -> StrongSwan` and `tunneld_gateway` a factory
`tunneld_gateway(role, config) -> tunneld.lab.Gateway`. Every charon and
tunneld they started is stopped, and checked gone, before the lab is torn
down, also when the test fails; then no process may still name the test's
directory and no namespace of the lab may be left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.sitelab import Lab, lab_topology, processes_mentioning
from tests.interop.swan import CHARON, StrongSwan, SwanError
from tools.lab import Gateway


def _require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not (Path(CHARON).exists() and shutil.which("swanctl")):
        pytest.skip("strongSwan (charon, swanctl) is not installed")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    _require_lab()
    with lab_topology() as topology:
        yield topology
    left = processes_mentioning(tmp_path)
    assert not left, f"processes still running from {tmp_path}: {left}"


@pytest.fixture
def strongswan(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], StrongSwan]]:
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
