"""``tunneld reload`` (and SIGHUP): what changed between the running configuration
and a new one. Pure: two :class:`tunneld.config.Config` values in, a plan out;
the daemon applies it (:meth:`tunneld.daemon.Daemon.reload`).

Rules:

1. The new file is read with exactly the checks of ``tunneld check``
   (:func:`tunneld.config.load_config`); an invalid file changes nothing.
2. ``[gateway]`` cannot change at run time (listen addresses and ports, the TUN
   device and its MTU, the control socket, the account, the log settings, the
   key-table directory), nor can ``[metrics]`` (its socket is bound at start,
   before the privilege drop): a changed key refuses the whole reload with a
   :class:`ConfigError` naming it, and the daemon runs on as before.
3. Peers are matched by ``name``: a name only in the new file is *added*, one
   only in the old file *removed*. For a name in both, every key that differs
   is listed, and the most disruptive kind of change among them decides what
   happens to the peer (:data:`KINDS`, least disruptive first):

   - ``unchanged``: its SAs are not touched (same SPIs, same keys);
   - ``updated``: only keys of :data:`LIVE_KEYS`, or credentials, differ. The
     peer takes them without re-establishing anything: lifetimes, limits and
     rekey jitter apply to the SAs made from now on (at the next rekey),
     credentials (a renewed certificate or key, a new PSK, another CA) at the
     next authentication, the others at once;
   - ``reauthenticated``: a key of :data:`REAUTH_KEYS` differs (who the peer
     is, where, which proposals): its IKE SA is replaced by a new one made with
     the new configuration, make-before-break where we can initiate to the peer
     (the old one is deleted once the new one's Child SA is up), else the old
     one is deleted and the peer reconnects;
   - ``restarted``: the peer's Child SAs have other selectors or names, or a
     pattern entry's spokes table changed (a data plane tunnel's selectors are
     fixed): the old peer sends DELETE and goes, then the new one starts.

4. A key the tables below do not know counts as ``restarted`` (the safe
   choice); tests/unit/test_reload.py fails until each new key is classified.
5. ``[identity]``: its ``id`` reaches the peers as their ``local_id`` (rule 3);
   another certificate, private key, intermediate or CA is a credentials change
   of every peer with ``auth = "pubkey"`` (``updated``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization

from tunneld.config import ChildConfig, Config, GatewayConfig, IdentityConfig, PeerConfig
from tunneld.tomlschema import ConfigError

Kind = Literal["added", "removed", "unchanged", "updated", "reauthenticated", "restarted"]
# least disruptive first: a peer's kind is the last of its keys' kinds (rule 3)
KINDS: tuple[Kind, ...] = ("unchanged", "updated", "reauthenticated", "restarted")

# [[peer]] keys applied in place (rule 3, "updated")
LIVE_KEYS = frozenset(
    {
        "auto", "ike_lifetime", "child_lifetime", "rekey_jitter", "child_packet_limit",
        "child_byte_limit", "dpd_delay", "dpd_action", "delete_delay", "replay_window",
        "save_keys", "max_spokes", "psk", "auth_failure_backoff",
    }
)  # fmt: skip
# [[peer]] keys that need a new IKE SA (rule 3, "reauthenticated")
REAUTH_KEYS = frozenset({"address", "port", "nat_t_port", "id", "local_id", "auth", "ike", "esp"})
# [[peer]] keys that need a new peer (rule 3, "restarted"); children are compared per child
RESTART_KEYS = frozenset({"local_subnets", "remote_subnets", "spokes", "children"})
CREDENTIALS = "credentials"  # rule 5: the name a changed [identity] credential is listed by

# per [[peer.child]]: selectors and names restart the peer, proposals reauthenticate it,
# lifetimes and limits are live (the keys of the peer's table have the same kinds)
_CHILD_LIVE = ("child_lifetime", "child_packet_limit", "child_byte_limit")
_CHILD_REAUTH = ("esp",)


@dataclass(frozen=True)
class PeerChange:
    """One peer's fate in a reload; ``keys``: what differs (for the log and the answer)."""

    name: str
    kind: Kind
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReloadPlan:
    """Every peer of the old and the new file, once, in the new file's order (removed
    peers last)."""

    peers: tuple[PeerChange, ...]

    def names(self, kind: Kind) -> list[str]:
        return [p.name for p in self.peers if p.kind == kind]

    @property
    def changes_nothing(self) -> bool:
        return all(p.kind == "unchanged" for p in self.peers)

    def summary(self) -> dict[str, Any]:
        """The plan for the log line and the control answer: names by kind, and the
        keys that differ per changed peer (never a value: a PSK could be one)."""
        out: dict[str, Any] = {kind: self.names(kind) for kind in ("added", "removed", *KINDS)}
        out["keys"] = {p.name: list(p.keys) for p in self.peers if p.keys}
        return out


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` does; :class:`ConfigError` if it cannot (rule 2)."""
    check_gateway(old, new)
    credentials = identity_credentials_changed(old.identity, new.identity)
    before = {p.name: p for p in old.peers}
    changes = []
    for peer in new.peers:
        previous = before.get(peer.name)
        if previous is None:
            changes.append(PeerChange(peer.name, "added"))
            continue
        keys = peer_differences(previous, peer)
        if credentials and peer.auth == "pubkey" and previous.auth == "pubkey":
            keys.append(CREDENTIALS)
        changes.append(PeerChange(peer.name, kind_of(keys), tuple(keys)))
    after = {p.name for p in new.peers}
    changes += [PeerChange(p.name, "removed") for p in old.peers if p.name not in after]
    return ReloadPlan(tuple(changes))


def check_gateway(old: Config, new: Config) -> None:
    """Rule 2: ConfigError naming the first ``[gateway]`` key that differs (or
    ``metrics.listen``: the endpoint is bound at start, like the gateway's sockets)."""
    for f in dataclasses.fields(GatewayConfig):
        if getattr(old.gateway, f.name) != getattr(new.gateway, f.name):
            raise _fixed(new, f"gateway.{f.name}")
    if old.metrics != new.metrics:
        raise _fixed(new, "metrics.listen" if old.metrics and new.metrics else "metrics")


def _fixed(new: Config, key: str) -> ConfigError:
    return ConfigError(
        new.path,
        key,
        "cannot change while tunneld runs (the reload is refused, the daemon goes on "
        "with the running configuration): restore it, or restart the daemon",
    )


def identity_credentials_changed(old: IdentityConfig, new: IdentityConfig) -> bool:
    """Rule 5: another certificate, intermediate, private key or CA."""
    return _credentials(old) != _credentials(new)


def _credentials(ident: IdentityConfig) -> tuple[object, ...]:
    der = serialization.Encoding.DER
    return (
        None if ident.certificate is None else ident.certificate.public_bytes(der),
        tuple(c.public_bytes(der) for c in ident.intermediates),
        None if ident.private_key is None else ident.private_key.public_der(),
        tuple(c.public_bytes(der) for c in ident.ca),
    )


def peer_differences(old: PeerConfig, new: PeerConfig) -> list[str]:
    """The keys of one ``[[peer]]`` that differ, children as ``child[NAME].KEY``."""
    keys: list[str] = []
    for f in dataclasses.fields(PeerConfig):
        if f.name == "children":
            keys += _children_differences(old.children, new.children)
        elif getattr(old, f.name) != getattr(new, f.name):
            keys.append(f.name)
    return keys


def _children_differences(old: tuple[ChildConfig, ...], new: tuple[ChildConfig, ...]) -> list[str]:
    def shape(children: Iterable[ChildConfig]) -> list[tuple[object, ...]]:
        return [(c.name, c.implicit, c.local_subnets, c.remote_subnets) for c in children]

    if shape(old) != shape(new):
        return ["children"]
    keys = []
    for a, b in zip(old, new, strict=True):
        for key in (*_CHILD_REAUTH, *_CHILD_LIVE):
            if getattr(a, key) != getattr(b, key) and not a.implicit:
                keys.append(f"child[{a.name}].{key}")
    return keys


def key_kind(key: str) -> Kind:
    """The kind of change one differing key makes (rules 3-5)."""
    if key == CREDENTIALS:
        return "updated"
    if key.startswith("child["):
        key = key.split(".", 1)[1]
        return "reauthenticated" if key in _CHILD_REAUTH else "updated"
    if key in LIVE_KEYS:
        return "updated"
    if key in REAUTH_KEYS:
        return "reauthenticated"
    return "restarted"  # RESTART_KEYS, and any key not classified yet (rule 4)


def kind_of(keys: Iterable[str]) -> Kind:
    """The most disruptive kind among ``keys`` (``unchanged`` for none)."""
    return max((key_kind(k) for k in keys), key=KINDS.index, default="unchanged")
