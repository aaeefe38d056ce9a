"""Routes to the remote subnets through the TUN device.

A route exists exactly while a Child SA for its selector is installed: the
daemon adds it on ``ChildSaUp`` and removes it on ``ChildSaDown`` and at
shutdown. :class:`KernelRoutes` talks netlink (:mod:`tunneld.rtnetlink`); :class:`MemoryRoutes`
is its twin for daemon tests without root.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Protocol

from tunneld.rtnetlink import IPRoute, NetlinkError  # not pyroute2: see tunneld.rtnetlink

log = logging.getLogger("tunneld.routes")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RouteTable(Protocol):
    def add(self, net: Network) -> None: ...
    def remove(self, net: Network) -> None: ...
    def installed(self) -> set[Network]: ...
    def close(self) -> None: ...


class KernelRoutes:
    """Routes via netlink in the daemon's network namespace, bound to one device."""

    def __init__(self, ifname: str) -> None:
        self._ipr = IPRoute()
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            self._ipr.close()
            raise OSError(f"no such network device: {ifname}")
        self._oif = found[0]
        self._ifname = ifname
        self._routes: set[Network] = set()

    def add(self, net: Network) -> None:
        self._ipr.route("replace", dst=str(net), oif=self._oif)
        self._routes.add(net)
        log.info("route added", extra={"dst": str(net), "dev": self._ifname})

    def remove(self, net: Network) -> None:
        if net not in self._routes:
            return
        self._routes.discard(net)
        try:
            self._ipr.route("del", dst=str(net), oif=self._oif)
        except NetlinkError as exc:  # already gone (device removed, admin)
            log.debug("route delete failed", extra={"dst": str(net), "errno": exc.code})
        log.info("route removed", extra={"dst": str(net), "dev": self._ifname})

    def installed(self) -> set[Network]:
        return set(self._routes)

    def close(self) -> None:
        for net in list(self._routes):
            self.remove(net)
        self._ipr.close()


class MemoryRoutes:
    """In-memory twin: records what would be routed into the TUN."""

    def __init__(self) -> None:
        self._routes: set[Network] = set()

    def add(self, net: Network) -> None:
        self._routes.add(net)

    def remove(self, net: Network) -> None:
        self._routes.discard(net)

    def installed(self) -> set[Network]:
        return set(self._routes)

    def close(self) -> None:
        self._routes.clear()
