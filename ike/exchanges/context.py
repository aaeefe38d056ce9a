"""The IKE SA as the exchanges see it: negotiated state shared by the tasks.

:class:`SaContext` is plain data plus a few helpers; it has no state machine
of its own (that is :mod:`ike.session`'s) and performs no I/O. Tasks read
and fill it in; the session reads it to frame messages and report status.

Key material lives here only as long as the IKE SA does (SK_d for Child SAs,
SK_p for AUTH, the SK ciphers); every field that holds some is excluded from
the repr. Child SA keys are never stored: they go out in ``ChildSaUp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum, auto
from typing import Any

from ike.auth import Identity
from ike.constants import EncrId, ExchangeType, HashAlgorithm, HeaderFlag, NotifyType, ProtocolId
from ike.crypto import IkeKeys, Prf, SkCipher
from ike.entropy import Entropy
from ike.errors import IntegrityError, LocalError, PeerError
from ike.events import Address, ChildSaDown, ChildSaOutboundActive, Event, IPNetwork
from ike.lifetimes import Lifetime
from ike.payloads import NotifyPayload, Payload
from ike.proposals import SelectedProposal
from ike.sessionconfig import PeerLookup, SessionConfig
from ike.trace import trace
from ike.wire import IkeHeader, Message, decrypt_message, encrypt_message, parse_message

SPI_LEN = 8  # §3.1
ESP_SPI_LEN = 4  # §3.3.1
# RFC 4303 §2.1: SPI values 1..255 are reserved by IANA; 0 means "no SA".
MIN_ESP_SPI = 256
_MAX_SPI_DRAWS = 64  # a free SPI is found on the first draw unless the table is full


class ChildStatus(Enum):
    """Where a Child SA is in its life (rekeying: RFC 7296 §1.3.3, §2.8, §2.25)."""

    INSTALLED = auto()  # carrying traffic; rekeyed at its soft lifetime
    REKEY_QUEUED = auto()  # our rekey waits for the window
    REKEY_SENT = auto()  # our rekey request is on the wire
    REKEYED = auto()  # replaced by the peer's rekey: waiting for its DELETE
    DELETING = auto()  # our DELETE is queued or on the wire


@dataclass(eq=False)
class ChildSa:
    """A Child SA as the IKE SA remembers it (status, rekeys, deletes; no keys).

    ``nonces`` are Ni and Nr of the exchange that created it and
    ``created_by_us`` says whether we initiated that exchange: together they
    decide a simultaneous rekey (§2.8.1). ``rekey_of`` names the inbound SPI
    of the Child SA it replaces. ``outbound_active`` is False while the peer
    may not have installed its inbound SA yet (we answered its rekey) and for
    a ``redundant`` SA (lost a simultaneous rekey, deleted by its creator).
    ``name`` is the configured child it belongs to (rekeys inherit it).
    """

    inbound_spi: int
    outbound_spi: int
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    algorithms: str
    esn: bool
    encr: EncrId  # the ESP cipher (§3.3.2), handed to the data plane in ChildSaUp
    lifetime: Lifetime
    status: ChildStatus = ChildStatus.INSTALLED
    rekey_of: int | None = None
    nonces: tuple[bytes, bytes] = field(default=(b"", b""), repr=False)
    created_by_us: bool = True
    outbound_active: bool = True
    redundant: bool = False
    retry_at: float | None = None  # a refused rekey is tried again at this time
    ke_group: int | None = None  # the DH group the peer asked for (INVALID_KE_PAYLOAD)
    name: str = ""

    @property
    def rekeyable(self) -> bool:
        """Whether a rekey of ours may start (nothing else is happening to it)."""
        return self.status is ChildStatus.INSTALLED and not self.redundant

    def summary(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "child": self.name,
            "spi_in": f"{self.inbound_spi:08x}",
            "spi_out": f"{self.outbound_spi:08x}",
            "algorithms": self.algorithms,
            "local_ts": [str(n) for n in self.local_ts],
            "remote_ts": [str(n) for n in self.remote_ts],
            "state": self.status.name.lower(),
            "outbound_active": self.outbound_active,
        }
        if now is not None:
            out["rekey_in"] = round(self.lifetime.rekey_at - now, 3)
            out["expires_in"] = round(self.lifetime.expire_at - now, 3)
        return out


# The fields that belong to one IKE SA rather than to the peer: a rekeyed IKE
# SA starts them afresh (SaContext.successor); every other field carries over.
PER_IKE_SA = frozenset(
    {
        "nonce_i",
        "nonce_r",
        "ike_proposal",
        "prf",
        "keys",
        "cipher_out",
        "cipher_in",
        "sk_iv_counter",
        "init_request",
        "init_response",
    }
)


@dataclass(eq=False)
class SaContext:
    """Everything one IKE SA has negotiated so far.

    ``is_initiator`` is the role in the IKE SA (the I flag of §3.1), not of
    any one exchange. ``configs`` holds the candidates a responder may still
    choose from; after IKE_AUTH it is narrowed to the one in use (``config``).
    ``lookup`` (responder only, optional): asked at IKE_AUTH for the configuration
    of the initiator's identity (:data:`ike.sessionconfig.PeerLookup`); without
    it, the first of ``configs`` that fits is used.
    """

    configs: tuple[SessionConfig, ...]
    entropy: Entropy = field(repr=False)
    is_initiator: bool
    local_addr: Address
    remote_addr: Address
    spi_i: bytes = bytes(SPI_LEN)
    spi_r: bytes = bytes(SPI_LEN)
    nonce_i: bytes = field(default=b"", repr=False)
    nonce_r: bytes = field(default=b"", repr=False)
    ike_proposal: SelectedProposal | None = None
    prf: Prf | None = None
    keys: IkeKeys | None = field(default=None, repr=False)
    cipher_out: SkCipher | None = field(default=None, repr=False)
    cipher_in: SkCipher | None = field(default=None, repr=False)
    sk_iv_counter: int = 0
    init_request: bytes = field(default=b"", repr=False)
    init_response: bytes = field(default=b"", repr=False)
    peer_hashes: frozenset[HashAlgorithm] | None = None  # None: the peer did not say
    peer_certreq: bool = False
    nat_t: bool = False
    behind_nat: bool = False  # our address is translated (§2.23): keep the mapping alive
    remote_identity: Identity | None = None
    children: dict[int, ChildSa] = field(default_factory=dict)
    # a list, not a deque: a few events per input, and an empty deque costs 600 bytes
    events: list[Event] = field(default_factory=list)
    lookup: PeerLookup | None = field(default=None, repr=False)

    # -- roles and identities ------------------------------------------------

    @property
    def config(self) -> SessionConfig:
        """The configuration in use (the first candidate until IKE_AUTH decides)."""
        return self.configs[0]

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.is_initiator else self.spi_r

    @property
    def remote_spi(self) -> bytes:
        return self.spi_r if self.is_initiator else self.spi_i

    @property
    def our_nonce(self) -> bytes:
        return self.nonce_i if self.is_initiator else self.nonce_r

    @property
    def peer_nonce(self) -> bytes:
        return self.nonce_r if self.is_initiator else self.nonce_i

    def matches(self, header: IkeHeader) -> bool:
        """Whether a message with this header belongs to this IKE SA (see IkeSession)."""
        if header.is_initiator == self.is_initiator:
            return False  # a message in our own role: a reflection, never the peer's
        is_init = header.exchange_type == ExchangeType.IKE_SA_INIT
        if not any(self.spi_i):  # a fresh responder takes the first IKE_SA_INIT request
            return is_init and not header.is_response and not any(header.spi_r)
        if header.spi_i != self.spi_i:
            return False
        if is_init:  # the IKE_SA_INIT response names SPIr first; its request has none
            return header.is_response if self.is_initiator else not any(header.spi_r)
        return header.spi_r == self.spi_r

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Status fields of the IKE SA (public values only)."""
        return {
            "role": "initiator" if self.is_initiator else "responder",
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "local": f"{self.local_addr[0]}:{self.local_addr[1]}",
            "remote": f"{self.remote_addr[0]}:{self.remote_addr[1]}",
            "algorithms": None if self.ike_proposal is None else str(self.ike_proposal),
            "remote_id": None if self.remote_identity is None else str(self.remote_identity),
            "nat_t": self.nat_t,
            "behind_nat": self.behind_nat,
            "child_sas": [c.summary(now) for c in self.children.values()],
        }

    def successor(self, *, is_initiator: bool, spi_i: bytes, spi_r: bytes) -> SaContext:
        """The context of the IKE SA that replaces this one (§2.18).

        Everything about the peer carries over (configuration, identity, NAT
        state, addresses), and the *same* Child SA table and event queue (the
        Child SAs move, §1.3.2); the fields of :data:`PER_IKE_SA` start afresh:
        new SPIs and roles here, keys and nonces set by the caller.
        ``is_initiator`` is the role in the rekey exchange: its initiator
        becomes the "original initiator" of the new SA (§2.18).
        """
        fresh: dict[str, Any] = {f.name: f.default for f in fields(self) if f.name in PER_IKE_SA}
        return replace(self, **fresh, is_initiator=is_initiator, spi_i=spi_i, spi_r=spi_r)

    def lingering(self) -> SaContext:
        """What this IKE SA keeps once deleted, while it answers retransmitted requests
        from its cache (:meth:`ike.ikesa.IkeSa.lingering`): who it is (SPIs, role,
        addresses, configuration, the peer's identity) and the event queue; the fields
        of :data:`PER_IKE_SA` (keys, nonces, the IKE_SA_INIT messages) and the Child
        SAs are dropped, so that no secret outlives the SA."""
        fresh: dict[str, Any] = {f.name: f.default for f in fields(self) if f.name in PER_IKE_SA}
        return replace(self, **fresh, children={}, peer_hashes=None, lookup=None)

    def require_keys(self) -> tuple[Prf, IkeKeys]:
        """PRF and keys, which exist from IKE_SA_INIT on (else it is our bug)."""
        if self.prf is None or self.keys is None:
            raise LocalError("the IKE SA has no keys yet")
        return self.prf, self.keys

    # -- randomness ----------------------------------------------------------

    def random_ike_spi(self) -> bytes:
        """A non-zero 8-byte IKE SPI (§3.1: zero means "not yet known")."""
        for _ in range(_MAX_SPI_DRAWS):
            spi = self.entropy.random_bytes(SPI_LEN)
            if any(spi):
                return spi
        raise LocalError("the entropy source keeps returning zero SPIs")

    def allocate_esp_spi(self) -> int:
        """A fresh inbound ESP SPI, unused by our Child SAs and the data plane."""
        for _ in range(_MAX_SPI_DRAWS):
            spi = int.from_bytes(self.entropy.random_bytes(ESP_SPI_LEN), "big")
            if spi >= MIN_ESP_SPI and spi not in self.children and not self.config.spi_in_use(spi):
                return spi
        raise LocalError("no free inbound ESP SPI found")

    def next_sk_iv(self) -> bytes:
        """The SK payload IV: a per-SA message counter, unique under our key (RFC 5282 §3.1)."""
        self.sk_iv_counter += 1
        return self.sk_iv_counter.to_bytes(8, "big")

    # -- events --------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def drop_child(self, inbound_spi: int, reason: str) -> None:
        """Forget a Child SA and tell the daemon to remove it.

        The peer-made successors of a replaced Child SA may start sending now:
        whoever deleted it has installed them (§2.8, make-before-break). A
        peer-made SA that lost a simultaneous rekey to this one is redundant
        no longer (the peer may never learn that it lost).
        """
        child = self.children.pop(inbound_spi, None)
        if child is None:
            return
        self.emit(ChildSaDown(child.inbound_spi, child.outbound_spi, reason))
        for other in list(self.children.values()):
            if other.rekey_of == inbound_spi:
                self.activate_outbound(other)
            elif _lost_to(other, child):
                # §2.8.1: the peer deletes ``other`` only if it still holds ``child``
                # when its own rekey completes. ``child`` may be gone before that,
                # so the peer may keep ``other``: it is a plain successor again.
                other.redundant = False
                if other.rekey_of not in self.children:  # the old SA is gone already
                    self.activate_outbound(other)

    def activate_outbound(self, child: ChildSa) -> None:
        """Let the daemon send on a Child SA the peer has surely installed (not a redundant one)."""
        if child.outbound_active or child.redundant:
            return
        child.outbound_active = True
        self.emit(ChildSaOutboundActive(child.inbound_spi, child.outbound_spi))

    def drop_all_children(self, reason: str) -> None:
        for spi in list(self.children):
            self.drop_child(spi, reason)

    def child_by_outbound(self, outbound_spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.outbound_spi == outbound_spi), None)


