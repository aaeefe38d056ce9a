"""The SA database: which SA seals an inner packet, which SA opens an ESP packet.

Theory of operation:

1. A :class:`Tunnel` is a selector pair (local networks, remote networks)
   toward one peer address, with up to three outbound SAs: ``previous``,
   ``current`` and ``next`` (make-before-break, as WireGuard's keypairs).
   Only ``current`` seals packets. Inbound SAs belong to a tunnel and are
   found by SPI; every inbound SA of a tunnel (old and new) is valid at once,
   so packets in flight during a rekey still decrypt.
2. Outbound: the inner destination address picks the tunnel whose *remote*
   selectors contain it, longest prefix first, IPv4 and IPv6 alike (the
   version nibble says which), and the source must lie in that tunnel's
   *local* selectors, else NO_POLICY (RFC 4301 §5.1: no SPD entry matches,
   discard). Without the source check, anything the kernel routes into the
   TUN toward a remote subnet was sealed: the gateway's own IKE replies to a
   spoofed remote-site address (a COOKIE flood reflected into the tunnel,
   one ESP packet per spoofed request). Results (also "no tunnel") are cached
   in a bounded dict keyed by source||destination (an int for IPv4, which
   one unpack yields, the 32 bytes for IPv6).
3. Inbound: SPI -> InboundSA (else UNKNOWN_SPI) -> decrypt -> the next header
   must match the inner version (4 <-> IPv4, 41 <-> IPv6, else MALFORMED) ->
   the inner source must lie in the tunnel's remote selectors and the
   destination in its local selectors (else NO_POLICY, RFC 4301 §5.2).
   Verdicts are cached per tunnel, keyed by source||destination (an int for
   IPv4, the 32 bytes for IPv6).
4. State changes only through the methods of :class:`SADatabase`
   (``add_tunnel``, ``remove_tunnel``, ``set_peer``, ``add_inbound``,
   ``remove_inbound``, ``install_next``, ``promote``, ``demote``,
   ``retire_previous``). The lookup caches hold what the selectors decide (a
   tunnel for an address pair, a tunnel's inbound verdict), never an SA or a
   peer address: only ``add_tunnel`` and ``remove_tunnel`` change selectors, so
   only they clear the outbound cache, and a tunnel's verdicts live and die with
   it. SA and address changes clear nothing (a hub installs a Child SA per
   handshake among thousands of tunnels). Tunnel attributes are for reading.
   ``encapsulate``/``decapsulate`` change only counters, sequence numbers,
   replay windows and ``Tunnel.heard_from`` (rule 7). All methods are
   synchronous, so under trio each call is atomic.
5. Every drop is raised as ``EspDrop`` and counted twice: in the SA that
   refused the packet (if any) and in ``SADatabase.drops``.
6. The packet pumps make one call per batch, zero-copy: ``encapsulate_batch``
   seals the packets read from the TUN back to back into one buffer, laid out
   as runs (consecutive packets to one peer, equal lengths, the last may be
   shorter: what one UDP GSO send carries), see ``OutboundSA.seal_into``;
   ``decapsulate_batch`` opens received packets back to back into one buffer,
   see ``InboundSA.open_batch``. ``encapsulate``/``decapsulate`` are
   one-packet batches for callers that want bytes.
7. Address changes (RFC 7296 §2.23, RFC 3948, as WireGuard roams): given the
   packets' UDP sources, ``decapsulate_batch`` looks, once per run of one
   SPI, at the source of the run's last packet that raised the SA's replay
   window (authentic, not a replay, the newest: ``InboundSA.newest``). If it
   differs from the tunnel's peer address and from what was last reported,
   ``on_move(tunnel, source)`` is called, once, and nothing else changes:
   the owner (the peer task) decides and moves every SA of the peer through
   ``set_peer``. A forged packet (bad ICV) or a replayed one never gets here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

from tunneld.dataplane.drops import DropReason, EspDrop, zero_counters
from tunneld.dataplane.esp import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    OVERHEAD,
    TRAILER_MAX,
    TRAILER_MIN,
    Buffer,
    sealed_len,
)
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.selectors import InboundPolicy, Key, Network, contains, networks, rules

PeerAddress = tuple[str, int]
DEFAULT_CACHE_SIZE = 4096  # our choice: distinct destinations (or flows) remembered
_IPV4_HEADER_LEN = 20  # RFC 791 §3.1 (without options)
_IPV6_HEADER_LEN = 40  # RFC 8200 §3
_U32 = struct.Struct(">I").unpack_from  # the SPI as an int
_U64 = struct.Struct(">Q").unpack_from  # IPv4 source||destination as one int (rule 2)
_SPI_SEQ_LEN = 8  # RFC 4303 §2.1-2.2
_FRAME = OVERHEAD - TRAILER_MIN  # the 32 bytes of SPI, seq, IV and ICV around a plaintext
Run = tuple[PeerAddress, int, int, int]  # peer, start, end, segment: see encapsulate_batch


def _other_key(plain: memoryview, start: int, size: int) -> tuple[Key, int]:
    """Rule 2 for a packet that is not IPv4: the IPv6 source||destination (RFC 8200:
    8..40) and next header, or MALFORMED."""
    if size >= _IPV6_HEADER_LEN and plain[start] >> 4 == 6:
        return bytes(plain[start + 8 : start + 40]), NEXT_HEADER_IPV6
    raise EspDrop(DropReason.MALFORMED)


class Tunnel:
    """Selectors, peer address and SAs of one tunnel (read-only outside SADatabase)."""

    __slots__ = (
        "current",
        "heard_from",
        "inbound_spis",
        "local",
        "local_rules",
        "name",
        "next",
        "peer",
        "policy",
        "previous",
        "remote",
    )

    def __init__(
        self,
        name: str,
        peer: PeerAddress,
        local: tuple[Network, ...],
        remote: tuple[Network, ...],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.name = name
        self.peer = peer
        self.local = local
        self.remote = remote
        self.previous: OutboundSA | None = None
        self.current: OutboundSA | None = None
        self.next: OutboundSA | None = None
        self.inbound_spis: set[int] = set()
        # rule 7: the last new source reported to on_move (None: none since set_peer)
        self.heard_from: PeerAddress | None = None
        self.policy = InboundPolicy(local, remote, cache_size)  # rule 3, given to inbound SAs
        self.local_rules = rules(local)  # rule 2: what it may send from

    def sends_from(self, version: int, source: bytes) -> bool:
        """Outbound policy (rule 2): the source lies in the local selectors."""
        return contains(self.local_rules[version], source)

    def admits(self, version: int, source: bytes, destination: bytes) -> bool:
        """Inbound policy (rule 3): source in remote selectors, destination in local ones."""
        return self.policy.admits(version, source, destination)

    def snapshot(self) -> dict[str, object]:
        def sa(out: OutboundSA | None) -> dict[str, object] | None:
            return None if out is None else out.snapshot()

        return {
            "peer": list(self.peer),
            "local": [str(n) for n in self.local],
            "remote": [str(n) for n in self.remote],
            "previous": sa(self.previous),
            "current": sa(self.current),
            "next": sa(self.next),
        }

    def __repr__(self) -> str:
        current = "none" if self.current is None else f"{self.current.spi:08x}"
        return f"Tunnel({self.name!r}, peer={self.peer!r}, current={current})"


class SADatabase:
    """Tunnels, inbound SAs by SPI, outbound lookup by destination; see the module docstring."""

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._cache_size = cache_size
        self._tunnels: dict[str, Tunnel] = {}
        self._inbound: dict[int, tuple[InboundSA, Tunnel]] = {}
        # version -> [(prefix length, mask, {masked network: tunnel})], longest first
        self._routes: dict[int, list[tuple[int, int, dict[int, Tunnel]]]] = {4: [], 6: []}
        self._by_length: dict[tuple[int, int], dict[int, Tunnel]] = {}  # (version, prefixlen)
        self._owner: dict[Network, Tunnel] = {}  # each remote selector's tunnel
        self._cache: dict[Key, Tunnel | None] = {}
        self.drops = zero_counters()
        # rule 7: told when authenticated ESP arrives from a new address
        self.on_move: Callable[[Tunnel, PeerAddress], None] | None = None

    # -- configuration (rule 4) ------------------------------------------------

    def add_tunnel(
        self,
        name: str,
        peer: PeerAddress,
        local: Iterable[str | Network],
        remote: Iterable[str | Network],
    ) -> Tunnel:
        """Add a tunnel; ValueError if the name exists or a remote network is taken."""
        if name in self._tunnels:
            raise ValueError(f"tunnel {name!r} exists")
        tunnel = Tunnel(name, peer, networks(local), networks(remote), self._cache_size)
        clash = [str(net) for net in tunnel.remote if net in self._owner]
        if clash:
            raise ValueError(f"remote selectors {clash} already belong to another tunnel")
        self._tunnels[name] = tunnel
        for net in tunnel.remote:  # O(its selectors): a hub adds spokes among thousands
            self._owner[net] = tunnel
            self._route_add(net, tunnel)
        self._cache.clear()  # the other tunnels' inbound verdicts depend on their own selectors
        return tunnel

    def remove_tunnel(self, name: str) -> Tunnel:
        """Remove a tunnel with its inbound SAs; returns it (for final counters)."""
        tunnel = self._tunnels.pop(name)
        for spi in tunnel.inbound_spis:
            del self._inbound[spi]
        for net in tunnel.remote:
            if self._owner.get(net) is tunnel:
                del self._owner[net]
            self._route_remove(net, tunnel)
        self._cache.clear()
        return tunnel

    def tunnel(self, name: str) -> Tunnel:
        return self._tunnels[name]

    def has_tunnel(self, name: str) -> bool:
        """O(1), where ``tunnels`` copies all of them (a hub holds thousands)."""
        return name in self._tunnels

    @property
    def tunnels(self) -> tuple[Tunnel, ...]:
        return tuple(self._tunnels.values())

    def set_peer(self, name: str, peer: PeerAddress) -> None:
        """Send this tunnel's ESP to a new address (e.g. after a NAT rebinding)."""
        tunnel = self._tunnels[name]
        tunnel.peer, tunnel.heard_from = peer, None

    def add_inbound(self, name: str, sa: InboundSA) -> None:
        """Accept ESP for ``sa.spi`` on tunnel ``name``; ValueError if the SPI is in use."""
        tunnel = self._tunnels[name]
        if sa.spi in self._inbound:
            raise ValueError(f"inbound SPI {sa.spi:08x} is already installed")
        self._inbound[sa.spi] = (sa, tunnel)
        tunnel.inbound_spis.add(sa.spi)
        sa.policy = tunnel.policy  # the SA checks what it delivers (rule 3)

    def remove_inbound(self, spi: int) -> InboundSA:
        """Stop accepting ``spi`` (after the delete delay); returns the SA."""
        sa, tunnel = self._inbound.pop(spi)
        tunnel.inbound_spis.discard(spi)
        return sa

    def inbound(self, spi: int) -> InboundSA | None:
        entry = self._inbound.get(spi)
        return None if entry is None else entry[0]

    def install_next(self, name: str, sa: OutboundSA) -> OutboundSA | None:
        """Stage ``sa`` as the tunnel's next outbound SA; returns the one it replaces."""
        tunnel = self._tunnels[name]
        replaced, tunnel.next = tunnel.next, sa
        return replaced

    def promote(self, name: str) -> OutboundSA | None:
        """next -> current -> previous; returns the SA pushed out of ``previous``."""
        tunnel = self._tunnels[name]
        if tunnel.next is None:
            raise ValueError(f"tunnel {name!r} has no next outbound SA to promote")
        dropped = tunnel.previous
        tunnel.previous, tunnel.current, tunnel.next = tunnel.current, tunnel.next, None
        return dropped

    def demote(self, name: str) -> OutboundSA | None:
        """current -> previous with no successor (the tunnel stops sending);
        returns the SA pushed out of ``previous``."""
        tunnel = self._tunnels[name]
        dropped = tunnel.previous
        tunnel.previous, tunnel.current = tunnel.current, None
        return dropped

    def retire_previous(self, name: str) -> OutboundSA | None:
        """Forget the previous outbound SA; returns it (for its final counters)."""
        tunnel = self._tunnels[name]
        retired, tunnel.previous = tunnel.previous, None
        return retired

    def _route_add(self, net: Network, tunnel: Tunnel) -> None:
        key = (net.version, net.prefixlen)
        table = self._by_length.get(key)
        if table is None:
            table = self._by_length[key] = {}
            self._order_routes()
        table[int(net.network_address)] = tunnel

    def _route_remove(self, net: Network, tunnel: Tunnel) -> None:
        key = (net.version, net.prefixlen)
        table = self._by_length.get(key, {})
        if table.get(int(net.network_address)) is tunnel:
            del table[int(net.network_address)]
        if not table and key in self._by_length:
            del self._by_length[key]
            self._order_routes()

    def _order_routes(self) -> None:
        """The per-length tables, longest prefix first (rebuilt only when a length
        appears or goes; the tables themselves are shared and updated in place)."""
        routes: dict[int, list[tuple[int, int, dict[int, Tunnel]]]] = {4: [], 6: []}
        for (version, length), table in sorted(self._by_length.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            mask = ((1 << length) - 1) << (bits - length)
            routes[version].append((length, mask, table))
        self._routes = routes

    # -- lookups -------------------------------------------------------------------

    def lookup(self, source: bytes, destination: bytes) -> Tunnel | None:
        """The tunnel for packed inner addresses (4 or 16 bytes each): longest prefix of
        the destination, and the source among its local selectors (rule 2)."""
        if len(source) == len(destination) == 4:
            return self._route(int.from_bytes(source + destination, "big"))
        if len(source) == len(destination) == 16:
            return self._route(bytes(source + destination))
        raise ValueError("addresses must be packed IPv4 or IPv6 addresses of one version")

    def _route(self, key: Key) -> Tunnel | None:
        """Cached lookup for a source||destination key (rule 2)."""
        cache = self._cache
        if key in cache:
            return cache[key]
        if isinstance(key, int):
            version, value, source = 4, key & 0xFFFFFFFF, (key >> 32).to_bytes(4, "big")
        else:
            version, value, source = 6, int.from_bytes(key[16:], "big"), key[:16]
        found = None
        for _length, mask, table in self._routes[version]:
            found = table.get(value & mask)
            if found is not None:
                break
        if found is not None and not found.sends_from(version, source):
            found = None
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # FIFO eviction keeps the cache bounded
        cache[key] = found
        return found

    # -- the hot path ----------------------------------------------------------------

    def encapsulate(self, inner: Buffer) -> tuple[bytes, PeerAddress]:
        """Seal an inner IP packet: ``(esp_packet, peer_address)``, or raise EspDrop.

        MALFORMED: not an IPv4/IPv6 header; NO_POLICY: no tunnel or no current
        SA for the destination; SEQ_EXHAUSTED: the current SA is used up.
        """
        size = len(inner)
        plain = bytearray(size + TRAILER_MAX)
        plain[:size] = inner
        out = bytearray(sealed_len(size))
        runs, dropped = self.encapsulate_batch(memoryview(plain), ((0, size),), memoryview(out))
        if dropped:
            raise EspDrop(dropped[0]) from None
        return bytes(out), runs[0][0]

    def encapsulate_batch(
        self,
        plain: memoryview,
        spans: Iterable[tuple[int, int]],
        out: memoryview,
        max_count: int = 64,
        max_bytes: int = 65487,
    ) -> tuple[list[Run], list[DropReason]]:
        """Seal the inner packets ``plain[start : start + size]`` (``spans``) into ``out``.

        Each packet needs ``esp.TRAILER_MAX`` spare bytes behind it in ``plain``
        (``OutboundSA.seal_into``); ``out`` needs ``esp.sealed_len(size)`` per
        packet. The sealed packets lie back to back in runs ``(peer, start,
        end, segment)``: consecutive packets to one peer, each ``segment``
        bytes long except the last (shorter), at most ``max_count`` packets and
        ``max_bytes`` bytes per run (one UDP GSO send). Returns the runs in
        order and the reasons of the packets dropped (rule 5).
        """
        runs: list[Run] = []
        dropped: list[DropReason] = []
        cache, drops = self._cache, self.drops
        first = end = segment = count = 0  # the open run: out[first:end], count packets
        peer: PeerAddress = ("", 0)
        # Layout first, sealing second: the packets of one SA are sealed in one
        # call (seal_batch), each at the offset this loop gave it.
        items: list[tuple[int, int, int, int]] = []
        current: OutboundSA | None = None
        budget = 0  # sequence numbers the current SA has left (never overdrawn)
        for start, size in spans:
            try:
                if size >= _IPV4_HEADER_LEN and plain[start] >> 4 == 4:
                    key: Key = _U64(plain, start + 12)[0]  # RFC 791: source, destination
                    next_header = NEXT_HEADER_IPV4
                else:
                    key, next_header = _other_key(plain, start, size)
                tunnel = cache[key] if key in cache else self._route(key)
                if tunnel is None or (sa := tunnel.current) is None:
                    raise EspDrop(DropReason.NO_POLICY)  # rule 2: no tunnel, or no SA yet
                if sa is not current:
                    if current is not None:
                        current.seal_batch(plain, items, out)
                    items, current, budget = [], sa, sa.remaining
                if not budget:
                    sa.drops[DropReason.SEQ_EXHAUSTED] += 1
                    raise EspDrop(DropReason.SEQ_EXHAUSTED)  # RFC 4303 §3.3.3: never wrap
                budget -= 1
            except EspDrop as drop:
                drops[drop.reason] += 1
                dropped.append(drop.reason)
                continue
            to = tunnel.peer
            length = _FRAME + size + TRAILER_MIN + (-(size + TRAILER_MIN) & 3)  # sealed_len
            if count and (
                to is not peer
                or length > segment
                or count == max_count
                or end - first + length > max_bytes
            ):  # it cannot join the open run: close that one
                runs.append((peer, first, end, segment))
                first, count = end, 0
            if not count:
                segment, peer = length, to
            items.append((start, size, next_header, end))
            end += length
            count += 1
            if length < segment:  # only the last packet of a run may be shorter
                runs.append((peer, first, end, segment))
                first, count = end, 0
        if count:
            runs.append((peer, first, end, segment))
        if current is not None:
            current.seal_batch(plain, items, out)
        return runs, dropped

    def decapsulate(self, esp: Buffer) -> bytes:
        """Open an ESP packet (SPI .. ICV) and return the inner IP packet, or raise EspDrop."""
        out = bytearray(max(len(esp) - _FRAME, 0))
        inner, dropped = self.decapsulate_batch((esp,), memoryview(out))
        if dropped:
            raise EspDrop(dropped[0]) from None  # no context: the packet stays out of it
        return bytes(inner[0])

    def decapsulate_batch(
        self,
        packets: Sequence[Buffer],
        out: memoryview,
        sources: Sequence[PeerAddress] | None = None,
    ) -> tuple[list[memoryview], list[DropReason]]:
        """Open ESP packets into ``out``, back to back: ``(inner packets, drops)``.

        The inner packets are views into ``out`` (valid until the caller reuses
        it), in order; ``drops`` holds the reason of each packet refused (rule 5
        counts them here too). ``out`` needs ``len(esp) - 32`` bytes per packet.
        One call per batch: each inbound SA opens its run of consecutive
        packets itself (``InboundSA.open_batch``, rule 3 included).
        ``sources`` (the packets' UDP sources, in order) enables rule 7.
        """
        opened: list[memoryview] = []
        dropped: list[DropReason] = []
        drops = self.drops
        index, end, count = 0, 0, len(packets)
        while index < count:
            esp = packets[index]
            entry = self._inbound.get(_U32(esp)[0]) if len(esp) >= _SPI_SEQ_LEN else None
            if entry is None:
                reason = (
                    DropReason.UNKNOWN_SPI if len(esp) >= _SPI_SEQ_LEN else DropReason.MALFORMED
                )
                drops[reason] += 1
                dropped.append(reason)
                index += 1
                continue
            mark = len(dropped)
            sa = entry[0]
            index, end = sa.open_batch(packets, index, out, end, opened, dropped)
            for reason in dropped[mark:]:
                drops[reason] += 1
            if sources is not None and sa.newest >= 0:  # rule 7: once per run
                self._heard(entry[1], sources[sa.newest])
        return opened, dropped

    def _heard(self, tunnel: Tunnel, source: PeerAddress) -> None:
        """Rule 7: authenticated, newest ESP of ``tunnel`` came from ``source``."""
        if source != tunnel.peer and source != tunnel.heard_from:
            tunnel.heard_from = source
            if self.on_move is not None:
                self.on_move(tunnel, source)

    # -- status ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Plain-data status for the control socket: SPIs in hex, counters, never keys."""
        tunnels: dict[str, object] = {}
        for name, tunnel in self._tunnels.items():
            entry = tunnel.snapshot()
            entry["inbound"] = [
                self._inbound[spi][0].snapshot() for spi in sorted(tunnel.inbound_spis)
            ]
            tunnels[name] = entry
        return {
            "tunnels": tunnels,
            "drops": {reason.value: n for reason, n in self.drops.items()},
        }

    def __repr__(self) -> str:
        return f"SADatabase(tunnels={len(self._tunnels)}, inbound_sas={len(self._inbound)})"
