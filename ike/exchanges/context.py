"""The IKE SA as the exchanges see it: negotiated state shared by the tasks.

:class:`SaContext` is plain data plus a few helpers; it has no state machine
of its own (that is :mod:`ike.session`'s) and performs no I/O. Tasks read
and fill it in; the session reads it to frame messages and report status.

Key material lives here only as long as the IKE SA does (SK_d for Child SAs,
SK_p for AUTH, the SK ciphers); every field that holds some is excluded from
the repr. Child SA keys are never stored: they go out in ``ChildSaUp``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ike.auth import Identity
from ike.constants import ExchangeType, HashAlgorithm, NotifyType, ProtocolId
from ike.crypto import IkeKeys, Prf, SkCipher
from ike.entropy import Entropy
from ike.errors import LocalError, PeerError
from ike.events import Address, ChildSaDown, Event, IPNetwork
from ike.payloads import NotifyPayload, Payload, Transform
from ike.payloads import Proposal as WireProposal
from ike.proposals import Proposal, SelectedProposal
from ike.sessionconfig import SessionConfig
from ike.wire import Message

SPI_LEN = 8  # §3.1
ESP_SPI_LEN = 4  # §3.3.1
# RFC 4303 §2.1: SPI values 1..255 are reserved by IANA; 0 means "no SA".
MIN_ESP_SPI = 256
_MAX_SPI_DRAWS = 64  # a free SPI is found on the first draw unless the table is full


@dataclass(frozen=True)
class ChildSa:
    """A Child SA as the IKE SA remembers it (status and deletes; no keys)."""

    inbound_spi: int
    outbound_spi: int
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    algorithms: str
    esn: bool


@dataclass(eq=False)
class SaContext:
    """Everything one IKE SA has negotiated so far.

    ``is_initiator`` is the role in the IKE SA (the I flag of §3.1), not of
    any one exchange. ``configs`` holds the candidates a responder may still
    choose from; after IKE_AUTH it is narrowed to the one in use (``config``).
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
    remote_identity: Identity | None = None
    children: dict[int, ChildSa] = field(default_factory=dict)
    events: deque[Event] = field(default_factory=deque)

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
        """Forget a Child SA and tell the daemon to remove it."""
        child = self.children.pop(inbound_spi, None)
        if child is not None:
            self.emit(ChildSaDown(child.inbound_spi, child.outbound_spi, reason))

    def drop_all_children(self, reason: str) -> None:
        for spi in list(self.children):
            self.drop_child(spi, reason)

    def child_by_outbound(self, outbound_spi: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.outbound_spi == outbound_spi), None)


# -- payload helpers shared by the exchanges --------------------------------


def to_wire_proposals(proposals: Sequence[Proposal], spi: bytes = b"") -> tuple[WireProposal, ...]:
    """Our configured proposals as an SA payload's proposals, numbered 1.. (§3.3.1)."""
    return tuple(
        WireProposal(
            number=i + 1,
            protocol=p.protocol,
            transforms=tuple(Transform(t.type, t.id, t.key_length) for t in p.transforms),
            spi=spi,
        )
        for i, p in enumerate(proposals)
    )


def selected_to_wire(selected: SelectedProposal, spi: bytes = b"") -> WireProposal:
    """The single proposal a responder answers with, under the offer's number (§3.3.1)."""
    return WireProposal(
        number=selected.number,
        protocol=selected.protocol,
        transforms=tuple(Transform(t.type, t.id, t.key_length) for t in selected.transforms),
        spi=spi,
    )


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
