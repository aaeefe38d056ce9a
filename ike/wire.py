"""IKEv2 messages on the wire (RFC 7296 §3.1, §3.2, §3.14; RFC 5282 for the SK AEAD).

Pipeline of an incoming datagram (UDP payload, non-ESP marker already removed):

1. :func:`parse_header`: the 28-byte header; major version 2 or
   :class:`InvalidMajorVersion`; the Length field must equal the datagram size.
2. :func:`parse_message` walks the generic payload headers (§3.2), decoding
   each body with :mod:`ike.payloads`; an unknown payload is kept as
   :class:`~ike.payloads.UnknownPayload` unless its critical bit is set
   (:class:`~ike.errors.UnsupportedCriticalPayload`, §2.5). An SK payload must
   be the last one and stays sealed (:class:`~ike.payloads.EncryptedPayload`).
3. :func:`decrypt_message` instead opens the SK payload with an
   :class:`SkAead` (AAD = IKE header || SK generic header, RFC 5282 §5.1),
   checks the pad length and parses the inner chain, whose first type is the
   SK header's Next Payload (§3.14).

Every malformed input raises :class:`~ike.errors.ParseError` (or a subclass),
a failed ICV :class:`~ike.errors.IntegrityError`; both are ``PeerError``.
Building with impossible values (our bug) raises ``LocalError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ike.constants import (
    GENERIC_PAYLOAD_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    IKE_VERSION_BYTE,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from ike.errors import IntegrityError, LocalError, ParseError
from ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    EncryptedPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    Reader,
    SaPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
    decode_payload,
    pack,
)

# The payload classes are re-exported: ``from ike.wire import SaPayload`` works.
__all__ = [
    "AuthPayload",
    "CertPayload",
    "CertReqPayload",
    "DeletePayload",
    "EncryptedPayload",
    "IdPayload",
    "IkeHeader",
    "InvalidMajorVersion",
    "KePayload",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "SaPayload",
    "SkAead",
    "TrafficSelector",
    "Transform",
    "TransformAttribute",
    "TsPayload",
    "UnknownPayload",
    "VendorIdPayload",
    "build_payloads",
    "decrypt_message",
    "encrypt_message",
    "parse_header",
    "parse_message",
    "parse_payloads",
]

SPI_LEN = 8  # §3.1: IKE SA SPIs
_ZERO_SPI = bytes(SPI_LEN)
CRITICAL = 0x80  # §3.2: the C bit of the generic payload header
MAX_PAYLOAD_LEN = 0xFFFF  # §3.2: Payload Length is 16 bits
_KNOWN_FLAGS = HeaderFlag.INITIATOR | HeaderFlag.VERSION | HeaderFlag.RESPONSE
# parse_header runs for every IKE datagram, spoofed floods included: table lookups
# instead of enum constructors (each costs microseconds).
_HEADER = struct.Struct("!8s8sBBBBII")  # §3.1
_KNOWN_BITS = int(_KNOWN_FLAGS)
_FLAGS = {bits: HeaderFlag(bits) for bits in range(256) if not bits & ~_KNOWN_BITS}
_EXCHANGES: dict[int, ExchangeType | int] = {int(t): t for t in ExchangeType}
_RESPONSE, _INITIATOR = int(HeaderFlag.RESPONSE), int(HeaderFlag.INITIATOR)

P = TypeVar("P")


@dataclass(frozen=True)
class IkeHeader:
    """§3.1, as received (flags reduced to the three defined bits)."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major_version: int
    minor_version: int
    exchange_type: ExchangeType | int
    flags: HeaderFlag
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags.value & _RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags.value & _INITIATOR)

    @property
    def starts_ike_sa(self) -> bool:
        """An initiator's IKE_SA_INIT request with SPIr = 0: a new IKE SA (or its
        retransmission), the only message routed by anything but our SPI."""
        return (
            self.exchange_type == ExchangeType.IKE_SA_INIT
            and self.spi_r == _ZERO_SPI
            and self.flags.value & (_RESPONSE | _INITIATOR) == _INITIATOR
        )


class InvalidMajorVersion(ParseError):
    """Major version != 2: drop, and in IKE_SA_INIT answer INVALID_MAJOR_VERSION (§2.5).

    ``header`` carries what the answer needs (SPIs, exchange, message ID).
    """

    notify = NotifyType.INVALID_MAJOR_VERSION

    def __init__(self, header: IkeHeader) -> None:
        super().__init__(f"IKE major version {header.major_version}, only 2 is supported")
        self.header = header


class SkAead(Protocol):
    """The SK payload's AEAD (RFC 5282): implemented by ``ike.crypto.SkCipher``.

    ``seal`` returns ciphertext || ICV; ``open`` verifies and returns the
    plaintext or raises :class:`~ike.errors.IntegrityError`. The salt lives
    inside the implementation (nonce = salt || IV, RFC 5282 §4).
    """

    @property
    def iv_len(self) -> int: ...

    @property
    def icv_len(self) -> int: ...

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes: ...

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes: ...


