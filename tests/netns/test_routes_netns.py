"""KernelRoutes against a real kernel: the rtnetlink requests it writes without
waiting for the answers (tunneld/routes.py) install and remove IPv4 and IPv6
routes, and a route the kernel refuses is counted and dropped from ``installed()``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

# Runs in the namespace; the test reads the kernel's table between its steps.
CHILD = r"""
import ipaddress, json, sys
from tunneld.routes import KernelRoutes
nets = [ipaddress.ip_network(n) for n in sys.argv[1:]]
routes = KernelRoutes("hsup0")
for net in nets:
    routes.add(net)
print(json.dumps({"installed": sorted(map(str, routes.installed())), "failed": routes.failed}))
sys.stdout.flush()
sys.stdin.readline()
routes.remove(nets[0])
down = KernelRoutes("hsdown0")  # the kernel refuses a route via a device that is down
down.add(nets[1])
print(json.dumps({"installed": sorted(map(str, down.installed())), "failed": down.failed}))
sys.stdout.flush()
down.close()
sys.stdin.readline()
routes.close()
"""


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"hs{secrets.token_hex(3)}-rt"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip = ["ip", "-n", name, "link"]
        subprocess.run([*ip, "add", "hsup0", "type", "veth", "peer", "name", "hsup1"], check=True)
        subprocess.run(
            [*ip, "add", "hsdown0", "type", "veth", "peer", "name", "hsdown1"], check=True
        )
        for dev in ("hsup0", "hsup1"):
            subprocess.run([*ip, "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _routes(ns: str, family: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", ns, family, "route", "show", "proto", "boot"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {line.split()[0] for line in out.stdout.splitlines()}


def _step(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(proc.stderr.read() if proc.stderr else "child died")
    answer: dict[str, object] = json.loads(line)
    return answer


def test_routes_added_removed_and_refusals_counted(ns: str) -> None:
    # the last one again: a replace, not an error
    nets = ["203.0.113.0/24", "198.51.100.0/25", "2001:db8:1::/64", "203.0.113.0/24"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, *nets],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        assert _step(proc) == {"installed": sorted(set(nets)), "failed": 0}
        assert _routes(ns, "-4") == {"203.0.113.0/24", "198.51.100.0/25"}
        assert _routes(ns, "-6") == {"2001:db8:1::/64"}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert _step(proc) == {"installed": [], "failed": 1}
        assert _routes(ns, "-4") == {"198.51.100.0/25"}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
        assert _routes(ns, "-4") == set() and _routes(ns, "-6") == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
