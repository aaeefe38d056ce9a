"""Routes to the remote subnets through the TUN device.

A route exists exactly while a Child SA for its selector is installed: the
daemon adds it on ``ChildSaUp`` and removes it on ``ChildSaDown`` and at
shutdown. :class:`KernelRoutes` talks rtnetlink itself; :class:`MemoryRoutes`
is its twin for daemon tests without root.

Why not pyroute2 here: each of its calls runs an asyncio loop, builds and
parses the message in Python objects and waits for the kernel's answer, about
1 ms per route, on the handshake path of every Child SA (a hub with a burst of
spokes pays it per spoke). :class:`KernelRoutes` instead writes one fixed-size
``RTM_NEWROUTE``/``RTM_DELROUTE`` (``struct rtmsg`` plus ``RTA_DST`` and
``RTA_OIF``) to a non-blocking netlink socket, which the kernel executes during
the ``send``, and asks for acknowledgements without waiting for them:

1. ``add``/``remove`` send the request and go on; the kernel's answers queue
   on the socket.
2. Each call first drains the answers that are there (non-blocking), so a
   failure is logged and counted (``failed``) one call later at most;
   ``close`` removes what is left and then waits (bounded) for every answer.
3. ``installed()`` is what was asked for, as before; a refused route is
   dropped from it when its error arrives.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct
from typing import Protocol

log = logging.getLogger("tunneld.routes")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# <linux/netlink.h>, <linux/rtnetlink.h>
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` and pyroute2 use
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST, RTA_OIF = 1, 4
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLMSGERR = struct.Struct("=i")  # error (negative errno; 0: acknowledgement)
CLOSE_WAIT = 2.0  # seconds close() waits for the last answers


class RouteTable(Protocol):
    def add(self, net: Network) -> None: ...
    def remove(self, net: Network) -> None: ...
    def installed(self) -> set[Network]: ...
    def close(self) -> None: ...


def _rta(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def route_message(kind: int, net: Network, oif: int, seq: int) -> bytes:
    """One RTM_NEWROUTE (create or replace) or RTM_DELROUTE for ``net`` via ``oif``,
    in the main table, acknowledgement requested."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    rtmsg = _RTMSG.pack(
        family, net.prefixlen, 0, 0, RT_TABLE_MAIN,
        RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0,
    )  # fmt: skip
    attrs = _rta(RTA_DST, net.network_address.packed) + _rta(RTA_OIF, struct.pack("=I", oif))
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWROUTE:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    body = rtmsg + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def parse_answers(data: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno) of each NLMSG_ERROR in one netlink datagram (errno 0:
    an acknowledgement); other and truncated messages are skipped."""
    answers = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if kind == NLMSG_ERROR and length >= _NLMSGHDR.size + _NLMSGERR.size:
            (error,) = _NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)
            answers.append((seq, -error))
        offset += (length + 3) & ~3
    return answers


class KernelRoutes:
    """Routes via rtnetlink in the daemon's network namespace, bound to one device."""

    def __init__(self, ifname: str) -> None:
        try:
            self._oif = socket.if_nametoindex(ifname)
        except OSError:
            raise OSError(f"no such network device: {ifname}") from None
        self._ifname = ifname
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.setblocking(False)
        self._sock.bind((0, 0))
        self._seq = itertools.count(1)
        self._pending: dict[int, tuple[int, Network]] = {}  # seq -> (kind, net)
        self._routes: set[Network] = set()
        self.failed = 0

    def add(self, net: Network) -> None:
        self._request(RTM_NEWROUTE, net)
        self._routes.add(net)
        log.debug("route added", extra={"dst": str(net), "dev": self._ifname})

    def remove(self, net: Network) -> None:
        if net not in self._routes:
            return
        self._routes.discard(net)
        self._request(RTM_DELROUTE, net)
        log.debug("route removed", extra={"dst": str(net), "dev": self._ifname})

    def installed(self) -> set[Network]:
        self._drain()
        return set(self._routes)

    def close(self) -> None:
        for net in list(self._routes):
            self.remove(net)
        self._sock.settimeout(CLOSE_WAIT)
        try:
            while self._pending:
                self._answered(self._sock.recv(65536))
        except OSError:  # timed out, or the namespace is going away
            pass
        finally:
            self._sock.close()

    def _request(self, kind: int, net: Network) -> None:
        self._drain()
        seq = next(self._seq)
        try:
            self._sock.send(route_message(kind, net, self._oif, seq))
        except OSError as exc:  # ENOBUFS: the kernel's answers were not read in time
            self._failed(kind, net, exc.errno or errno.EIO)
            return
        self._pending[seq] = (kind, net)

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: answers overflowed; the routes stand
                log.debug("route answers lost", extra={"errno": exc.errno})
                self._pending.clear()
                return
            self._answered(data)

    def _answered(self, data: bytes) -> None:
        for seq, error in parse_answers(data):
            request = self._pending.pop(seq, None)
            if request is not None and error:
                self._failed(*request, error)

    def _failed(self, kind: int, net: Network, error: int) -> None:
        if kind == RTM_DELROUTE:  # already gone (device removed, admin)
            log.debug("route delete failed", extra={"dst": str(net), "errno": error})
            return
        self.failed += 1
        self._routes.discard(net)
        log.warning(
            "route add failed",
            extra={"dst": str(net), "dev": self._ifname, "error": os.strerror(error)},
        )


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
