"""Events an :class:`ike.session.IkeSession` hands to the daemon.

The session queues them; the shell drains them with ``next_event()``. They are
plain frozen dataclasses. Only :class:`ChildSaUp` carries key material, inside
a :class:`ChildSaKeys` whose repr (and therefore the event's repr) is redacted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ike.constants import EncrId, NotifyType

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int]  # (host, UDP port)


@dataclass(frozen=True, repr=False, eq=False)
class ChildSaKeys:
    """ESP keys of one Child SA, oriented from our side (RFC 7296 §2.17).

    For AES-GCM (RFC 4106 §8.1) each key is followed in KEYMAT by a 4-byte
    salt; the two are kept apart here because the data plane wants them apart.
    """

    inbound_key: bytes
    inbound_salt: bytes
    outbound_key: bytes
    outbound_salt: bytes

    def __repr__(self) -> str:
        return f"ChildSaKeys(<redacted {len(self.inbound_key) * 8}-bit keys>)"

    __str__ = __repr__


@dataclass(frozen=True)
class IkeSaUp:
    """The IKE SA is authenticated both ways (after IKE_AUTH, §1.2)."""

    local_spi: bytes  # IKE SPIs are 8 bytes, as in the IKE header (§3.1)
    remote_spi: bytes
    algorithms: str  # e.g. "aes256gcm16-prfsha256-x25519"
    remote_id: str
    local_addr: Address
    remote_addr: Address


@dataclass(frozen=True)
class ChildSaUp:
    """A Child SA is ready: install the inbound SA, then use the outbound one.

    ``inbound_spi`` is ours (the peer puts it in the ESP packets it sends);
    ``outbound_spi`` is the peer's. ``encr`` is the negotiated ESP cipher the
    keys belong to: the data plane must build exactly that AEAD. ``rekey_of``
    names the inbound SPI of the Child SA this one replaces (CREATE_CHILD_SA
    with REKEY_SA), else None.
    """

    inbound_spi: int
    outbound_spi: int
    keys: ChildSaKeys
    encr: EncrId  # ESP transform ID (§3.3.2): AES_GCM_16 or CHACHA20_POLY1305
    esn: bool
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    algorithms: str  # e.g. "aes256gcm16-esn"
    remote_addr: Address
    rekey_of: int | None = None


@dataclass(frozen=True)
class ChildSaDown:
    """A Child SA is gone: remove both directions from the data plane."""

    inbound_spi: int
    outbound_spi: int
    reason: str


@dataclass(frozen=True)
class IkeSaDown:
    """The IKE SA is gone (or never came up); every Child SA went with it.

    ``notify`` is the error notify that ended it when there was one (sent or
    received), e.g. AUTHENTICATION_FAILED, NO_PROPOSAL_CHOSEN.
    """

    reason: str
    notify: NotifyType | None = None


Event = IkeSaUp | ChildSaUp | ChildSaDown | IkeSaDown