@dataclass(kw_only=True)
class Message:
    """An IKE message: header fields and payloads.

    After :func:`decrypt_message` the payloads are the inner (decrypted) ones.
    ``raw`` is the datagram as received (AUTH signs the first message of each
    side verbatim, §2.15); it is empty for messages we build.
    """

    spi_i: bytes
    spi_r: bytes = bytes(SPI_LEN)
    exchange_type: ExchangeType | int
    flags: HeaderFlag = HeaderFlag.NONE
    message_id: int
    payloads: list[Payload] = field(default_factory=list)
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def is_response(self) -> bool:
        return HeaderFlag.RESPONSE in self.flags

    @property
    def is_initiator(self) -> bool:
        """The message was sent by the original initiator of the IKE SA (I flag)."""
        return HeaderFlag.INITIATOR in self.flags

    def get(self, payload_type: int) -> Payload | None:
        """The first payload of that type, or None."""
        return next((p for p in self.payloads if p.payload_type == payload_type), None)

    def get_all(self, payload_type: int) -> list[Payload]:
        return [p for p in self.payloads if p.payload_type == payload_type]

    def find(self, cls: type[P]) -> P | None:
        """The first payload of that class (typed), or None."""
        return next((p for p in self.payloads if isinstance(p, cls)), None)

    def find_all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notifies(self, notify_type: int | None = None) -> list[NotifyPayload]:
        """Notify payloads, all or only those of one type."""
        return [
            p
            for p in self.find_all(NotifyPayload)
            if notify_type is None or p.notify_type == notify_type
        ]

    def build(self) -> bytes:
        """The datagram (an :class:`EncryptedPayload` is written as it is, sealed)."""
        first, chain = build_payloads(self.payloads)
        return _pack_header(self, first, IKE_HEADER_LEN + len(chain)) + chain


def _pack_header(msg: Message, next_payload: int, length: int) -> bytes:
    if len(msg.spi_i) != SPI_LEN or len(msg.spi_r) != SPI_LEN:
        raise LocalError("IKE SPIs must be 8 bytes")
    head = pack("!BBBBII", next_payload, IKE_VERSION_BYTE, msg.exchange_type, msg.flags,
                msg.message_id, length)  # fmt: skip
    return msg.spi_i + msg.spi_r + head


def parse_header(data: bytes) -> IkeHeader:
    """§3.1. Checks the version and that Length is exactly the datagram's size."""
    if len(data) < IKE_HEADER_LEN:
        raise ParseError(f"IKE header: {IKE_HEADER_LEN} bytes needed, {len(data)} left")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(
        data
    )
    header = IkeHeader(
        spi_i=spi_i,
        spi_r=spi_r,
        next_payload=next_payload,
        major_version=version >> 4,
        minor_version=version & 0x0F,  # §3.1: ignored on receipt
        exchange_type=_EXCHANGES.get(exchange, exchange),
        flags=_FLAGS[flags & _KNOWN_BITS],  # §3.1: other bits ignored
        message_id=message_id,
        length=length,
    )
    if header.major_version != IKE_MAJOR_VERSION:
        raise InvalidMajorVersion(header)
    if length != len(data):
        raise ParseError(f"IKE header Length {length}, datagram has {len(data)} bytes")
    return header


