"""What one IKE session needs to know about its peer: a frozen, pure value.

The daemon builds a :class:`SessionConfig` from the TOML configuration; the
core never reads files, clocks or the environment. The wall clock, used only
to check certificate validity, is injected as a function of ``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from ike.auth import Identity, PrivateKey
from ike.errors import LocalError
from ike.events import Address, IPNetwork
from ike.policy import (
    DEFAULT_CHILD_LIFETIME,
    DEFAULT_IKE_LIFETIME,
    DEFAULT_REKEY_JITTER,
    DEFAULT_RETRANSMIT,
    HARD_LIFETIME_FACTOR,
    MAX_REKEY_JITTER,
    RetransmitPolicy,
)
from ike.proposals import Proposal


class Secret:
    """Bytes that must never be printed: the repr says only how long they are."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """The secret itself; call only where it is fed to a PRF."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))


@dataclass(frozen=True)
class PubkeyAuth:
    """AUTH method 14 (RFC 7427) with our certificate's key; the peer's chain ends at a CA.

    ``intermediates`` are sent after our certificate (one CERT payload each)
    and also used to build the peer's chain.
    """

    private_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    trust_anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()

    def __repr__(self) -> str:
        return (
            f"PubkeyAuth(certificate={self.certificate.subject.rfc4514_string()!r}, "
            f"trust_anchors={len(self.trust_anchors)}, private_key=<redacted>)"
        )


@dataclass(frozen=True)
class PskAuth:
    """AUTH method 2 (RFC 7296 §2.15): one secret shared by both peers."""

    secret: Secret


@dataclass(frozen=True)
class ChildConfig:
    """One configured Child SA (RFC 7296 §1.3, §2.9): a name, its selectors, its
    ESP proposals and its soft lifetime (hard = x1.1).

    A peer has one or more. The first is negotiated in IKE_AUTH, the others
    with CREATE_CHILD_SA; a responder picks the one whose selectors match what
    the initiator proposed (:func:`ike.exchanges.selectors.choose_child`).
    """

    name: str
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    esp_proposals: tuple[Proposal, ...]
    lifetime: float = DEFAULT_CHILD_LIFETIME

    def __post_init__(self) -> None:
        if self.lifetime <= 0:
            raise LocalError("lifetimes must be positive")

    @property
    def hard_lifetime(self) -> float:
        return self.lifetime * HARD_LIFETIME_FACTOR


def never_in_use(spi: int) -> bool:
    """The default SPI collision check: nothing else allocates SPIs."""
    return False


@dataclass(frozen=True)
class SessionConfig:
    """One peer's configuration, as the IKE core sees it.

    ``remote_id`` None (responder only) accepts any identity the peer proves
    with a certificate chaining to ``trust_anchors``. ``spi_in_use`` lets the
    daemon veto inbound ESP SPIs already installed in its data plane.
    ``force_encap`` fakes NAT detection (like strongSwan's ``encap = yes``)
    so that both sides move to UDP 4500 and ESP-in-UDP (RFC 3948).

    Lifetimes (seconds, DESIGN §4): both peers rekey an SA at its soft
    lifetime less a random fraction in [0, ``rekey_jitter``] of it; an SA not
    rekeyed by ``lifetime x 1.1`` (``*_hard_lifetime``) is deleted. Packet and
    byte limits are the daemon's (it calls ``IkeSession.rekey_child``).
    ``dpd_delay`` > 0: after that long without an authenticated message or
    ESP from the peer, send a liveness check (RFC 7296 §2.4); 0 turns it off.

    Child SAs: ``children`` (several named ones, each with its own selectors,
    proposals and lifetime); empty means one implicit child made of
    ``local_ts``, ``remote_ts``, ``esp_proposals`` and ``child_lifetime``,
    named ``name`` (:attr:`child_configs` gives either). ``keep_children``:
    every configured child missing from the established IKE SA (never
    created, or deleted) is created with CREATE_CHILD_SA, at once by the IKE
    SA's initiator, after :data:`ike.policy.CHILD_START_GRACE` by its
    responder (which leaves the initiator time to do it), with back-off.
    """

    local_id: Identity
    remote_id: Identity | None
    auth: PubkeyAuth | PskAuth
    ike_proposals: tuple[Proposal, ...]
    esp_proposals: tuple[Proposal, ...]
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    wall_clock: Callable[[float], datetime]
    retransmit: RetransmitPolicy = DEFAULT_RETRANSMIT
    spi_in_use: Callable[[int], bool] = never_in_use
    send_initial_contact: bool = True
    force_encap: bool = True
    name: str = ""
    ike_lifetime: float = DEFAULT_IKE_LIFETIME
    child_lifetime: float = DEFAULT_CHILD_LIFETIME
    rekey_jitter: float = DEFAULT_REKEY_JITTER
    dpd_delay: float = 0.0
    children: tuple[ChildConfig, ...] = ()
    keep_children: bool = False

    def __post_init__(self) -> None:
        if self.ike_lifetime <= 0 or self.child_lifetime <= 0:
            raise LocalError("lifetimes must be positive")
        if not 0.0 <= self.rekey_jitter <= MAX_REKEY_JITTER:
            raise LocalError(f"rekey_jitter must be within 0..{MAX_REKEY_JITTER}")
        if self.dpd_delay < 0:
            raise LocalError("dpd_delay must be 0 (off) or positive")

    @property
    def ike_hard_lifetime(self) -> float:
        return self.ike_lifetime * HARD_LIFETIME_FACTOR

    @property
    def child_hard_lifetime(self) -> float:
        return self.child_lifetime * HARD_LIFETIME_FACTOR

    @property
    def child_configs(self) -> tuple[ChildConfig, ...]:
        """The configured Child SAs, the one of IKE_AUTH first (never empty)."""
        if self.children:
            return self.children
        implicit = ChildConfig(
            self.name, self.local_ts, self.remote_ts, self.esp_proposals, self.child_lifetime
        )
        return (implicit,)

    def child_config(self, name: str) -> ChildConfig:
        """The child called ``name`` (the first one if none is: e.g. a renamed child)."""
        configs = self.child_configs
        return next((c for c in configs if c.name == name), configs[0])


@dataclass(frozen=True)
class PeerQuery:
    """What a responder knows of its initiator when IKE_AUTH arrives, before AUTH is
    verified (RFC 7296 §2.15): the identity it claims (IDi), the one it wants us to
    be (IDr, optional), where it sends from, and the networks it proposes for its
    side (TSi, possibly empty). Nothing here is authenticated yet."""

    idi: Identity
    idr: Identity | None
    remote_addr: Address
    tsi: tuple[IPNetwork, ...]


# A responder's peer lookup (strongSwan's peer_cfg lookup by identity): the
# configuration for this initiator, or the reason there is none (the initiator
# gets AUTHENTICATION_FAILED; the reason goes into IkeSaDown). It is asked before
# AUTH is verified, so it must not change anything: the AUTH check that follows
# proves the identity with the configuration it returns.
PeerLookup = Callable[[PeerQuery], "SessionConfig | str"]
