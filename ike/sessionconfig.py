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
from ike.events import IPNetwork
from ike.policy import DEFAULT_RETRANSMIT, RetransmitPolicy
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
