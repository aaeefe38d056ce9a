"""Traffic selectors (RFC 7296 §2.9): narrowing on the responder, checking on the initiator.

A selector is an address range plus an IP protocol (0 = any) and a port range
(:class:`ike.payloads.TrafficSelector`). Configuration speaks in networks;
the wire speaks in ranges. Both directions of conversion live here, and the
two checks of §2.9:

- the responder intersects what was proposed with what it is configured for
  (narrowing: it may answer with a subset, never with more); nothing in
  common is TS_UNACCEPTABLE;
- the initiator checks that every selector in the answer lies inside one it
  proposed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from ike.errors import TsUnacceptable
from ike.events import IPNetwork
from ike.payloads import TrafficSelector

ANY_PROTOCOL = 0  # §3.13.1: IP Protocol ID 0 means "any"
ALL_PORTS = (0, 65535)  # §3.13.1


def from_networks(networks: Iterable[IPNetwork]) -> tuple[TrafficSelector, ...]:
    """Selectors covering each network, any protocol, all ports."""
    return tuple(TrafficSelector.from_network(n) for n in networks)


def to_networks(selectors: Iterable[TrafficSelector]) -> tuple[IPNetwork, ...]:
    """The smallest list of networks covering the selectors' address ranges.

    The data plane routes by destination network only; protocol and port
    narrowing (which tunneld never proposes) is not represented.
    """
    out: list[IPNetwork] = []
    for ts in selectors:
        for net in _summarize(ts):
            if net not in out:
                out.append(net)
    return tuple(out)


def _summarize(ts: TrafficSelector) -> tuple[IPNetwork, ...]:
    return _summarize_range(ts.start_addr, ts.end_addr)


@functools.lru_cache(maxsize=1024)  # a hub sees its own selectors in every IKE_AUTH
def _summarize_range(
    start: ipaddress.IPv4Address | ipaddress.IPv6Address,
    end: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[IPNetwork, ...]:
    if isinstance(start, ipaddress.IPv4Address) and isinstance(end, ipaddress.IPv4Address):
        return tuple(ipaddress.summarize_address_range(start, end))
    if isinstance(start, ipaddress.IPv6Address) and isinstance(end, ipaddress.IPv6Address):
        return tuple(ipaddress.summarize_address_range(start, end))
    return ()  # TrafficSelector refuses mixed versions


def _intersect_protocol(a: int, b: int) -> int | None:
    if a == ANY_PROTOCOL:
        return b
    if b in (ANY_PROTOCOL, a):
        return a
    return None


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both ``a`` and ``b`` allow, or None when they share nothing."""
    if a.start_addr.version != b.start_addr.version:
        return None
    # Same version: compare as integers, rebuild as addresses of that version.
    start = max(int(a.start_addr), int(b.start_addr))
    end = min(int(a.end_addr), int(b.end_addr))
    proto = _intersect_protocol(a.ip_protocol, b.ip_protocol)
    low, high = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start > end or proto is None or low > high:
        return None
    version = a.start_addr.version
    return TrafficSelector(
        ipaddress.IPv4Address(start) if version == 4 else ipaddress.IPv6Address(start),
        ipaddress.IPv4Address(end) if version == 4 else ipaddress.IPv6Address(end),
        proto,
        low,
        high,
    )


def contains(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    """Whether every packet ``inner`` allows is allowed by ``outer``."""
    return intersect(outer, inner) == inner


def narrow(
    proposed: Sequence[TrafficSelector], configured: Sequence[TrafficSelector], side: str
) -> tuple[TrafficSelector, ...]:
    """Responder side of §2.9: what both allow, in our configured order.

    When the initiator proposes more than we are configured for, the answer is
    exactly our configuration; when it proposes less, the answer is its subset.
    """
    out: list[TrafficSelector] = []
    for mine in configured:
        for theirs in proposed:
            common = intersect(mine, theirs)
            if common is not None and common not in out:
                out.append(common)
    if not out:
        raise TsUnacceptable(
            f"{side}: proposed {describe(proposed)} has nothing in common with "
            f"configured {describe(configured)}"
        )
    return tuple(out)


def check_subset(
    answered: Sequence[TrafficSelector], proposed: Sequence[TrafficSelector], side: str
) -> None:
    """Initiator side of §2.9: the answer may narrow what we proposed, never widen it."""
    if not answered:
        raise TsUnacceptable(f"{side}: empty traffic selector list in the answer")
    for ts in answered:
        if not any(contains(mine, ts) for mine in proposed):
            raise TsUnacceptable(
                f"{side}: answered {describe([ts])} is not inside proposed {describe(proposed)}"
            )


def describe(selectors: Iterable[TrafficSelector]) -> str:
    """Human-readable selectors for logs and error messages (not secret)."""
    parts = []
    for ts in selectors:
        text = f"{ts.start_addr}-{ts.end_addr}"
        if ts.ip_protocol != ANY_PROTOCOL or (ts.start_port, ts.end_port) != ALL_PORTS:
            text += f"[{ts.ip_protocol}/{ts.start_port}-{ts.end_port}]"
        parts.append(text)
    return ", ".join(parts) or "none"
