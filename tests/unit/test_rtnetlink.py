"""tunneld.rtnetlink: the route requests, decoded by pyroute2 (the oracle: what the
daemon used before), and the kernel's ACKs."""

from __future__ import annotations

import errno
import struct

import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tunneld.rtnetlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    ack_error,
    route_message,
)


@pytest.mark.parametrize(
    ("dst", "family", "prefix", "address"),
    [("203.0.113.0/24", 2, 24, "203.0.113.0"), ("2001:db8::/32", 10, 32, "2001:db8::")],
)
def test_route_replace_decodes_as_a_static_unicast_route(
    dst: str, family: int, prefix: int, address: str
) -> None:
    data = route_message("replace", dst, 7, 42)
    msg = rtmsg(data)
    msg.decode()
    assert msg["header"]["length"] == len(data)
    assert msg["header"]["type"] == RTM_NEWROUTE
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    assert msg["header"]["sequence_number"] == 42
    assert (msg["family"], msg["dst_len"], msg["table"]) == (family, prefix, 254)
    assert (msg["proto"], msg["scope"], msg["type"]) == (4, 0, 1)  # static, global, unicast
    assert msg.get_attr("RTA_DST") == address
    assert msg.get_attr("RTA_OIF") == 7


def test_route_delete() -> None:
    msg = rtmsg(route_message("del", "198.51.100.0/24", 3, 1))
    msg.decode()
    assert msg["header"]["type"] == RTM_DELROUTE
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert msg.get_attr("RTA_DST") == "198.51.100.0"


def _ack(seq: int, error: int) -> bytes:
    original = struct.pack("=IHHII", 16, RTM_NEWROUTE, 0, seq, 0)
    return (
        struct.pack("=IHHII", 16 + 4 + 16, NLMSG_ERROR, 0, seq, 0)
        + struct.pack("=i", error)
        + original
    )


def test_acks_are_matched_by_sequence() -> None:
    assert ack_error(_ack(5, 0), 5) == 0
    assert ack_error(_ack(5, -errno.ESRCH), 5) == errno.ESRCH
    assert ack_error(_ack(4, 0) + _ack(5, -errno.EPERM), 5) == errno.EPERM
    assert ack_error(_ack(4, 0), 5) is None
    assert ack_error(b"\x01\x00", 5) is None  # a runt: nothing to match
    assert ack_error(struct.pack("=IHHII", 0, NLMSG_ERROR, 0, 5, 0), 5) is None  # length 0