def build_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chain with generic headers) (§3.2)."""
    parts: list[bytes] = []
    for i, payload in enumerate(payloads):
        if isinstance(payload, EncryptedPayload):
            if i != len(payloads) - 1:
                raise LocalError("the SK payload must be the last payload (§3.14)")
            next_type = payload.first_payload
        else:
            next_type = payloads[i + 1].payload_type if i + 1 < len(payloads) else 0
        critical = isinstance(payload, UnknownPayload) and payload.critical
        body = payload.body()
        length = GENERIC_PAYLOAD_HEADER_LEN + len(body)
        if length > MAX_PAYLOAD_LEN:
            raise LocalError(f"payload type {payload.payload_type} of {length} bytes")
        parts.append(pack("!BBH", next_type, CRITICAL if critical else 0, length) + body)
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    return first, b"".join(parts)


def parse_payloads(data: bytes, first_type: int) -> list[Payload]:
    """Walk a payload chain that must end exactly at the end of ``data`` (§3.2)."""
    r = Reader(data, "payload chain")
    payloads: list[Payload] = []
    payload_type = first_type
    while payload_type != PayloadType.NONE:
        if not r.remaining:
            raise ParseError(f"payload chain ends where payload type {payload_type} was due")
        next_type, flags, length = r.u8(), r.u8(), r.u16()
        if length < GENERIC_PAYLOAD_HEADER_LEN:
            raise ParseError(f"payload type {payload_type} with length {length}")
        body = r.take(length - GENERIC_PAYLOAD_HEADER_LEN)
        if payload_type == PayloadType.SK:
            if r.remaining:
                raise ParseError("the SK payload is not the last payload (§3.14)")
            payloads.append(EncryptedPayload(next_type, body))
            return payloads
        payloads.append(decode_payload(payload_type, body, bool(flags & CRITICAL)))
        payload_type = next_type
    if r.remaining:
        raise ParseError(f"{r.remaining} bytes after the last payload")
    return payloads


def _check_message(msg: Message) -> None:
    """§3.3.1: a request numbers its proposals 1, 2, ...; a response holds one."""
    for sa in msg.find_all(SaPayload):
        numbers = [p.number for p in sa.proposals]
        if msg.is_response and len(numbers) != 1:
            raise ParseError(f"SA payload in a response with {len(numbers)} proposals")
        if not msg.is_response and numbers != list(range(1, len(numbers) + 1)):
            raise ParseError(f"SA payload proposals numbered {numbers}, not 1, 2, ...")


def _message(header: IkeHeader, payloads: list[Payload], raw: bytes) -> Message:
    msg = Message(
        spi_i=header.spi_i,
        spi_r=header.spi_r,
        exchange_type=header.exchange_type,
        flags=header.flags,
        message_id=header.message_id,
        payloads=payloads,
        raw=raw,
    )
    _check_message(msg)
    return msg


def parse_message(data: bytes) -> Message:
    """An unprotected view of a datagram; an SK payload stays sealed."""
    data = bytes(data)
    header = parse_header(data)
    payloads = parse_payloads(data[IKE_HEADER_LEN:], header.next_payload)
    return _message(header, payloads, data)


def encrypt_message(message: Message, aead: SkAead, iv: bytes, pad_length: int = 0) -> bytes:
    """The datagram: header, then an SK payload holding ``message.payloads`` (§3.14).

    ``iv`` must never repeat under one key (the session uses a counter).
    Padding is zeros: AES-GCM needs no alignment (RFC 5282 §3) and §3.14
    lets the sender choose the padding's value.
    """
    if len(iv) != aead.iv_len:
        raise LocalError(f"SK IV of {len(iv)} bytes, the cipher wants {aead.iv_len}")
    if not 0 <= pad_length <= 255:
        raise LocalError(f"pad length {pad_length} (0..255)")
    if any(isinstance(p, EncryptedPayload) for p in message.payloads):
        raise LocalError("an SK payload cannot be nested")
    first, chain = build_payloads(message.payloads)
    plaintext = chain + bytes(pad_length) + bytes((pad_length,))
    sk_length = GENERIC_PAYLOAD_HEADER_LEN + len(iv) + len(plaintext) + aead.icv_len
    if sk_length > MAX_PAYLOAD_LEN:
        raise LocalError(f"SK payload of {sk_length} bytes")
    header = _pack_header(message, PayloadType.SK, IKE_HEADER_LEN + sk_length)
    aad = header + pack("!BBH", first, 0, sk_length)  # RFC 5282 §5.1
    sealed = aead.seal(iv, aad, plaintext)
    if len(sealed) != len(plaintext) + aead.icv_len:
        raise LocalError("the SK cipher returned a wrong-sized ciphertext")
    return aad + iv + sealed


def decrypt_message(data: bytes, aead: SkAead) -> Message:
    """Open a datagram whose only payload is SK; the Message holds the inner payloads.

    Anything wrong before the ICV verified (not an SK payload, a wrong SK
    length, a forged or truncated SK) raises IntegrityError (drop silently,
    §2.21.2); a bad pad length or inner chain, found only after the ICV
    verified, ParseError (the authenticated peer gets INVALID_SYNTAX).
    """
    data = bytes(data)
    header = parse_header(data)
    # Nothing before the ICV check is authenticated: whatever is wrong with it,
    # the message is dropped silently, never answered (§2.21.2, §3.14).
    if header.next_payload != PayloadType.SK:
        raise IntegrityError(f"expected an SK payload, got payload type {header.next_payload}")
    if len(data) < IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN:
        raise IntegrityError("message too short for an SK payload")
    first_inner = data[IKE_HEADER_LEN]
    sk_length = int.from_bytes(data[IKE_HEADER_LEN + 2 : IKE_HEADER_LEN + 4], "big")
    if sk_length != len(data) - IKE_HEADER_LEN:
        raise IntegrityError("the SK payload must be the only payload and fill the message")
    sk_start = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN
    iv, sealed = data[sk_start : sk_start + aead.iv_len], data[sk_start + aead.iv_len :]
    if len(iv) != aead.iv_len or len(sealed) < aead.icv_len + 1:
        raise IntegrityError("SK payload too short for IV, pad length and ICV")
    plaintext = aead.open(iv, data[:sk_start], sealed)
    if not plaintext:
        raise IntegrityError("the SK cipher returned no plaintext")
    pad_length = plaintext[-1]
    if pad_length + 1 > len(plaintext):
        raise ParseError(f"SK pad length {pad_length} exceeds the {len(plaintext)}-byte plaintext")
    inner = parse_payloads(plaintext[: -1 - pad_length], first_inner)
    if any(isinstance(p, EncryptedPayload) for p in inner):
        raise ParseError("an SK payload inside an SK payload")
    return _message(header, inner, data)
