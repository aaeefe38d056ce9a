"""Which ``[[peer]]`` entry serves which initiator: the rules ``tunneld check``
enforces and the daemon's responder applies (docs/configuration.md, "Dynamic
peers and identity patterns").

1. An entry *could serve* an initiator when its ``address`` (if set) is the
   initiator's source address and its ``id`` (an exact identity or a pattern,
   :func:`ike.identity.pattern_matches`) accepts the identity the initiator
   claims in IKE_AUTH; AUTH then proves that identity with the entry's
   credentials. Entries with an address come first, then the address-less ones.
2. No two entries could serve the same (identity, address): ``tunneld check``
   refuses such a file (:func:`check_unambiguous`), so the responder's choice
   never depends on the order of the file.
3. A pattern entry (``id = "*.branch.example.org"``) is a template: each spoke
   it authenticates becomes a runtime peer of its own named
   ``entry/identity``, at most ``max_spokes`` of them. A spoke's remote subnets
   are its row in the entry's ``spokes`` table, or else what it proposes
   (TSi) within the entry's ``remote_subnets``; two spokes never hold
   overlapping subnets (:func:`spoke_claim`).
4. A pattern needs certificates: with one shared PSK every spoke that knows
   it could claim any identity the pattern matches, and with it another
   spoke's subnets (:func:`check_pattern_entry`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ike.events import IPNetwork
from ike.identity import Identity, is_pattern, pattern_matches, patterns_overlap
from tunneld.tomlschema import ConfigError, Section, parse_network

if TYPE_CHECKING:
    from tunneld.config import PeerConfig

DEFAULT_MAX_SPOKES = 64
MAX_MAX_SPOKES = 10000


@dataclass(frozen=True)
class SpokeSubnets:
    """One row of a pattern entry's ``spokes`` table: this spoke's remote subnets."""

    id: Identity
    subnets: tuple[IPNetwork, ...]


# -- reading (config.py calls these for each [[peer]]) --------------------------


def read_spokes(s: Section, pattern: Identity | None) -> tuple[int, tuple[SpokeSubnets, ...]]:
    """``max_spokes`` and the ``spokes`` table; both only with an identity pattern."""
    if pattern is None:
        for key in ("max_spokes", "spokes"):
            if s.has(key):
                raise s.error(key, 'only used with an identity pattern (id = "*.domain")')
        return 0, ()
    limit = s.integer("max_spokes", DEFAULT_MAX_SPOKES, 1, MAX_MAX_SPOKES)
    table = s.raw("spokes", {})
    if not isinstance(table, dict):
        raise s.error("spokes", 'write it as a table: [peer.spokes] "id" = ["subnet", ...]')
    rows = Section(s.file, s.path("spokes"), table, tuple(table))
    out: list[SpokeSubnets] = []
    for text in table:
        try:
            ident = Identity.parse(text)
        except ValueError as exc:
            raise rows.error(text, str(exc)) from None
        if is_pattern(ident) or not pattern_matches(pattern, ident):
            raise rows.error(text, f"'{ident}' is not an identity the pattern '{pattern}' matches")
        out.append(SpokeSubnets(ident, rows.items(text, parse_network)))
    return limit, tuple(out)


def check_pattern_entry(s: Section, peer: PeerConfig) -> None:
    """Rule 4 and the shape of a pattern entry (after it is read)."""
    if peer.auth == "psk":
        raise s.error(
            "auth",
            f"an identity pattern ('{peer.id}') needs certificates: with one shared PSK "
            "every spoke knowing it could claim any identity the pattern matches, and "
            "that spoke's subnets",
        )
    if isinstance(peer.address, str):
        raise s.error("address", "an identity pattern takes an IP address (or none), not a name")
    if peer.auto == "start":
        raise s.error("auto", 'an identity pattern names no one peer to initiate to: use "listen"')
    if not (len(peer.children) == 1 and peer.children[0].implicit):
        raise s.error(
            "child",
            "an identity pattern takes its spokes' subnets from remote_subnets (or spokes): "
            "[[peer.child]] tables are not supported with a pattern",
        )
    for i, row in enumerate(peer.spokes):
        for k, net in enumerate(row.subnets):
            where = f"spokes.{row.id}[{k}]"
            if not within(net, peer.remote_subnets):
                raise s.error(where, f"{net} is not inside remote_subnets")
            for other in peer.spokes[:i]:
                held = overlapping(net, other.subnets)
                if held is not None:
                    raise s.error(where, f"{net} overlaps {held} of spoke '{other.id}'")


# -- rule 2 -----------------------------------------------------------------------


def check_unambiguous(file: Path, peers: Sequence[PeerConfig]) -> None:
    """Rule 2: refuse two entries that could serve the same identity from one address."""
    for i, peer in enumerate(peers):
        for other in peers[:i]:
            if not patterns_overlap(peer.id, other.id):
                continue
            if peer.address is not None and other.address is not None:
                named = isinstance(peer.address, str) or isinstance(other.address, str)
                if peer.address != other.address and not named:
                    continue
                where = (
                    f"the same address {peer.address}"
                    if peer.address == other.address
                    else f"{peer.address} and {other.address} (a DNS name may resolve to either)"
                )
            else:
                shared = peer.address or other.address  # the address-less one takes any
                where = "any address" if shared is None else f"address {shared}"
            reason = f"'{peer.id}' and peer '{other.name}' ('{other.id}') match the same identities"
            raise ConfigError(
                file,
                f"peer[{i}].id",
                f"{reason} from {where}: a responder could not tell which entry an "
                "initiator means (give them distinct identities or addresses)",
            )


# -- networks ---------------------------------------------------------------------


def within(net: IPNetwork, pool: Iterable[IPNetwork]) -> bool:
    return any(net.version == p.version and net.subnet_of(p) for p in pool)  # type: ignore[arg-type]


def overlapping(net: IPNetwork, held: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in held:
        if net.version == other.version and net.overlaps(other):
            return other
    return None


def intersect(proposed: Iterable[IPNetwork], pool: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The networks both allow (each network of one inside or equal to one of the other)."""
    out: list[IPNetwork] = []
    pool = tuple(pool)
    for net in proposed:
        for mine in pool:
            if net.version != mine.version or not net.overlaps(mine):
                continue
            smaller = net if net.prefixlen >= mine.prefixlen else mine
            if smaller not in out:
                out.append(smaller)
    return tuple(out)


