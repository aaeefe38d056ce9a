"""A hub-and-spoke lab in network namespaces (issue 10), built here rather than by
netns-scripts/lab.sh (which makes the fixed two-site lab)::

    PREFIX-hub  192.0.2.1    (site address 198.51.100.1)      all on the bridge
    PREFIX-g1   192.0.2.11   (site address 203.0.113.17)      in PREFIX-wan
    PREFIX-g2   192.0.2.12   (site address 203.0.113.33)
    PREFIX-g3   192.0.2.13   (site address 203.0.113.49)

Each site is one address (a /32 on lo) inside its gateway's namespace, so
that traffic between sites leaves only through the tunnels; the hub forwards
(spoke -> hub -> spoke). Addresses: tests/helpers/hubs.py. :func:`hub_lab`
tears everything down on the way out (processes inside first), also on failure,
and checks that no namespace is left.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from tests.helpers.hubs import HUB_SITE, HUB_UNDERLAY, spoke_site, spoke_underlay
from tools.lab import Lab, unique_prefix

STEM = "hb"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _first_host(net: str) -> str:
    """The site's one address (a /32 on lo: the rest of the site is only routed)."""
    base, _ = net.split("/")
    head, last = base.rsplit(".", 1)
    return f"{head}.{int(last) + 1}/32"


class HubLab(Lab):
    """tools.lab.Lab's run/popen on the hub-and-spoke topology above."""

    def __init__(self, prefix: str, spokes: int = 3) -> None:
        super().__init__(prefix)
        self.nodes = ["hub", *(f"g{k}" for k in range(1, spokes + 1))]

    def up(self) -> None:
        wan = self.ns("wan")
        for node in ("wan", *self.nodes):
            _ip("netns", "add", self.ns(node))
            _ip("-n", self.ns(node), "link", "set", "lo", "up")
        _ip("-n", wan, "link", "add", "br0", "type", "bridge")
        _ip("-n", wan, "link", "set", "br0", "up")
        for node in self.nodes:
            under = HUB_UNDERLAY if node == "hub" else spoke_underlay(int(node[1:]))
            site = _first_host(HUB_SITE if node == "hub" else spoke_site(int(node[1:])))
            ns = self.ns(node)
            _ip(
                "-n",
                wan,
                "link",
                "add",
                f"p-{node}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", wan, "link", "set", f"p-{node}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{under}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "addr", "add", site, "dev", "lo")
            for key, value in (
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
            ):
                self.run(node, "sysctl", "-qw", f"{key}={value}")

    def down(self) -> None:
        for node in ("wan", *self.nodes):
            ns = self.ns(node)
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:  # processes this lab started inside its own namespaces
                with contextlib.suppress(OSError, ValueError):
                    subprocess.run(["kill", "-9", pid], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def namespaces_left(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        names = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
        return sorted(n for n in names if n.startswith(self.prefix + "-"))


@contextlib.contextmanager
def hub_lab(spokes: int = 3, stem: str = STEM) -> Iterator[HubLab]:
    lab = HubLab(unique_prefix(stem), spokes)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        left = lab.namespaces_left()
        assert not left, f"namespaces left behind: {left}"
