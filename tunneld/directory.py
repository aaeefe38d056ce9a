"""The responder's directory: which peer a new initiator is, by address and then by
the identity it proves (charon's ike_cfg by address, peer_cfg by IDi), and the
runtime spokes of identity-pattern entries. Rules: :mod:`tunneld.peermatch`.

Theory of operation:

1. A new IKE_SA_INIT from address A has as *candidates* the entries with
   address A, then those without an address. Only one, with address A and
   an exact identity: the daemon hands the request to that peer, as before.
   Otherwise the daemon's reception (:mod:`tunneld.peer` rule 12) answers it
   with the candidates' proposals (all of them, in candidate order: the
   initiator's identity is unknown yet) and asks :meth:`Directory.lookup`
   at IKE_AUTH.
2. :meth:`Directory.lookup` runs before AUTH is verified and changes
   nothing: it names the entry serving (identity, address), and for a
   pattern entry the spoke's configuration (its exact identity, its remote
   subnets). Whatever it returns, AUTH must still verify with it. No entry,
   a held peer, a full hub or overlapping subnets: a reason, which the
   initiator hears as AUTHENTICATION_FAILED; counted, logged through the
   unauthenticated throttle (the identity is a field, escaped by the log).
3. Only after AUTH verified, :meth:`Directory.owner` gives the session to
   its peer; for a new spoke it first makes that peer (``spawn``), reaping
   idle spokes of the hub to make room or to free subnets they held. In
   between nothing awaits (lookup and owner run in one call of the
   reception's task), so the checks of rule 2 still hold at owner time.
4. Memory is bounded: at most ``max_spokes`` spokes per pattern entry, each
   one peer; an idle spoke (no IKE SA, no Child SA) is reaped when its slot
   or its subnets are wanted.
5. Cost: a new spoke costs O(its subnets), not O(spokes): each hub indexes its
   spokes' subnets (:class:`SubnetIndex`) and the spokes holding a claimed
   subnet are found there; the spokes are walked only when the hub is full
   (to count the live ones, or to find idle ones to reap).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ike.identity import Identity, pattern_matches
from ike.session import IkeSession
from ike.sessionconfig import PeerQuery, SessionConfig
from tunneld.config import PeerConfig
from tunneld.log import LogThrottle, escape, networks_text
from tunneld.peer import Peer
from tunneld.peermatch import spoke_claim, table_rows

log = logging.getLogger("tunneld.directory")

# Unauthenticated (rule 2): logged once per reason per interval.
LOOKUP_LOG = (
    "IKE_AUTH refused: no peer entry serves this identity from this address",
    "IKE_AUTH refused: spoke not admitted",
    "IKE_AUTH refused: peer held down by the operator",
)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SubnetIndex:
    """Which names hold which networks, and who holds a network overlapping a given
    one, without walking every holder: one table per (IP version, prefix length)."""

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], dict[int, set[str]]] = {}

    def add(self, name: str, nets: tuple[Network, ...]) -> None:
        for net in nets:
            table = self._tables.setdefault((net.version, net.prefixlen), {})
            table.setdefault(int(net.network_address), set()).add(name)

    def remove(self, name: str, nets: tuple[Network, ...]) -> None:
        for net in nets:
            key = (net.version, net.prefixlen)
            table = self._tables.get(key, {})
            holders = table.get(int(net.network_address), set())
            holders.discard(name)
            if not holders:
                table.pop(int(net.network_address), None)
            if not table:
                self._tables.pop(key, None)

    def overlapping(self, net: Network) -> set[str]:
        """The names holding a network that overlaps ``net`` (equal, inside, around)."""
        found: set[str] = set()
        bits = net.max_prefixlen
        start = int(net.network_address)
        for (version, length), table in self._tables.items():
            if version != net.version:
                continue
            if length <= net.prefixlen:  # a held network the same size or around it
                key = start & (((1 << length) - 1) << (bits - length))
                found |= table.get(key, set())
                continue
            span = 1 << (length - net.prefixlen)  # held networks inside it
            if span <= len(table):
                step = 1 << (bits - length)
                for k in range(span):
                    found |= table.get(start + k * step, set())
            else:
                end = start + (1 << (bits - net.prefixlen))
                for addr, holders in table.items():
                    if start <= addr < end:
                        found |= holders
        return found


@dataclass(eq=False)
class Hub:
    """A pattern entry at run time: its template and its spokes, by peer name."""

    entry: PeerConfig
    template: SessionConfig  # remote_id None; the entry's proposals and pool
    spokes: dict[str, Peer] = field(default_factory=dict)
    refused: int = 0
    subnets: SubnetIndex = field(default_factory=SubnetIndex)  # rule 5: the spokes' subnets

    def add_spoke(self, peer: Peer) -> None:
        self.spokes[peer.name] = peer
        self.subnets.add(peer.name, peer.session_config.remote_ts)

    def drop_spoke(self, peer: Peer) -> None:
        del self.spokes[peer.name]
        self.subnets.remove(peer.name, peer.session_config.remote_ts)

    def holders(self, nets: tuple[Network, ...]) -> list[Peer]:
        """The spokes holding a network that overlaps one of ``nets``. The index's
        answer is checked against each spoke's configuration: an entry the index kept
        for a spoke that went another way (``spokes.clear()`` at a reload) counts not."""
        names = set().union(*(self.subnets.overlapping(net) for net in nets))
        found = [self.spokes[n] for n in sorted(names) if n in self.spokes]
        return [
            p
            for p in found
            if any(
                a.version == b.version and a.overlaps(b)
                for a in p.session_config.remote_ts
                for b in nets
            )
        ]

    def spoke_name(self, identity: Identity) -> str:
        return f"{self.entry.name}/{str(identity).lower()}"

    def status(self) -> dict[str, object]:
        return {
            "name": self.entry.name,
            "id": str(self.entry.id),
            "spokes": len(self.spokes),
            "max_spokes": self.entry.max_spokes,
            "spokes_refused": self.refused,
        }


@functools.lru_cache(maxsize=4096)
def _canonical(host: str) -> str | None:
    """An address's canonical text (None: not an address). Cached: a hub with no
    address-bound entry misses ``_by_host`` for every spoke's IKE_SA_INIT."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class Directory:
    """See the module docstring. ``peers`` is the daemon's name -> Peer map (plain
    entries and spokes); ``spawn(hub, config)`` makes and starts a spoke's peer and
    adds it there; ``retire(peer)`` stops an idle spoke and removes it."""

    def __init__(
        self,
        entries: tuple[PeerConfig, ...],
        peers: dict[str, Peer],
        templates: dict[str, SessionConfig],
        spawn: Callable[[Hub, SessionConfig], Peer],
        retire: Callable[[Peer], None],
        clock: Callable[[], float],
    ) -> None:
        self.entries = entries
        self.peers = peers
        self.hubs = {e.name: Hub(e, templates[e.name]) for e in entries if e.is_pattern}
        # by the canonical text of each entry's address (resolved, for a DNS name): the
        # sockets report it so, and this runs for every new IKE_SA_INIT (floods included)
        self._by_host: dict[str, list[PeerConfig]] = {}
        self._direct: set[str] = set()  # entries that their address alone names
        self._anywhere = [e for e in entries if e.address is None]
        self.reindex()
        self._spawn = spawn
        self._retire = retire
        self._clock = clock
        self._log = LogThrottle(log, LOOKUP_LOG)
        self.identity_unknown = 0
        self.held_refused = 0

    def update(self, entries: tuple[PeerConfig, ...], templates: dict[str, SessionConfig]) -> None:
        """A reload (:mod:`tunneld.reload`): the new file's entries. A pattern entry
        still in it keeps its hub and spokes, with the new template for new spokes
        (the daemon has retired the spokes of pattern entries removed or restarted)."""
        self.entries = entries
        self._anywhere = [e for e in entries if e.address is None]
        hubs: dict[str, Hub] = {}
        for e in entries:
            if not e.is_pattern:
                continue
            hub = self.hubs.get(e.name) or Hub(e, templates[e.name])
            hub.entry, hub.template = e, templates[e.name]
            hubs[e.name] = hub
        self.hubs = hubs
        self.reindex()

    # -- rule 1: by address -------------------------------------------------------

    def reindex(self) -> None:
        """Index the entries by address again (a peer's DNS name resolved, maybe anew).
        An entry whose name has not resolved yet matches no address."""
        self._by_host = {}
        # (is_pattern parses the identity: too slow for every request of a flood)
        self._direct = {e.name for e in self.entries if e.address is not None and not e.is_pattern}
        for e in self.entries:
            if e.address is None:
                continue
            peer = self.peers.get(e.name)
            host = peer.resolved if peer is not None else str(e.address)
            if host is not None:
                canonical = str(ipaddress.ip_address(host))
                self._by_host.setdefault(canonical, []).append(e)

    def candidates(self, host: str) -> list[PeerConfig]:
        exact = self._by_host.get(host)
        if exact is None:  # not in canonical form, or no entry has that address
            canonical = _canonical(host)
            exact = [] if canonical is None else self._by_host.get(canonical, [])
        return exact + self._anywhere

    def direct_peer(self, candidates: list[PeerConfig]) -> Peer | None:
        """The one peer a new IKE_SA_INIT goes to straight away, or None (reception):
        only an entry that its address alone names (an address-less entry is known
        only by the identity its initiator proves, at IKE_AUTH)."""
        only = candidates[0] if len(candidates) == 1 else None
        if only is not None and only.name in self._direct:
            return self.peers[only.name]
        return None

    def configs(self, candidates: list[PeerConfig]) -> tuple[SessionConfig, ...]:
        """The candidates' configurations, for the reception's IKE_SA_INIT."""
        return tuple(
            self.hubs[e.name].template if e.is_pattern else self.peers[e.name].session_config
            for e in candidates
        )

    # -- rule 2: by identity, before AUTH -------------------------------------------

    def lookup(self, query: PeerQuery) -> SessionConfig | str:
        now = self._clock()
        host = query.remote_addr[0]
        entry = next((e for e in self.candidates(host) if pattern_matches(e.id, query.idi)), None)
        if entry is None:
            self.identity_unknown += 1
            self._log(LOOKUP_LOG[0], now, identity=str(query.idi), remote=host)
            return f"no peer entry serves identity '{escape(str(query.idi))}' from {host}"
        if entry.is_pattern:
            return self._spoke_config(self.hubs[entry.name], query, now)
        return self._unless_held(self.peers[entry.name], now)

    def _unless_held(self, peer: Peer, now: float) -> SessionConfig | str:
        if peer.refuses_new(now):
            self.held_refused += 1
            self._log(LOOKUP_LOG[2], now, peer=peer.name)
            return f"peer {peer.name} is held down by the operator"
        return peer.session_config

    def _spoke_config(self, hub: Hub, query: PeerQuery, now: float) -> SessionConfig | str:
        name = hub.spoke_name(query.idi)
        known = hub.spokes.get(name)
        if known is not None:  # the spoke again (reauthentication, restart)
            return self._unless_held(known, now)
        claim = spoke_claim(query.idi, query.tsi, hub.entry, table_rows(hub.entry, query.idi))
        if isinstance(claim, str):
            return self._refuse(hub, query, claim, now)
        live = [p for p in hub.holders(claim) if not p.idle]
        if live:  # spoke_claim's refusal, for the first live spoke in the way
            held = [(f"spoke {p.name}", p.session_config.remote_ts) for p in live[:1]]
            refusal = spoke_claim(query.idi, query.tsi, hub.entry, held)
            return self._refuse(hub, query, str(refusal), now)
        if len(hub.spokes) >= hub.entry.max_spokes and self._live(hub) >= hub.entry.max_spokes:
            why = f"hub entry {hub.entry.name} has max_spokes = {hub.entry.max_spokes} spokes up"
            return self._refuse(hub, query, why, now)
        # a pattern entry has one implicit Child SA (peermatch rule 4): the claim narrows it
        children = tuple(dataclasses.replace(c, remote_ts=claim) for c in hub.template.children)
        return dataclasses.replace(
            hub.template, name=name, remote_id=query.idi, remote_ts=claim, children=children
        )

    @staticmethod
    def _live(hub: Hub) -> int:
        """Spokes not idle: a walk over all of them (only when the hub is full)."""
        return sum(not p.idle for p in hub.spokes.values())

    def _refuse(self, hub: Hub, query: PeerQuery, why: str, now: float) -> str:
        hub.refused += 1
        self._log(LOOKUP_LOG[1], now, entry=hub.entry.name, identity=str(query.idi), why=why)
        return escape(why)

    # -- rule 3: after AUTH -----------------------------------------------------------

    def owner(self, session: IkeSession) -> Peer:
        config = session.config
        peer = self.peers.get(config.name)
        if peer is not None:
            return peer
        hub = self.hubs[config.name.split("/", 1)[0]]
        self._make_room(hub, config)
        peer = self._spawn(hub, config)
        hub.add_spoke(peer)
        log.info(
            "spoke admitted",
            extra={
                "peer": config.name,
                "remote_id": str(config.remote_id),
                "remote_subnets": networks_text(config.remote_ts),
            },
        )
        return peer

    def _make_room(self, hub: Hub, config: SessionConfig) -> None:
        """Rule 4: reap idle spokes holding the new one's subnets or a slot over the limit."""
        for peer in hub.holders(config.remote_ts):
            if peer.idle:
                self._reap(hub, peer)
        excess = len(hub.spokes) + 1 - hub.entry.max_spokes
        if excess > 0:  # the hub is full: walk it for idle spokes
            for peer in [p for p in hub.spokes.values() if p.idle][:excess]:
                self._reap(hub, peer)

    def _reap(self, hub: Hub, peer: Peer) -> None:
        hub.drop_spoke(peer)
        self._retire(peer)

    def status(self) -> dict[str, object]:
        return {
            "identity_unknown": self.identity_unknown,
            "held_refused": self.held_refused,
            "hubs": [hub.status() for hub in self.hubs.values()],
        }
