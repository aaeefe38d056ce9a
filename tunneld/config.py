"""The configuration file: TOML -> frozen dataclasses, with precise errors.

One file per gateway: ``[gateway]``, ``[identity]``, one ``[[peer]]`` per
remote gateway and, optionally, ``[metrics]`` (the Prometheus endpoint).
docs/configuration.md documents every key.

How a file is read:

1. :mod:`tomllib` parses it; a syntax error names the line and column.
2. Each table is read by a :class:`Section` that knows its keys: an unknown
   key is an error that suggests the nearest known one; every value is type-
   and range-checked. Every error is a :class:`ConfigError` naming the file,
   the key path (``peer[0].remote_subnets[1]``) and the reason.
3. Relative paths resolve against the directory of the configuration file.
4. Credentials are loaded and cross-checked now (key matches certificate,
   certificate chains to a configured CA and carries our identity, private
   files are mode 0600), and so is ``[gateway] user``/``group`` (the account
   must exist), so ``tunneld check`` catches a bad file.
5. Whole-file checks: unique peer names and IDs, remote subnets of different
   peers and of different Child SAs of one peer do not overlap (the data
   plane picks the outbound SA by destination address alone), no two entries
   could serve the same identity from the same address
   (:mod:`tunneld.peermatch`, which also reads identity patterns).

Child SAs: a peer has one implicit Child SA (named after the peer) made of
its top-level ``local_subnets``/``remote_subnets``, or named
``[[peer.child]]`` tables, each with its own selectors and, optionally, its
own ``esp``, ``child_lifetime``, ``child_packet_limit`` and
``child_byte_limit`` (the peer's values are their defaults). Selectors at the
top level and ``[[peer.child]]`` together are refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypedDict, cast, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ike.certs import verify_chain
from ike.errors import AuthenticationFailed, LocalError
from ike.identity import Identity, identity_matches, is_pattern
from ike.proposals import Proposal, parse_esp_proposal, parse_ike_proposal
from tunneld import credentials as cred
from tunneld import hardening
from tunneld.credentials import CredentialError, PrivateKey, Psk
from tunneld.peermatch import SpokeSubnets, check_pattern_entry, check_unambiguous, read_spokes
from tunneld.tomlschema import (
    ConfigError,
    IPAddress,
    IPNetwork,
    Section,
    parse_address,
    parse_duration,
    parse_network,
    parse_size,
    resolve,
)
from tunneld.tomlschema import kind_of as _kind

__all__ = [
    "ChildConfig",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "IdentityConfig",
    "MetricsConfig",
    "PeerConfig",
    "describe",
    "load_config",
]

# --- defaults and limits (what we chose; see docs/configuration.md) ----------
DEFAULT_IKE = ("aes256gcm16-prfsha256-x25519-ecp256",)
# No ESN first: tunneld rekeys long before 2**32 packets (2**26 by default), so
# ESN buys nothing, and userspace peers such as strongSwan's libipsec cannot
# install ESN SAs (docs/interop.md). ESN stays acceptable when a peer insists.
DEFAULT_ESP = ("aes256gcm16-noesn-esn", "aes128gcm16-noesn-esn")
# Soft limits start a rekey; an SA that reaches its soft limit times this factor
# is dead (hard limit), as strongSwan's life_time defaults to 110% of rekey_time.
HARD_LIMIT_FACTOR = 1.1
# AES-GCM keys are retired well before 2**28 packets (DESIGN §4): the soft
# limit may be at most 2**27, so even the hard limit stays far below.
DEFAULT_CHILD_PACKETS = 1 << 26
MAX_CHILD_PACKETS = 1 << 27
DEFAULT_CHILD_BYTES = 1 << 36  # 64 GiB, ~49 M packets of 1400 bytes
MAX_REPLAY_WINDOW = 1 << 20  # tunneld.dataplane.replay caps its window here
MAX_BUSY_POLL_US = 100_000  # what we chose: [gateway] busy_poll_us spins at most 100 ms
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1

# --- the configuration, as the daemon sees it --------------------------------

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
AuthMethod = Literal["pubkey", "psk"]
Auto = Literal["start", "listen"]
DpdAction = Literal["restart", "clear"]


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    listen: tuple[IPAddress, ...]
    port: int
    nat_t_port: int
    tun: str
    mtu: int
    control_socket: Path
    log_format: LogFormat
    log_level: LogLevel
    save_keys_dir: Path  # where peers with save_keys = true write Wireshark's key tables
    # the account to run as once the devices and the control socket are open (keeping
    # only CAP_NET_ADMIN; tunneld.hardening); None: stay as started
    user: str | None = None
    group: str | None = None  # None: the user's primary group
    # the packet pumps in a thread of their own instead of trio tasks (tunneld.datapath)
    data_thread: bool = False
    # the data thread keeps polling this long after moving packets (0: never)
    busy_poll_us: int = 0
    # TCP super-packets from the TUN, cut into segments by tunneld (tunneld.io.segment)
    tso: bool = False


@dataclass(frozen=True)
class IdentityConfig:
    """Our identity; the certificate fields are all set or all empty/None."""

    id: Identity
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()  # after the leaf in the certificate file
    private_key: PrivateKey | None = None
    ca: tuple[x509.Certificate, ...] = ()

    @property
    def has_certificate(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class ChildConfig:
    """One Child SA of a peer: ``[[peer.child]]``, or the implicit one (named after
    the peer, from the peer's top-level keys; ``implicit`` True)."""

    name: str
    local_subnets: tuple[IPNetwork, ...]
    remote_subnets: tuple[IPNetwork, ...]
    esp: tuple[Proposal, ...]
    child_lifetime: float  # seconds
    child_packet_limit: int
    child_byte_limit: int
    implicit: bool = False

    @property
    def child_hard_lifetime(self) -> float:
        return self.child_lifetime * HARD_LIMIT_FACTOR

    @property
    def child_packet_hard_limit(self) -> int:
        return int(self.child_packet_limit * HARD_LIMIT_FACTOR)

    @property
    def child_byte_hard_limit(self) -> int:
        return int(self.child_byte_limit * HARD_LIMIT_FACTOR)

    def key(self, peer_index: int, child_index: int, key: str) -> str:
        """Where ``key`` of this child is in the file (for error messages)."""
        if self.implicit:
            return f"peer[{peer_index}].{key}"
        return f"peer[{peer_index}].child[{child_index}].{key}"


@dataclass(frozen=True)
class PeerConfig:
    name: str
    # None: listen-only, any source address, ID must match; a str is a DNS name,
    # resolved by the daemon at start and before every initiation (never by `check`)
    address: IPAddress | str | None
    port: int
    nat_t_port: int
    id: Identity
    local_id: Identity
    auth: AuthMethod
    psk: Psk | None
    local_subnets: tuple[IPNetwork, ...]
    remote_subnets: tuple[IPNetwork, ...]
    auto: Auto
    ike: tuple[Proposal, ...]
    esp: tuple[Proposal, ...]
    ike_lifetime: float  # seconds
    child_lifetime: float
    rekey_jitter: float
    child_packet_limit: int
    child_byte_limit: int
    dpd_delay: float  # 0: no liveness checks
    dpd_action: DpdAction
    delete_delay: float
    replay_window: int
    save_keys: bool
    # seconds before initiating again after AUTHENTICATION_FAILED (doubles, up to 16x)
    auth_failure_backoff: float
    # an identity pattern (id = "*.domain"): at most this many spokes, and the
    # fixed subnets of some of them (tunneld.peermatch rule 3); 0 / () otherwise
    max_spokes: int = 0
    spokes: tuple[SpokeSubnets, ...] = ()
    # the Child SAs, the one of IKE_AUTH first; local/remote_subnets above are their union
    children: tuple[ChildConfig, ...] = ()

    @property
    def is_pattern(self) -> bool:
        return is_pattern(self.id)

    @property
    def ike_hard_lifetime(self) -> float:
        return self.ike_lifetime * HARD_LIMIT_FACTOR


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: where the Prometheus endpoint listens (tunneld.metrics)."""

    host: IPAddress
    port: int

    @property
    def listen(self) -> str:
        return (
            f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"
        )


@dataclass(frozen=True)
class Config:
    path: Path
    gateway: GatewayConfig
    identity: IdentityConfig
    peers: tuple[PeerConfig, ...]
    metrics: MetricsConfig | None = None  # no [metrics]: no endpoint

    def peer(self, name: str) -> PeerConfig:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(name)


def _name(section: Section, key: str) -> str:
    value = section.string(key)
    if not _NAME_RE.fullmatch(value):
        raise section.error(key, f"'{value}' must be 1-64 of A-Z a-z 0-9 _ . - (starting alnum)")
    return value


# --- [gateway] ----------------------------------------------------------------

_GATEWAY_KEYS = (
    "name", "listen", "port", "nat_t_port", "tun", "mtu",
    "control_socket", "log_format", "log_level", "save_keys_dir", "user", "group",
    "data_thread", "busy_poll_us", "tso",
)  # fmt: skip


def _read_gateway(file: Path, data: object) -> GatewayConfig:
    s = Section(file, "gateway", data, _GATEWAY_KEYS)
    name = _name(s, "name")
    tun = s.string("tun", "tunneld0")
    if not _IFNAME_RE.fullmatch(tun):
        raise s.error("tun", f"'{tun}' is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    control = s.file_path("control_socket", file.parent) or Path(f"/run/tunneld/{name}.sock")
    data_thread = s.typed("data_thread", bool, False)
    return GatewayConfig(
        name=name,
        listen=_listen(s),
        port=s.integer("port", 500, 1, 65535),
        nat_t_port=s.integer("nat_t_port", 4500, 1, 65535),
        tun=tun,
        mtu=s.integer("mtu", 1400, 576, 9000),
        control_socket=control,
        log_format=cast(LogFormat, s.choice("log_format", get_args(LogFormat), "text")),
        log_level=cast(LogLevel, s.choice("log_level", get_args(LogLevel), "info")),
        save_keys_dir=s.file_path("save_keys_dir", file.parent) or control.parent / f"{name}-keys",
        data_thread=data_thread,
        busy_poll_us=_busy_poll_us(s, data_thread),
        tso=s.typed("tso", bool, False),
        **_run_as(s),
    )


def _busy_poll_us(s: Section, data_thread: bool) -> int:
    """Only the data thread polls (tunneld.datapath, "Busy polling")."""
    value = s.integer("busy_poll_us", 0, 0, MAX_BUSY_POLL_US)
    if value and not data_thread:
        raise s.error("busy_poll_us", "needs data_thread = true (only the data thread polls)")
    return value


def _listen(s: Section) -> tuple[IPAddress, ...]:
    """Every address is bound (UDP port and NAT-T port): no duplicates, and the
    any-address of a family only alone (binding it next to a concrete one fails)."""
    listen = s.items("listen", parse_address, ["0.0.0.0"], single=True)
    for i, addr in enumerate(listen):
        if addr in listen[:i]:
            raise s.error(f"listen[{i}]", f"'{addr}' is listed twice")
        same_family = [a for a in listen if a.version == addr.version]
        if addr.is_unspecified and len(same_family) > 1:
            raise s.error(
                f"listen[{i}]",
                f"'{addr}' (every address) cannot be combined with other IPv{addr.version} "
                "addresses: list the addresses, or only it",
            )
    return listen


class _Account(TypedDict):
    user: str | None
    group: str | None


def _run_as(s: Section) -> _Account:
    """``user`` and ``group``: they must exist now (``tunneld check`` says so, not ``run``)."""
    user = s.string("user") if s.has("user") else None
    group = s.string("group") if s.has("group") else None
    if group is not None and user is None:
        raise s.error("group", "only used with gateway.user (the account to run as)")
    if user is not None:
        try:
            hardening.lookup(user)
        except KeyError as exc:
            raise s.error("user", f"{exc.args[0]} on this system") from None
        if group is not None:
            try:
                hardening.lookup(user, group)
            except KeyError as exc:
                raise s.error("group", f"{exc.args[0]} on this system") from None
    return {"user": user, "group": group}


# --- [identity] ---------------------------------------------------------------

_IDENTITY_KEYS = ("id", "certificate", "private_key", "ca")
_CERT_KEYS = ("certificate", "private_key", "ca")


def _read_identity(file: Path, data: object, now: datetime) -> IdentityConfig:
    s = Section(file, "identity", data, _IDENTITY_KEYS)
    identity = s.convert("id", _identity)
    present = [k for k in _CERT_KEYS if s.has(k)]
    if not present:
        return IdentityConfig(id=identity)
    for missing in _CERT_KEYS:
        if not s.has(missing):
            raise s.error(
                missing,
                f"required with identity.{present[0]} (certificate auth needs "
                "certificate, private_key and ca)",
            )
    try:
        key = cred.load_private_key(cast(Path, s.file_path("private_key", file.parent)))
    except CredentialError as exc:
        raise s.error("private_key", str(exc)) from None
    leaf, intermediates = _read_certificate(s, file, key, now)
    ca = _read_cas(s, file, now)
    der = serialization.Encoding.DER
    try:  # exactly the checks a peer running tunneld will make (ike.certs)
        verify_chain(
            leaf.public_bytes(der), [c.public_bytes(der) for c in intermediates], list(ca), now
        )
    except AuthenticationFailed as exc:
        raise s.error("certificate", f"{exc} (with identity.ca)") from None
    identity = _own_identity(s, "id", identity, leaf)
    return IdentityConfig(identity, leaf, intermediates, key, ca)


def _own_identity(s: Section, key: str, identity: Identity, cert: x509.Certificate) -> Identity:
    """Our ID must be in our certificate; a DN is sent as the certificate's exact subject DER."""
    if not identity_matches(identity.id_type, identity.data, cert):
        raise s.error(key, f"'{identity}' is not in the certificate ({_describe_cert(cert)})")
    subject = Identity.from_certificate_subject(cert)
    return subject if subject.matches(identity) else identity


def _read_certificate(
    s: Section, file: Path, key: PrivateKey, now: datetime
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    path = cast(Path, s.file_path("certificate", file.parent))
    try:
        leaf, *rest = cred.load_certificates(path, "certificate file")
        cred.check_key_matches(key, leaf)
        cred.check_validity(leaf, now, path)
    except CredentialError as exc:
        raise s.error("certificate", str(exc)) from None
    return leaf, tuple(rest)


def _read_cas(s: Section, file: Path, now: datetime) -> tuple[x509.Certificate, ...]:
    paths = s.items("ca", lambda text: resolve(file.parent, text), single=True)
    out: list[x509.Certificate] = []
    for i, path in enumerate(paths):
        try:
            for cert in cred.load_certificates(path, "CA file"):
                cred.check_is_ca(cert, path)
                cred.check_validity(cert, now, path)
                out.append(cert)
        except CredentialError as exc:
            raise s.error(f"ca[{i}]", str(exc)) from None
    return tuple(out)


def _identity(value: object) -> Identity:
    if not isinstance(value, str):
        raise ValueError(f"expected an identity string, got {_kind(value)}")
    try:
        return Identity.parse(value)
    except LocalError as exc:
        raise ValueError(str(exc)) from None


def _describe_cert(cert: x509.Certificate) -> str:
    parts = [f"subject {cert.subject.rfc4514_string()}"]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return parts[0] + ", no subjectAltName"
    for kind, label in ((x509.DNSName, "DNS"), (x509.IPAddress, "IP"), (x509.RFC822Name, "email")):
        parts += [f"{label}:{v}" for v in san.get_values_for_type(kind)]
    return ", ".join(parts)


# --- [[peer]] -----------------------------------------------------------------

_PEER_KEYS = (
    "name", "address", "port", "nat_t_port", "id", "local_id", "auth", "psk_file",
    "local_subnets", "remote_subnets", "auto", "ike", "esp",
    "ike_lifetime", "child_lifetime", "rekey_jitter", "child_packet_limit", "child_byte_limit",
    "dpd_delay", "dpd_action", "delete_delay", "replay_window", "save_keys",
    "auth_failure_backoff", "max_spokes", "spokes", "child",
)  # fmt: skip
_CHILD_KEYS = (
    "name", "local_subnets", "remote_subnets", "esp",
    "child_lifetime", "child_packet_limit", "child_byte_limit",
)  # fmt: skip
_DAY = 86400.0


class _Endpoint(TypedDict):
    address: IPAddress | str | None
    port: int
    nat_t_port: int
    auto: Auto


class _Auth(TypedDict):
    id: Identity
    local_id: Identity
    auth: AuthMethod
    psk: Psk | None


class _ChildLimits(TypedDict):
    child_lifetime: float
    child_packet_limit: int
    child_byte_limit: int


class _Limits(_ChildLimits):
    ike_lifetime: float
    rekey_jitter: float
    dpd_delay: float
    dpd_action: DpdAction
    delete_delay: float
    replay_window: int
    save_keys: bool
    auth_failure_backoff: float


def _read_peer(file: Path, index: int, data: object, me: IdentityConfig) -> PeerConfig:
    s = Section(file, f"peer[{index}]", data, _PEER_KEYS)
    name = _name(s, "name")
    auth = _peer_auth(s, file, me)
    max_spokes, spokes = read_spokes(s, auth["id"] if is_pattern(auth["id"]) else None)
    esp = s.items("esp", parse_esp_proposal, list(DEFAULT_ESP))
    limits = _peer_limits(s)
    children = _read_children(s, name, esp, limits)
    peer = PeerConfig(
        name=name,
        **_peer_endpoint(s),
        **auth,
        local_subnets=_union(c.local_subnets for c in children),
        remote_subnets=_union(c.remote_subnets for c in children),
        ike=s.items("ike", parse_ike_proposal, list(DEFAULT_IKE)),
        esp=esp,
        **limits,
        max_spokes=max_spokes,
        spokes=spokes,
        children=children,
    )
    if peer.is_pattern:
        check_pattern_entry(s, peer)
    return peer


def _read_children(
    s: Section, peer: str, esp: tuple[Proposal, ...], limits: _ChildLimits
) -> tuple[ChildConfig, ...]:
    """``[[peer.child]]`` tables, or the implicit child of the top-level selectors."""
    inherited: _ChildLimits = {
        "child_lifetime": limits["child_lifetime"],
        "child_packet_limit": limits["child_packet_limit"],
        "child_byte_limit": limits["child_byte_limit"],
    }
    if not s.has("child"):
        return (
            ChildConfig(
                peer,
                s.items("local_subnets", parse_network),
                s.items("remote_subnets", parse_network),
                esp,
                **inherited,
                implicit=True,
            ),
        )
    for key in ("local_subnets", "remote_subnets"):
        if s.has(key):
            raise s.error(
                key,
                "not with [[peer.child]]: each child has its own local_subnets and "
                "remote_subnets (move these into a [[peer.child]] table)",
            )
    raw = s.raw("child")
    if not isinstance(raw, list) or not raw:
        raise s.error("child", "write Child SAs as [[peer.child]] tables (an array of tables)")
    children: list[ChildConfig] = []
    for i, data in enumerate(raw):
        c = Section(s.file, s.path(f"child[{i}]"), data, _CHILD_KEYS)
        child = ChildConfig(
            _name(c, "name"),
            c.items("local_subnets", parse_network),
            c.items("remote_subnets", parse_network),
            c.items("esp", parse_esp_proposal, list(esp)) if c.has("esp") else esp,
            **_child_limits(c, inherited),
        )
        for j, other in enumerate(children):
            if other.name == child.name:
                raise c.error("name", f"'{child.name}' is also child[{j}] of this peer")
        children.append(child)
    return tuple(children)


def _union(groups: Iterable[tuple[IPNetwork, ...]]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for group in groups:
        out += [net for net in group if net not in out]
    return tuple(out)


def _peer_endpoint(s: Section) -> _Endpoint:
    address = (
        s.convert("address", lambda v: _address_or_name(_string(v)), None)
        if s.has("address")
        else None
    )
    auto = cast(Auto, s.choice("auto", get_args(Auto), "start" if address else "listen"))
    if auto == "start" and address is None:
        raise s.error("address", 'required with auto = "start" (or set auto = "listen")')
    return {
        "address": address,
        "port": s.integer("port", 500, 1, 65535),
        "nat_t_port": s.integer("nat_t_port", 4500, 1, 65535),
        "auto": auto,
    }


# RFC 1123 §2.1 host names: labels of letters, digits and hyphens, not at either end
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def _address_or_name(text: str) -> IPAddress | str:
    """An IP address, or a DNS name (checked for syntax only: `check` never resolves)."""
    try:
        return parse_address(text)
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(text) or text.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"'{text}' is neither an IPv4/IPv6 address nor a DNS name")
    return text.rstrip(".").lower()


def _peer_auth(s: Section, file: Path, me: IdentityConfig) -> _Auth:
    default = "psk" if s.has("psk_file") else "pubkey"
    auth = cast(AuthMethod, s.choice("auth", get_args(AuthMethod), default))
    local_id = s.convert("local_id", _identity) if s.has("local_id") else me.id
    psk = None
    if auth == "pubkey":
        if me.certificate is None:
            raise s.error(
                "auth",
                "certificate auth needs identity.certificate, identity.private_key "
                'and identity.ca (or use auth = "psk" with a psk_file)',
            )
        if s.has("psk_file"):
            raise s.error("psk_file", 'only used with auth = "psk"')
        local_id = _own_identity(s, "local_id", local_id, me.certificate)
    else:
        if not s.has("psk_file"):
            raise s.error("psk_file", 'required with auth = "psk"')
        try:
            psk = cred.load_psk(cast(Path, s.file_path("psk_file", file.parent)))
        except CredentialError as exc:
            raise s.error("psk_file", str(exc)) from None
    return {"id": s.convert("id", _identity), "local_id": local_id, "auth": auth, "psk": psk}


def _duration(s: Section, key: str, default: object, lo: float, hi: float) -> float:
    return s.ranged(key, s.convert(key, parse_duration, default), lo, hi, "s")


_CHILD_DEFAULTS: _ChildLimits = {
    "child_lifetime": 3600.0,
    "child_packet_limit": DEFAULT_CHILD_PACKETS,
    "child_byte_limit": DEFAULT_CHILD_BYTES,
}


def _child_limits(s: Section, defaults: _ChildLimits) -> _ChildLimits:
    """A Child SA's lifetime and volume limits (in [[peer]] or [[peer.child]])."""
    return {
        "child_lifetime": _duration(s, "child_lifetime", defaults["child_lifetime"], 5, 30 * _DAY),
        "child_packet_limit": s.integer(
            "child_packet_limit", defaults["child_packet_limit"], 1000, MAX_CHILD_PACKETS
        ),
        "child_byte_limit": s.ranged(
            "child_byte_limit",
            s.convert("child_byte_limit", parse_size, defaults["child_byte_limit"]),
            1 << 20,
            1 << 40,
        ),
    }


def _peer_limits(s: Section) -> _Limits:
    def duration(key: str, default: str, lo: float, hi: float) -> float:
        return _duration(s, key, default, lo, hi)

    dpd = duration("dpd_delay", "30s", 0, _DAY)
    if 0 < dpd < 1:
        raise s.error("dpd_delay", "must be 0 (off) or at least 1s")
    return {
        "ike_lifetime": duration("ike_lifetime", "4h", 5, 30 * _DAY),
        **_child_limits(s, _CHILD_DEFAULTS),
        "rekey_jitter": s.number("rekey_jitter", 0.1, 0.0, 0.5),
        "dpd_delay": dpd,
        "dpd_action": cast(DpdAction, s.choice("dpd_action", get_args(DpdAction), "restart")),
        "delete_delay": duration("delete_delay", "5s", 0, 300),
        "replay_window": s.integer("replay_window", 1024, 32, MAX_REPLAY_WINDOW),
        "save_keys": s.typed("save_keys", bool, False),
        "auth_failure_backoff": duration("auth_failure_backoff", "30s", 1, _DAY),
    }


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


# --- [metrics] -------------------------------------------------------------------

_METRICS_KEYS = ("listen",)


def _read_metrics(file: Path, data: object) -> MetricsConfig:
    s = Section(file, "metrics", data, _METRICS_KEYS)
    host, port = s.convert("listen", lambda v: _host_port(_string(v)))
    return MetricsConfig(host, port)


def _host_port(text: str) -> tuple[IPAddress, int]:
    """``"192.0.2.1:9108"`` or ``"[2001:db8::1]:9108"``: an address and a port, both needed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(
            f'\'{text}\' is not ADDRESS:PORT (examples: "192.0.2.1:9108", "[::1]:9108")'
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"'{text}': only IPv6 addresses are written in brackets")
    elif ":" in host:
        raise ValueError(f"'{text}': write an IPv6 address in brackets, as [{host}]:{port}")
    address = parse_address(host)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{text}': the port must be 1 .. 65535")
    return address, int(port)


# --- the whole file -------------------------------------------------------------

_TOP_KEYS = ("gateway", "identity", "peer", "metrics")


def load_config(path: str | Path, *, now: datetime | None = None) -> Config:
    """Read, validate and load one gateway's configuration; :class:`ConfigError` on any problem.

    ``now`` (default: the current UTC time) is when certificates must be valid.
    """
    file = Path(path).absolute()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}") from None
    top = Section(file, "", data, _TOP_KEYS)
    for key in ("gateway", "identity"):
        top.raw(key)  # "required key is missing" names the table
    gateway = _read_gateway(file, data["gateway"])
    identity = _read_identity(file, data["identity"], now or datetime.now(UTC))
    raw_peers = top.raw("peer")
    if not isinstance(raw_peers, list):
        raise top.error("peer", "write peers as [[peer]] tables (an array of tables)")
    if not raw_peers:
        raise top.error("peer", "at least one [[peer]] is required")
    peers = tuple(_read_peer(file, i, p, identity) for i, p in enumerate(raw_peers))
    _check_peers(file, peers)
    _check_mtu(file, gateway, peers)
    metrics = _read_metrics(file, data["metrics"]) if "metrics" in data else None
    return Config(file, gateway, identity, peers, metrics)


def _check_peers(file: Path, peers: tuple[PeerConfig, ...]) -> None:
    for i, peer in enumerate(peers):
        for j, other in enumerate(peers[:i]):
            if peer.name == other.name:
                raise ConfigError(file, f"peer[{i}].name", f"'{peer.name}' is also peer[{j}]")
            if peer.id.matches(other.id):
                raise ConfigError(file, f"peer[{i}].id", f"'{peer.id}' is also peer '{other.name}'")
    check_unambiguous(file, peers)
    for i, peer in enumerate(peers):
        for c, child in enumerate(peer.children):
            _check_child(file, peers, i, c, child)


def _check_child(
    file: Path, peers: tuple[PeerConfig, ...], i: int, c: int, child: ChildConfig
) -> None:
    """Remote subnets: not local to the peer (but a hub's: transit), not another child's
    or earlier peer's."""
    peer = peers[i]
    for k, net in enumerate(child.remote_subnets):
        where = child.key(i, c, f"remote_subnets[{k}]")
        for local in () if peer.is_pattern else peer.local_subnets:  # a hub's transit
            if net.version == local.version and net.overlaps(local):
                raise ConfigError(file, where, f"{net} overlaps local subnet {local}")
        for sibling in peer.children[:c]:
            for theirs in sibling.remote_subnets:
                if net.version == theirs.version and net.overlaps(theirs):
                    raise ConfigError(
                        file,
                        where,
                        f"{net} overlaps {theirs} of child '{sibling.name}' (outbound "
                        "packets are matched to a Child SA by destination only)",
                    )
        for other in peers[:i]:
            for theirs in other.remote_subnets:
                if net.version == theirs.version and net.overlaps(theirs):
                    raise ConfigError(
                        file, where, f"{net} overlaps {theirs} of peer '{other.name}'"
                    )


def _check_mtu(file: Path, gateway: GatewayConfig, peers: tuple[PeerConfig, ...]) -> None:
    ipv6 = any(n.version == 6 for p in peers for n in (*p.local_subnets, *p.remote_subnets))
    if ipv6 and gateway.mtu < 1280:
        raise ConfigError(
            file, "gateway.mtu", f"{gateway.mtu} < 1280, the IPv6 minimum (RFC 8200 §5)"
        )


def describe(config: Config) -> str:
    """A short summary for ``tunneld check`` (no secrets)."""
    g, ident = config.gateway, config.identity
    lines = [
        f"gateway {g.name}: tun {g.tun} mtu {g.mtu}, listen "
        + ", ".join(str(a) for a in g.listen)
        + f" (udp {g.port}/{g.nat_t_port}), control {g.control_socket}"
        + (f", runs as {g.user}" + (f":{g.group}" if g.group else "") if g.user else "")
        + (f", metrics on http://{config.metrics.listen}/metrics" if config.metrics else ""),
        f"identity {ident.id}"
        + (
            f", certificate {ident.certificate.subject.rfc4514_string()}"
            if ident.certificate
            else ""
        )
        + (f", {ident.private_key.kind} key" if ident.private_key else ""),
    ]
    for p in config.peers:
        where = f"{p.address}:{p.port}" if p.address else "any address"
        implicit = len(p.children) == 1 and p.children[0].implicit
        spokes = f" (pattern: up to {p.max_spokes} spokes)" if p.is_pattern else ""
        lines.append(
            f"peer {p.name}: {p.auth}, id {p.id}{spokes}, {where}, auto={p.auto}"
            + (", " + _selectors(p.local_subnets, p.remote_subnets) if implicit else "")
            + (f", save_keys (SA keys written to {g.save_keys_dir})" if p.save_keys else "")
        )
        if not implicit:
            lines += [
                f"  child {c.name}: " + _selectors(c.local_subnets, c.remote_subnets)
                for c in p.children
            ]
    return "\n".join(lines)


def _selectors(local: tuple[IPNetwork, ...], remote: tuple[IPNetwork, ...]) -> str:
    return " ".join(map(str, local)) + " <=> " + " ".join(map(str, remote))