def _lost_to(peers: ChildSa, ours: ChildSa) -> bool:
    """Whether ``peers`` (the peer's new SA) lost a simultaneous rekey to ``ours`` (§2.8.1)."""
    return (
        peers.redundant
        and not peers.created_by_us
        and ours.created_by_us
        and ours.rekey_of is not None
        and peers.rekey_of == ours.rekey_of
    )


# -- payload helpers shared by the exchanges --------------------------------


def notify(notify_type: NotifyType, data: bytes = b"") -> NotifyPayload:
    """A notify about the IKE SA itself (protocol 0, no SPI, §3.10)."""
    return NotifyPayload(notify_type, data)


def error_notifies(msg: Message) -> list[NotifyPayload]:
    """The error notifies of a message (§3.10.1: types below 16384)."""
    return [n for n in msg.notifies() if n.is_error]


def as_notify_type(value: int) -> NotifyType | None:
    try:
        return NotifyType(value)
    except ValueError:
        return None


class RefusedByPeer(PeerError):
    """The peer answered our request with an error notify (``notify`` is the peer's).

    Unlike other PeerErrors found while processing a response, nothing is
    reported back: the peer already knows.
    """


def refuse_on_error_notify(msg: Message, exchange: str) -> None:
    """§3.10.1: an error notify in a response means the request failed entirely."""
    for error in error_notifies(msg):
        raise RefusedByPeer(
            f"peer refused {exchange}: {notify_name(error.notify_type)}",
            as_notify_type(error.notify_type),
        )


