"""The lab topology for interop tests, built with `ip` (a stand-in for
netns-scripts/lab.sh, which will replace it with the same names and addresses).

    PREFIX-a ---- PREFIX-gwa ==== PREFIX-wan (bridge) ==== PREFIX-gwb ---- PREFIX-b
    198.51.100.10  198.51.100.1    192.0.2.0/24             203.0.113.1     203.0.113.10
                   192.0.2.1                                192.0.2.2

The gateways forward but have no route to the far site: site-to-site traffic
only passes through a tunnel.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SITE_A_HOST, SITE_A_GW, SITE_A_NET = "198.51.100.10", "198.51.100.1", "198.51.100.0/24"
SITE_B_HOST, SITE_B_GW, SITE_B_NET = "203.0.113.10", "203.0.113.1", "203.0.113.0/24"
WAN_A, WAN_B = "192.0.2.1", "192.0.2.2"
ROLES = ("a", "gwa", "wan", "gwb", "b")


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def netns_list() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


@dataclass(frozen=True)
class Lab:
    prefix: str

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def exec(self, role: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *cmd],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip

    def ping(self, role: str, dst: str, count: int = 3, timeout: float = 1.0) -> int:
        """Send `count` ICMP echo requests from `role`; return the replies seen."""
        proc = self.exec(
            role, sys.executable, "-c", _PING, dst, str(count), str(timeout),
            timeout=count * timeout + 10,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"ping helper failed: {proc.stderr.strip()}")
        return int(proc.stdout.strip())


def _veth(lab: Lab, left: str, left_dev: str, right: str, right_dev: str) -> None:
    ip("link", "add", left_dev, "netns", lab.ns(left), "type", "veth",
       "peer", "name", right_dev, "netns", lab.ns(right))  # fmt: skip
    ip("-n", lab.ns(left), "link", "set", left_dev, "up")
    ip("-n", lab.ns(right), "link", "set", right_dev, "up")


def _addr(lab: Lab, role: str, dev: str, cidr: str) -> None:
    ip("-n", lab.ns(role), "addr", "add", cidr, "dev", dev)


def _build(lab: Lab) -> None:
    for role in ROLES:
        ip("netns", "add", lab.ns(role))
        ip("-n", lab.ns(role), "link", "set", "lo", "up")
    ip("-n", lab.ns("wan"), "link", "add", "br0", "type", "bridge")
    ip("-n", lab.ns("wan"), "link", "set", "br0", "up")
    _veth(lab, "a", "eth0", "gwa", "lan0")
    _veth(lab, "gwa", "wan0", "wan", "pa")
    _veth(lab, "gwb", "wan0", "wan", "pb")
    _veth(lab, "b", "eth0", "gwb", "lan0")
    for port in ("pa", "pb"):
        ip("-n", lab.ns("wan"), "link", "set", port, "master", "br0")
    _addr(lab, "a", "eth0", f"{SITE_A_HOST}/24")
    _addr(lab, "gwa", "lan0", f"{SITE_A_GW}/24")
    _addr(lab, "gwa", "wan0", f"{WAN_A}/24")
    _addr(lab, "gwb", "wan0", f"{WAN_B}/24")
    _addr(lab, "gwb", "lan0", f"{SITE_B_GW}/24")
    _addr(lab, "b", "eth0", f"{SITE_B_HOST}/24")
    ip("-n", lab.ns("a"), "route", "add", "default", "via", SITE_A_GW)
    ip("-n", lab.ns("b"), "route", "add", "default", "via", SITE_B_GW)
    for gw in ("gwa", "gwb"):
        lab.exec(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1").check_returncode()


@contextmanager
def lab_topology(prefix: str | None = None) -> Iterator[Lab]:
    """Build the five namespaces; delete them on exit and check they are gone."""
    lab = Lab(prefix or f"hsw{secrets.token_hex(3)}")
    try:
        _build(lab)
        yield lab
    finally:
        for role in ROLES:
            subprocess.run(["ip", "netns", "del", lab.ns(role)], capture_output=True, check=False)
        left = {n for n in netns_list() if n.startswith(f"{lab.prefix}-")}
        if left:
            raise RuntimeError(f"namespaces left behind: {sorted(left)}")


# Runs inside a namespace as root: raw ICMP socket, prints the reply count.
_PING = r"""
import os, socket, struct, sys, time
dst, count, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, replies = os.getpid() & 0xFFFF, 0
for seq in range(1, count + 1):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tunneld-interop!" * 3
    sock.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (dst, 0))
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            break
        ihl = (data[0] & 15) * 4
        if data[ihl] == 0 and struct.unpack("!HH", data[ihl + 4 : ihl + 8]) == (ident, seq):
            replies += 1
            break
print(replies)
"""