def spoke_claim(
    identity: Identity,
    tsi: Sequence[IPNetwork],
    entry: PeerConfig,
    held: Iterable[tuple[str, tuple[IPNetwork, ...]]],
) -> tuple[IPNetwork, ...] | str:
    """Rule 3: the remote subnets a spoke gets, or why it gets none.

    ``held`` names what the entry's other live spokes (and the table's other
    rows) hold; a claim overlapping any of it is refused, never trimmed.
    """
    claim: tuple[IPNetwork, ...] = ()
    for row in entry.spokes:
        if row.id.matches(identity):
            claim = row.subnets
            break
    else:
        claim = intersect(tsi, entry.remote_subnets)
    if not claim:
        return f"spoke '{identity}' proposes no subnet inside {_show(entry.remote_subnets)}"
    for owner, nets in held:
        for net in claim:
            taken = overlapping(net, nets)
            if taken is not None:
                return f"spoke '{identity}' claims {net}, which overlaps {taken} of {owner}"
    return claim


def table_rows(entry: PeerConfig, but_not: Identity) -> list[tuple[str, tuple[IPNetwork, ...]]]:
    """The ``spokes`` rows of the other identities: reserved even while they are away."""
    return [
        (f"spoke '{row.id}' (spokes table)", row.subnets)
        for row in entry.spokes
        if not row.id.matches(but_not)
    ]


def _show(nets: Iterable[IPNetwork]) -> str:
    return ", ".join(map(str, nets)) or "nothing"


__all__ = [
    "DEFAULT_MAX_SPOKES",
    "SpokeSubnets",
    "check_pattern_entry",
    "check_unambiguous",
    "intersect",
    "read_spokes",
    "spoke_claim",
    "table_rows",
    "within",
]
