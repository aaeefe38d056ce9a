"""The lab of the netns and interop tests: netns-scripts/lab.sh (tools.lab.Lab) plus helpers.

    PREFIX-a ---- PREFIX-gwa ==== PREFIX-wan (bridge) ==== PREFIX-gwb ---- PREFIX-b
    198.51.100.10  198.51.100.1    192.0.2.0/24             203.0.113.1     203.0.113.10
                   192.0.2.1                                192.0.2.2

The gateways forward but have no route to the far site: site-to-site traffic
only passes through a tunnel. :func:`lab_topology` brings the lab up and, on
the way out, tears it down (lab.sh kills whatever still runs inside) and
checks that no namespace of it is left; the ``lab`` fixture
(tests/helpers/fixtures.py) is built on it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.lab import (
    GWA_UNDERLAY,
    GWB_UNDERLAY,
    HOST_A,
    HOST_B,
    LAB_SH,
    REPO,
    SITE_A,
    SITE_B,
    unique_prefix,
)
from tools.lab import Lab as _Lab

SITE_A_HOST, SITE_A_NET = HOST_A, SITE_A
SITE_B_HOST, SITE_B_NET = HOST_B, SITE_B
WAN_A, WAN_B = GWA_UNDERLAY, GWB_UNDERLAY
ROLES = ("a", "gwa", "wan", "gwb", "b")
PREFIX_STEM = "hlab"  # namespace names: hlabXXXX-{a,gwa,wan,gwb,b} (suites pick their own)


def run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, raise with its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


class Lab(_Lab):
    """tools.lab.Lab with the unchecked ``exec`` and ``ping`` the tests use."""

    def up(self) -> None:
        """lab.sh up; on failure, an error that shows lab.sh's output."""
        proc = subprocess.run(
            ["bash", str(LAB_SH), "up", self.prefix], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"lab.sh up {self.prefix} failed:\n{proc.stdout}{proc.stderr}")

    def exec(self, role: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return self.run(role, *cmd, check=False, timeout=timeout)

    def ping(self, role: str, dst: str, count: int = 3, timeout: float = 1.0) -> int:
        """Send ``count`` ICMP echo requests from ``role``; return the replies seen."""
        proc = self.exec(
            role, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(timeout), dst,
            timeout=count * (0.2 + timeout) + 10,
        )  # fmt: skip
        found = re.search(r"(\d+) received", proc.stdout)
        if found is None:
            raise RuntimeError(f"ping from {role} failed: {proc.stdout}{proc.stderr}")
        return int(found.group(1))

    def namespaces_left(self) -> list[str]:
        return sorted(n for n in netns_list() if n.startswith(f"{self.prefix}-"))


@contextmanager
def lab_topology(prefix: str | None = None, stem: str = PREFIX_STEM) -> Iterator[Lab]:
    """Bring the five namespaces up (``prefix``, else ``stem`` + random); tear them down
    on exit and check they are gone."""
    lab = Lab(prefix or unique_prefix(stem))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        left = lab.namespaces_left()
        if left:
            raise RuntimeError(f"namespaces left behind: {left}")


def processes_mentioning(text: str | Path) -> list[int]:
    """Pids whose command line contains ``text`` (a leak check for a test's directory)."""
    needle = str(text).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found