def notify_name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify {notify_type}"


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"


def spi_int(spi: bytes) -> int:
    return int.from_bytes(spi, "big")


def esp_spi_bytes(spi: int) -> bytes:
    return spi.to_bytes(ESP_SPI_LEN, "big")


def payload_list(*parts: Payload | Sequence[Payload] | None) -> list[Payload]:
    """Flatten optional payloads and lists of payloads, keeping order."""
    out: list[Payload] = []
    for part in parts:
        if part is None:
            continue
        if isinstance(part, Sequence):
            out.extend(part)
        else:
            out.append(part)
    return out


ESP = ProtocolId.ESP


# -- framing: IKE_SA_INIT in the clear, everything else in an SK payload (§3.14) --


def encode_message(
    ctx: SaContext,
    exchange_type: int,
    message_id: int,
    payloads: list[Payload],
    response: bool,
    stateless: bool = False,
) -> bytes:
    """Our message as bytes; ``stateless`` refusals of IKE_SA_INIT keep SPIr 0 (§2.6)."""
    flags = HeaderFlag.INITIATOR if ctx.is_initiator else HeaderFlag.NONE
    if response:
        flags |= HeaderFlag.RESPONSE
    message = Message(
        spi_i=ctx.spi_i,
        spi_r=bytes(SPI_LEN) if stateless else ctx.spi_r,
        exchange_type=exchange_type,
        flags=flags,
        message_id=message_id,
        payloads=payloads,
    )
    trace("sent", message, ctx.remote_addr)
    if exchange_type == ExchangeType.IKE_SA_INIT:
        return message.build()
    if ctx.cipher_out is None:
        raise LocalError("no SK keys to protect the message with")
    return encrypt_message(message, ctx.cipher_out, ctx.next_sk_iv())


def decode_message(ctx: SaContext, header: IkeHeader, data: bytes) -> Message:
    """Parse (IKE_SA_INIT) or authenticate and decrypt (everything else).

    A forged or undecryptable message raises IntegrityError (drop silently).
    """
    if header.exchange_type == ExchangeType.IKE_SA_INIT:
        message = parse_message(data)
    elif ctx.cipher_in is None:
        raise IntegrityError("encrypted message before the keys exist")
    else:
        message = decrypt_message(data, ctx.cipher_in)
    trace("parsed", message)  # only what parsed (and authenticated): never garbage
    return message
