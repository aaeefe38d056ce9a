"""Events an :class:`ike.session.IkeSession` hands to the daemon.

The session queues them; the shell drains them with ``next_event()``. They are
plain frozen dataclasses. Only :class:`ChildSaUp` carries key material, inside
a :class:`ChildSaKeys` whose repr (and therefore the event's repr) is redacted.

Make-before-break (DESIGN §4), as the daemon sees a Child SA rekey:

- rekey *initiator* (our CREATE_CHILD_SA was answered): ``ChildSaUp(rekey_of=
  old inbound SPI, outbound_active=True)``: install the new inbound SA and
  switch outbound at once; the session then sends DELETE for the old Child SA
  and emits ``ChildSaDown`` for it when that exchange completes (the daemon
  keeps the old inbound SA for its delete delay after that).
- rekey *responder* (we answer the peer's CREATE_CHILD_SA): ``ChildSaUp(
  rekey_of=..., outbound_active=False)`` is queued *before* the response that
  carries the new inbound SPI leaves, so the inbound SA is installed first; the
  new outbound SA must not be used yet, because the peer may not have installed
  its inbound SA. ``ChildSaOutboundActive`` follows when the old Child SA goes
  (the peer's DELETE for it, RFC 7296 §2.8; or its expiry), or when the daemon
  reports ESP on the new inbound SPI (``notice_inbound``): then switch outbound.
- a Child SA that lost a simultaneous rekey (§2.8.1) also arrives as
  ``ChildSaUp(outbound_active=False)`` and never becomes active; its
  ``ChildSaDown`` follows when its DELETE completes.

An IKE SA rekey (§2.18) moves every Child SA to the new IKE SA: the session
lives on and emits ``IkeSaRekeyed``; its ``local_spis`` name every IKE SPI it
currently answers to (the daemon's routing keys).
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
    with REKEY_SA), else None. ``child`` is the name of the configured Child
    SA it belongs to (:class:`ike.sessionconfig.ChildConfig`).
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
    # False: install the inbound SA, keep the outbound one ready but unused
    # until ChildSaOutboundActive names it (rekey responder, lost collision).
    outbound_active: bool = True
    child: str = ""


@dataclass(frozen=True)
class ChildSaOutboundActive:
    """Start sending on this Child SA's outbound SA (make-before-break, responder side).

    The peer has installed its inbound SA for ``outbound_spi``: it deleted
    the Child SA this one replaced (RFC 7296 §2.8), or sent ESP on ours.
    """

    inbound_spi: int
    outbound_spi: int


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
    received), e.g. AUTHENTICATION_FAILED, NO_PROPOSAL_CHOSEN. ``peer_dead``
    is True when an established IKE SA ended because the peer stopped
    answering (a liveness check or any other request ran out of
    retransmissions, RFC 7296 §2.4): the daemon applies its ``dpd_action``.
    Its reason then starts with "peer dead:".
    """

    reason: str
    notify: NotifyType | None = None
    peer_dead: bool = False


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA was replaced by a new one (CREATE_CHILD_SA, RFC 7296 §2.18).

    From now on the session's ``local_spi`` is ``new_local_spi``; every Child
    SA lives on under the new IKE SA. The old IKE SA is deleted by the rekey
    initiator. For routing, the daemon should follow ``IkeSession.local_spis``
    (it also names SAs being negotiated or retired).
    """

    old_local_spi: bytes
    new_local_spi: bytes
    new_remote_spi: bytes
    algorithms: str


@dataclass(frozen=True)
class Retransmitted:
    """A request of ours went unanswered and was sent again (RFC 7296 §2.1).

    ``transmission`` counts from 1 (the first sending), so the first
    retransmission is 2; ``of`` is how many transmissions the policy allows
    before the peer is declared unreachable or dead. Nothing but the
    daemon's log and counters use it.
    """

    exchange: str  # e.g. "IKE_SA_INIT"
    message_id: int
    transmission: int
    of: int
    remote_addr: Address


@dataclass(frozen=True)
class RequestRefused:
    """We answered an authenticated request of the peer with an error notify.

    Only for refusals that leave the IKE SA up (a Child SA in IKE_AUTH or
    CREATE_CHILD_SA: TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN, ...): a refused
    IKE_SA_INIT or IKE_AUTH ends in :class:`IkeSaDown`. ``reason`` names what
    was offered and what we are configured for; ``notify`` is what we sent.
    """

    exchange: str
    reason: str
    notify: NotifyType


@dataclass(frozen=True)
class InitialContact:
    """The peer sent INITIAL_CONTACT in IKE_AUTH (RFC 7296 §2.4, §3.10.1).

    It holds no other IKE SA with us: the daemon should delete its other IKE
    SAs whose remote identity is ``remote_id`` (without a DELETE exchange, the
    peer has forgotten them), keeping only this one. Emitted after IkeSaUp.
    """

    remote_id: str


Event = (
    IkeSaUp
    | ChildSaUp
    | ChildSaOutboundActive
    | ChildSaDown
    | IkeSaRekeyed
    | InitialContact
    | IkeSaDown
    | Retransmitted
    | RequestRefused
)
