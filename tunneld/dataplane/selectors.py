"""Traffic selectors of one tunnel and the inbound policy check (RFC 4301 §5.2).

A packet that leaves an inbound SA must come from the tunnel's *remote*
networks and go to its *local* ones (the peer could otherwise send anything
with any keys it holds). :class:`InboundPolicy` decides that for the packed
source || destination of an inner packet and caches the verdict, so the
packet path pays one dict lookup:

- the key is an int for IPv4 (``source || destination`` as 64 bits, one
  unpack), the 32 bytes for IPv6 (an int and a bytes key never compare equal);
- ``verdicts`` is read directly by the hot path
  (:meth:`tunneld.dataplane.sa.InboundSA.open_batch`), :meth:`verdict` fills
  it on a miss; it is bounded (FIFO eviction) and the SADatabase clears it on
  every configuration change.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network

Network = IPv4Network | IPv6Network
Key = int | bytes  # see the module docstring
Rules = dict[int, tuple[tuple[int, int], ...]]  # version -> ((network, mask), ...)


def networks(selectors: Iterable[str | Network]) -> tuple[Network, ...]:
    """Parse selectors (at least one) into networks."""
    # a Network as it is (ip_network of an IPv6Network tries IPv4 first, raising)
    nets = tuple(
        s if isinstance(s, IPv4Network | IPv6Network) else ip_network(s) for s in selectors
    )
    if not nets:
        raise ValueError("a tunnel needs at least one selector on each side")
    return nets


def rules(nets: tuple[Network, ...]) -> Rules:
    by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for net in nets:
        by_version[net.version].append((int(net.network_address), int(net.netmask)))
    return {version: tuple(pairs) for version, pairs in by_version.items()}


def contains(pairs: tuple[tuple[int, int], ...], address: bytes) -> bool:
    value = int.from_bytes(address, "big")
    return any(value & mask == network for network, mask in pairs)


class InboundPolicy:
    """Source in the remote selectors, destination in the local ones; verdicts cached."""

    __slots__ = ("_limit", "_local", "_remote", "verdicts")

    def __init__(self, local: tuple[Network, ...], remote: tuple[Network, ...], limit: int) -> None:
        self._local = rules(local)
        self._remote = rules(remote)
        self._limit = limit
        self.verdicts: dict[Key, bool] = {}

    def admits(self, version: int, source: bytes, destination: bytes) -> bool:
        """The check itself, for packed addresses of IP ``version`` (4 or 6)."""
        return contains(self._remote[version], source) and contains(
            self._local[version], destination
        )

    def verdict(self, key: Key) -> bool:
        """The verdict for a key that is not cached yet; caches it."""
        if isinstance(key, int):
            version, addresses = 4, key.to_bytes(8, "big")
        else:
            version, addresses = 6, key
        half = len(addresses) // 2
        allowed = self.admits(version, addresses[:half], addresses[half:])
        verdicts = self.verdicts
        if len(verdicts) >= self._limit:
            del verdicts[next(iter(verdicts))]
        verdicts[key] = allowed
        return allowed
