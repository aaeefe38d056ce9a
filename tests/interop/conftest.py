"""Fixtures for interop tests: the lab namespaces and strongSwan gateways.

`lab` builds the five-namespace topology (swanlab.py) and removes it after the
test; `strongswan` is a factory `strongswan(role) -> StrongSwan` whose charons
are all stopped (and checked gone) before the lab is torn down, also when the
test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.swan import CHARON, StrongSwan, SwanError
from tests.interop.swanlab import Lab, lab_topology


def _require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not (Path(CHARON).exists() and shutil.which("swanctl")):
        pytest.skip("strongSwan (charon, swanctl) is not installed")


@pytest.fixture
def lab() -> Iterator[Lab]:
    _require_lab()
    with lab_topology() as topology:
        yield topology


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
