"""The few rtnetlink requests the daemon makes (routes into its TUN), standard library only.

Importing pyroute2 0.9 imports all of it (its ``__init__`` pulls in NDB, IPDB,
conntrack, nftables, wireless...): about 20 MB of RSS and 0.2 s of CPU at every
start, for two messages. This module speaks them itself, with the names
:mod:`tunneld.routes` used from pyroute2 (``IPRoute.route``, ``link_lookup``,
``NetlinkError.code``).

Messages (RFC 3549 §2.3, ``<linux/netlink.h>``, ``<linux/rtnetlink.h>``): a
``nlmsghdr``, a ``rtmsg``, then attributes ``RTA_DST`` (the packed network
address) and ``RTA_OIF`` (the interface index). Every request asks for an ACK
and waits for it: an ``NLMSG_ERROR`` whose error is 0, or ``-errno``.
The routes look as pyroute2 made them: table main, ``proto static``, scope
global, unicast.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

# <linux/netlink.h>
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
# <linux/rtnetlink.h>
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST, RTA_OIF = 1, 4

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_ERROR = struct.Struct("=i")
_FLAGS = {
    "replace": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    "add": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
    "del": NLM_F_REQUEST | NLM_F_ACK,
}
_TIMEOUT = 5.0  # seconds for the kernel's ACK (it answers at once)
SIOCSIFTXQLEN = 0x8943  # <linux/sockios.h>: set an interface's transmit queue length
_IFREQ_INT = struct.Struct("16si")  # struct ifreq: name, then an int (ifr_qlen)


class NetlinkError(OSError):
    """The kernel refused a request; ``code`` is the errno (as pyroute2's)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))
        self.code = code


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + bytes(-length & 3)


def route_message(op: str, dst: str, oif: int, seq: int) -> bytes:
    """The ``RTM_NEWROUTE``/``RTM_DELROUTE`` request for ``op`` (replace, add, del)."""
    net = ipaddress.ip_network(dst, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(
        family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
        RTN_UNICAST, 0,
    )  # fmt: skip
    body += _attr(RTA_DST, net.network_address.packed) + _attr(RTA_OIF, struct.pack("=I", oif))
    kind = RTM_DELROUTE if op == "del" else RTM_NEWROUTE
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _FLAGS[op], seq, 0) + body


def ack_error(data: bytes, seq: int) -> int | None:
    """The errno of the ACK for ``seq`` in ``data`` (0: done), None if it is not there."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and got_seq == seq and length >= _NLMSGHDR.size + _ERROR.size:
            code: int = _ERROR.unpack_from(data, offset + _NLMSGHDR.size)[0]
            return -code
        offset += (length + 3) & ~3
    return None


class IPRoute:
    """A NETLINK_ROUTE socket in the current network namespace (opened at once: before
    a privilege drop, like pyroute2's)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(_TIMEOUT)
        self._seq = 0

    def link_lookup(self, *, ifname: str) -> list[int]:
        """``[index]`` of the interface, or ``[]`` (pyroute2's shape)."""
        try:
            return [socket.if_nametoindex(ifname)]
        except OSError:
            return []

    def route(self, op: str, *, dst: str, oif: int) -> None:
        """Replace, add or delete the route to ``dst`` through interface ``oif``;
        :class:`NetlinkError` if the kernel refuses."""
        self._seq += 1
        seq = self._seq
        self._sock.send(route_message(op, dst, oif, seq))
        while True:
            try:
                code = ack_error(self._sock.recv(65536), seq)
            except TimeoutError:
                raise NetlinkError(errno.ETIMEDOUT) from None
            if code is not None:
                break
        if code:
            raise NetlinkError(code)

    def close(self) -> None:
        self._sock.close()


def set_txqueuelen(ifname: str, length: int) -> None:
    """``ip link set IFNAME txqueuelen LENGTH`` (an ioctl: OSError if refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFTXQLEN, _IFREQ_INT.pack(ifname.encode(), length))
