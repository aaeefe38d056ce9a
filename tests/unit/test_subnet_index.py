"""tunneld.directory.SubnetIndex: the spokes holding a subnet that overlaps a claim,
found without walking every spoke, the same answer as a walk with ``overlaps``."""

from __future__ import annotations

import ipaddress
import random

from tunneld.directory import Network, SubnetIndex


def net(text: str) -> Network:
    return ipaddress.ip_network(text)


def test_equal_inside_and_around_are_found_other_families_are_not() -> None:
    index = SubnetIndex()
    index.add("s1", (net("203.0.113.0/28"),))
    index.add("s2", (net("203.0.113.64/26"), net("2001:db8:1::/64")))
    assert index.overlapping(net("203.0.113.0/28")) == {"s1"}
    assert index.overlapping(net("203.0.113.8/29")) == {"s1"}  # inside s1's
    assert index.overlapping(net("203.0.113.0/24")) == {"s1", "s2"}  # around both
    assert index.overlapping(net("203.0.113.32/28")) == set()
    assert index.overlapping(net("2001:db8::/32")) == {"s2"}
    assert index.overlapping(net("2001:db8:1:1::/64")) == set()
    index.remove("s2", (net("203.0.113.64/26"), net("2001:db8:1::/64")))
    assert index.overlapping(net("203.0.113.0/24")) == {"s1"}
    assert index.overlapping(net("2001:db8::/32")) == set()


def test_agrees_with_a_walk_over_random_holdings() -> None:
    rng = random.Random(12)
    held: dict[str, tuple[Network, ...]] = {}
    index = SubnetIndex()
    for k in range(300):
        length = rng.choice((24, 26, 28, 30, 32))
        addr = ipaddress.IPv4Address(0xCB007100 + rng.randrange(256))  # 203.0.113.x
        nets = (ipaddress.ip_network(f"{addr}/{length}", strict=False),)
        held[f"s{k}"] = nets
        index.add(f"s{k}", nets)
    for k in range(0, 300, 3):  # some spokes leave
        index.remove(f"s{k}", held.pop(f"s{k}"))
    for _ in range(200):
        length = rng.choice((23, 24, 25, 27, 29, 31, 32))
        addr = ipaddress.IPv4Address(0xCB007100 + rng.randrange(256))
        claim = ipaddress.ip_network(f"{addr}/{length}", strict=False)
        walk = {n for n, nets in held.items() if any(claim.overlaps(h) for h in nets)}
        assert index.overlapping(claim) == walk
