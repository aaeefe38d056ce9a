"""IKEv2 payload bodies (RFC 7296 §3.3-§3.13): frozen dataclasses <-> bytes.

A payload object here is only its *body*, the bytes after the 4-byte generic
payload header (§3.2). The framing (next payload, critical bit, length), the
IKE header and the SK payload live in :mod:`ike.wire`.

Rules of this module:

1. ``decode_payload(type, body, critical)`` either returns a payload or raises
   :class:`ike.errors.ParseError` (or a subclass); every read goes through
   :class:`Reader`, which refuses to read past the end.
2. ``payload.body()`` is the exact inverse of decoding for every field we keep;
   reserved fields are sent as zero (§3.2) except where the received bytes are
   covered by AUTH (the ID payload, §2.15), which keeps them verbatim.
3. Numbers the profile knows become enum members; unknown ones stay plain
   ``int`` so that the layers above can refuse them precisely.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, TypeVar

from ike.constants import (
    ATTR_FORMAT_TV,
    ERROR_NOTIFY_MAX,
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)
from ike.errors import LocalError, ParseError, UnsupportedCriticalPayload

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# §3.3.1 / §3.3.2: "Last Substruc" is 0 on the last one, else the (IKEv1) type
# of the substructure that follows.
MORE_PROPOSALS = 2
MORE_TRANSFORMS = 3
NONCE_MIN_LEN = 16  # §3.9
NONCE_MAX_LEN = 256  # §3.9
CA_HASH_LEN = 20  # §3.7: SHA-1 of the CA's SubjectPublicKeyInfo
_TS_LEN = {TsType.TS_IPV4_ADDR_RANGE: 16, TsType.TS_IPV6_ADDR_RANGE: 40}  # §3.13.1
_IKE_SPI_SIZES = (0, 8)  # §3.3.1: 0 in IKE_SA_INIT, 8 when rekeying the IKE SA
_CHILD_SPI_SIZE = 4  # §3.3.1: ESP and AH SPIs

E = TypeVar("E", bound=IntEnum)


def enum_or_int(cls: type[E], value: int) -> E | int:
    """``cls(value)`` when the profile knows the number, else the plain int (by the
    enum's value map: no ValueError raised and caught for each notify type a peer
    sends that we do not know, several per IKE_SA_INIT)."""
    member: E | None = cls._value2member_map_.get(value)  # type: ignore[assignment]
    return value if member is None else member


_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from


class Reader:
    """A cursor over bytes that raises ParseError instead of reading short."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > len(self._data):
            raise ParseError(f"{self._what}: needs {n} bytes, {self.remaining} left")
        self._pos = end
        return self._data[pos:end]

    # The fields are read in place (a few hundred per IKE_AUTH: no slice each).
    def u8(self) -> int:
        pos = self._pos
        if pos >= len(self._data):
            raise ParseError(f"{self._what}: needs 1 bytes, {self.remaining} left")
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        pos = self._pos
        if pos + 2 > len(self._data):
            raise ParseError(f"{self._what}: needs 2 bytes, {self.remaining} left")
        self._pos = pos + 2
        value: int = _U16(self._data, pos)[0]
        return value

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._data):
            raise ParseError(f"{self._what}: needs 4 bytes, {self.remaining} left")
        self._pos = pos + 4
        value: int = _U32(self._data, pos)[0]
        return value

    def rest(self) -> bytes:
        return self.take(self.remaining)


def pack(fmt: str, *values: int) -> bytes:
    """struct.pack for our own builders: a value out of range is our bug."""
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise LocalError(f"cannot encode {values!r} as {fmt!r}") from exc


# --- SA payload: proposals -> transforms -> attributes (§3.3) ----------------

_TRANSFORM_IDS: dict[int, type[IntEnum]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
}


# a proposal or transform substructure's first four octets (§3.3.1, §3.3.2), and a
# transform's type and ID (reserved octet between)
_SUBSTRUCTURE = struct.Struct("!BBH")
_KEY_LENGTH_TV = (ATTR_FORMAT_TV | TransformAttr.KEY_LENGTH).to_bytes(2, "big")  # §3.3.5


@dataclass(frozen=True)
class TransformAttribute:
    """A transform attribute other than KEY_LENGTH (§3.3.5).

    An ``int`` value is sent in TV format (AF=1), ``bytes`` in TLV format.
    The profile knows no such attribute: its presence makes a transform
    unsupported (§3.3.6), which is for the proposal selection to decide.
    """

    type: int
    value: int | bytes


@dataclass(frozen=True)
class Transform:
    """§3.3.2. ``key_length`` is the KEY_LENGTH attribute (§3.3.5, TV, bits)."""

    type: TransformType | int
    id: int
    key_length: int | None = None
    extra_attributes: tuple[TransformAttribute, ...] = ()

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_length is not None:
            attrs += pack("!HH", ATTR_FORMAT_TV | TransformAttr.KEY_LENGTH, self.key_length)
        for attr in self.extra_attributes:
            if not 0 <= attr.type < ATTR_FORMAT_TV:
                raise LocalError(f"transform attribute type {attr.type} out of range")
            if isinstance(attr.value, int):
                attrs += pack("!HH", ATTR_FORMAT_TV | attr.type, attr.value)
            else:
                attrs += pack("!HH", attr.type, len(attr.value)) + attr.value
        substruc = 0 if last else MORE_TRANSFORMS
        return pack("!BBHBBH", substruc, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


def _decode_attributes(r: Reader) -> tuple[int | None, tuple[TransformAttribute, ...]]:
    key_length: int | None = None
    extras: list[TransformAttribute] = []
    while r.remaining:
        word = r.u16()
        attr_type = word & ~ATTR_FORMAT_TV
        value: int | bytes = r.u16() if word & ATTR_FORMAT_TV else r.take(r.u16())
        if attr_type != TransformAttr.KEY_LENGTH:
            extras.append(TransformAttribute(attr_type, value))
        elif not isinstance(value, int) or key_length is not None:
            raise ParseError("KEY_LENGTH must be a single TV attribute (§3.3.5)")
        else:
            key_length = value
    return key_length, tuple(extras)


def _decode_transform(r: Reader, last: bool) -> Transform:
    substruc, _reserved, length = _SUBSTRUCTURE.unpack(r.take(4))
    if substruc != (0 if last else MORE_TRANSFORMS):
        raise ParseError(f"transform: Last Substruc {substruc} disagrees with # of transforms")
    if length < 8:
        raise ParseError(f"transform: length {length} < 8")
    body = r.take(length - 4)
    ttype, _reserved, tid = _SUBSTRUCTURE.unpack_from(body)  # length >= 8: 4 bytes there
    key_length: int | None
    extras: tuple[TransformAttribute, ...]
    if len(body) == 4:  # no attribute: PRF, INTEG, DH, ESN
        key_length, extras = None, ()
    elif len(body) == 8 and body[4:6] == _KEY_LENGTH_TV:  # ENCR with its key length
        key_length, extras = int.from_bytes(body[6:8], "big"), ()
    else:
        key_length, extras = _decode_attributes(Reader(body[4:], "transform"))
    id_enum = _TRANSFORM_IDS.get(ttype)
    return Transform(
        type=enum_or_int(TransformType, ttype),
        id=enum_or_int(id_enum, tid) if id_enum else tid,
        key_length=key_length,
        extra_attributes=extras,
    )


@dataclass(frozen=True)
class Proposal:
    """§3.3.1. ``spi`` is empty (IKE_SA_INIT), 8 bytes (IKE rekey) or 4 (ESP/AH)."""

    number: int
    protocol: ProtocolId | int
    transforms: tuple[Transform, ...]
    spi: bytes = b""

    def of_type(self, ttype: TransformType) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)

    def encode(self, last: bool) -> bytes:
        n = len(self.transforms)
        body = b"".join(t.encode(i == n - 1) for i, t in enumerate(self.transforms))
        head = pack("!BBHBBBB", 0 if last else MORE_PROPOSALS, 0, 8 + len(self.spi) + len(body),
                    self.number, self.protocol, len(self.spi), n)  # fmt: skip
        return head + self.spi + body


def _check_spi_size(protocol: int, size: int, what: str) -> None:
    if protocol == ProtocolId.IKE and size not in _IKE_SPI_SIZES:
        raise ParseError(f"{what}: IKE SPI size {size} (must be 0 or 8)")
    if protocol in (ProtocolId.ESP, ProtocolId.AH) and size != _CHILD_SPI_SIZE:
        raise ParseError(f"{what}: ESP/AH SPI size {size} (must be 4)")


def _decode_proposal(r: Reader) -> tuple[Proposal, int]:
    """One proposal and its Last Substruc (checked by the caller, who knows what follows)."""
    substruc, _reserved, length = r.u8(), r.u8(), r.u16()
    if length < 8:
        raise ParseError(f"proposal: length {length} < 8")
    pr = Reader(r.take(length - 4), "proposal")
    number, protocol, spi_size, count = pr.u8(), pr.u8(), pr.u8(), pr.u8()
    _check_spi_size(protocol, spi_size, "proposal")
    spi = pr.take(spi_size)
    transforms = tuple(_decode_transform(pr, i == count - 1) for i in range(count))
    if pr.remaining:
        raise ParseError(f"proposal {number}: {pr.remaining} bytes after the last transform")
    return Proposal(number, enum_or_int(ProtocolId, protocol), transforms, spi), substruc


@dataclass(frozen=True)
class SaPayload:
    """§3.3: one or more proposals (an OR of them), each an AND of transforms."""

    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    def body(self) -> bytes:
        n = len(self.proposals)
        return b"".join(p.encode(i == n - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def decode(cls, body: bytes) -> SaPayload:
        r = Reader(body, "SA payload")
        proposals: list[Proposal] = []
        while r.remaining:
            proposal, substruc = _decode_proposal(r)
            if substruc != (MORE_PROPOSALS if r.remaining else 0):
                raise ParseError(f"proposal {proposal.number}: wrong Last Substruc {substruc}")
            proposals.append(proposal)
        if not proposals:
            raise ParseError("SA payload without proposals")
        return cls(tuple(proposals))


# --- Simple payloads (§3.4-§3.12) --------------------------------------------


@dataclass(frozen=True)
class KePayload:
    """§3.4: Diffie-Hellman group and public value."""

    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: DhGroup | int
    data: bytes

    def body(self) -> bytes:
        return pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode(cls, body: bytes) -> KePayload:
        r = Reader(body, "KE payload")
        group, _reserved = r.u16(), r.u16()
        return cls(enum_or_int(DhGroup, group), r.rest())


@dataclass(frozen=True)
class NoncePayload:
    """§3.9: 16 to 256 bytes."""

    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    nonce: bytes

    def body(self) -> bytes:
        if not NONCE_MIN_LEN <= len(self.nonce) <= NONCE_MAX_LEN:
            raise LocalError(f"nonce of {len(self.nonce)} bytes (§3.9: 16..256)")
        return self.nonce

    @classmethod
    def decode(cls, body: bytes) -> NoncePayload:
        if not NONCE_MIN_LEN <= len(body) <= NONCE_MAX_LEN:
            raise ParseError(f"nonce of {len(body)} bytes (§3.9: 16..256)")
        return cls(body)


@dataclass(frozen=True)
class IdPayload:
    """§3.5: IDi or IDr.

    ``body()`` is "RestOfInitIDPayload"/"RestOfRespIDPayload" of §2.15 (ID type,
    RESERVED, data): the bytes AUTH covers. ``reserved`` keeps the received
    bytes so that the MAC is computed over what the peer actually sent.
    """

    payload_type: PayloadType
    id_type: IdType | int
    data: bytes
    reserved: bytes = field(default=b"\x00\x00\x00", repr=False)

    def body(self) -> bytes:
        if len(self.reserved) != 3:
            raise LocalError("ID payload RESERVED must be 3 bytes")
        return pack("!B", self.id_type) + self.reserved + self.data

    @classmethod
    def decode(cls, payload_type: PayloadType, body: bytes) -> IdPayload:
        r = Reader(body, "ID payload")
        id_type, reserved = r.u8(), r.take(3)
        return cls(payload_type, enum_or_int(IdType, id_type), r.rest(), reserved)


@dataclass(frozen=True)
class CertPayload:
    """§3.6: one certificate (X509_CERT_SIG: DER)."""

    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: CertEncoding | int
    data: bytes

    def body(self) -> bytes:
        return pack("!B", self.encoding) + self.data

    @classmethod
    def decode(cls, body: bytes) -> CertPayload:
        r = Reader(body, "CERT payload")
        return cls(enum_or_int(CertEncoding, r.u8()), r.rest())


@dataclass(frozen=True)
class CertReqPayload:
    """§3.7: certificate authorities as concatenated SHA-1 hashes of their keys."""

    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: CertEncoding | int
    data: bytes = b""

    def body(self) -> bytes:
        return pack("!B", self.encoding) + self.data

    def ca_hashes(self) -> tuple[bytes, ...]:
        """The 20-byte hashes; ParseError if the data is not a whole number of them."""
        if len(self.data) % CA_HASH_LEN:
            raise ParseError(f"CERTREQ data of {len(self.data)} bytes is not a list of hashes")
        return tuple(self.data[i : i + CA_HASH_LEN] for i in range(0, len(self.data), CA_HASH_LEN))

    @classmethod
    def decode(cls, body: bytes) -> CertReqPayload:
        r = Reader(body, "CERTREQ payload")
        return cls(enum_or_int(CertEncoding, r.u8()), r.rest())


@dataclass(frozen=True)
class AuthPayload:
    """§3.8: method and authentication data (RFC 7427 for method 14)."""

    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod | int
    data: bytes

    def body(self) -> bytes:
        return pack("!BBH", self.method, 0, 0) + self.data

    @classmethod
    def decode(cls, body: bytes) -> AuthPayload:
        r = Reader(body, "AUTH payload")
        method, _reserved = r.u8(), r.take(3)
        return cls(enum_or_int(AuthMethod, method), r.rest())


@dataclass(frozen=True)
class NotifyPayload:
    """§3.10. Unknown notify types stay ints (§3.10.1: ignore unknown status)."""

    payload_type: ClassVar[PayloadType] = PayloadType.N
    notify_type: NotifyType | int
    data: bytes = b""
    protocol: ProtocolId | int = ProtocolId.NONE
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.notify_type <= ERROR_NOTIFY_MAX  # §3.10.1

    def body(self) -> bytes:
        return pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode(cls, body: bytes) -> NotifyPayload:
        r = Reader(body, "Notify payload")
        protocol, spi_size, ntype = r.u8(), r.u8(), r.u16()
        spi = r.take(spi_size)
        return cls(enum_or_int(NotifyType, ntype), r.rest(), enum_or_int(ProtocolId, protocol), spi)


@dataclass(frozen=True)
class DeletePayload:
    """§3.11: for IKE no SPIs (the header names the SA); for ESP/AH 4-byte SPIs."""

    payload_type: ClassVar[PayloadType] = PayloadType.D
    protocol: ProtocolId | int
    spis: tuple[bytes, ...] = ()

    @property
    def spi_size(self) -> int:
        if self.spis:
            return len(self.spis[0])
        return 0 if self.protocol == ProtocolId.IKE else _CHILD_SPI_SIZE

    def body(self) -> bytes:
        size = self.spi_size
        if any(len(s) != size for s in self.spis):
            raise LocalError("Delete payload SPIs must all have one size")
        return pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode(cls, body: bytes) -> DeletePayload:
        r = Reader(body, "Delete payload")
        protocol, size, count = r.u8(), r.u8(), r.u16()
        if protocol == ProtocolId.IKE and (size or count):
            raise ParseError("Delete for IKE must have SPI size 0 and no SPIs (§3.11)")
        _check_spi_size(protocol, size, "Delete payload")
        spis = tuple(r.take(size) for _ in range(count))
        if r.remaining:
            raise ParseError(f"Delete payload: {r.remaining} bytes after {count} SPIs")
        return cls(enum_or_int(ProtocolId, protocol), spis)


@dataclass(frozen=True)
class VendorIdPayload:
    """§3.12."""

    payload_type: ClassVar[PayloadType] = PayloadType.V
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> VendorIdPayload:
        return cls(body)


# --- Traffic selectors (§3.13) -----------------------------------------------


@dataclass(frozen=True)
class TrafficSelector:
    """§3.13.1: an address range, an IP protocol (0 = any) and a port range."""

    start_addr: IpAddress
    end_addr: IpAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    def __post_init__(self) -> None:
        if self.start_addr.version != self.end_addr.version:
            raise LocalError("traffic selector mixes IPv4 and IPv6")

    @property
    def ts_type(self) -> TsType:
        if self.start_addr.version == 4:
            return TsType.TS_IPV4_ADDR_RANGE
        return TsType.TS_IPV6_ADDR_RANGE

    @classmethod
    def from_network(
        cls, network: ipaddress.IPv4Network | ipaddress.IPv6Network, ip_protocol: int = 0
    ) -> TrafficSelector:
        return cls(network.network_address, network.broadcast_address, ip_protocol)

    def encode(self) -> bytes:
        ttype = self.ts_type
        head = pack("!BBHHH", ttype, self.ip_protocol, _TS_LEN[ttype], self.start_port,
                    self.end_port)  # fmt: skip
        return head + self.start_addr.packed + self.end_addr.packed


def _decode_selector(r: Reader) -> TrafficSelector:
    ttype, proto, length = r.u8(), r.u8(), r.u16()
    if ttype not in _TS_LEN:
        raise ParseError(f"unsupported traffic selector type {ttype}")
    if length != _TS_LEN[TsType(ttype)]:
        raise ParseError(f"traffic selector type {ttype} with length {length}")
    start_port, end_port = r.u16(), r.u16()
    # the class by type: ip_address() tries IPv4 first, raising for every IPv6 address
    make = ipaddress.IPv4Address if ttype == TsType.TS_IPV4_ADDR_RANGE else ipaddress.IPv6Address
    size = 4 if ttype == TsType.TS_IPV4_ADDR_RANGE else 16
    start, end = make(r.take(size)), make(r.take(size))
    return TrafficSelector(start, end, proto, start_port, end_port)


@dataclass(frozen=True)
class TsPayload:
    """§3.13: TSi or TSr."""

    payload_type: PayloadType
    selectors: tuple[TrafficSelector, ...]

    def body(self) -> bytes:
        head = pack("!BBH", len(self.selectors), 0, 0)
        return head + b"".join(ts.encode() for ts in self.selectors)

    @classmethod
    def decode(cls, payload_type: PayloadType, body: bytes) -> TsPayload:
        r = Reader(body, "TS payload")
        count, _reserved = r.u8(), r.take(3)
        selectors = tuple(_decode_selector(r) for _ in range(count))
        if r.remaining:
            raise ParseError(f"TS payload: {r.remaining} bytes after {count} selectors")
        return cls(payload_type, selectors)


# --- SK and unknown payloads ---------------------------------------------------


@dataclass(frozen=True)
class EncryptedPayload:
    """§3.14 as it sits in a datagram: IV || ciphertext || ICV, still sealed.

    ``first_payload`` is the generic header's Next Payload: the type of the
    first payload inside. :func:`ike.wire.decrypt_message` opens it.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.SK
    first_payload: int
    data: bytes = field(repr=False)

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class UnknownPayload:
    """A payload type outside the profile whose critical bit was clear (§2.5)."""

    payload_type: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data


Payload = (
    SaPayload
    | KePayload
    | NoncePayload
    | IdPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | TsPayload
    | EncryptedPayload
    | UnknownPayload
)

_SIMPLE_DECODERS: dict[int, Callable[[bytes], Payload]] = {
    PayloadType.SA: SaPayload.decode,
    PayloadType.KE: KePayload.decode,
    PayloadType.NONCE: NoncePayload.decode,
    PayloadType.CERT: CertPayload.decode,
    PayloadType.CERTREQ: CertReqPayload.decode,
    PayloadType.AUTH: AuthPayload.decode,
    PayloadType.N: NotifyPayload.decode,
    PayloadType.D: DeletePayload.decode,
    PayloadType.V: VendorIdPayload.decode,
}


def decode_payload(payload_type: int, body: bytes, critical: bool) -> Payload:
    """One payload body (not SK: its framing is :mod:`ike.wire`'s business)."""
    simple = _SIMPLE_DECODERS.get(payload_type)
    if simple is not None:
        return simple(body)
    if payload_type in (PayloadType.IDi, PayloadType.IDr):
        return IdPayload.decode(PayloadType(payload_type), body)
    if payload_type in (PayloadType.TSi, PayloadType.TSr):
        return TsPayload.decode(PayloadType(payload_type), body)
    if critical:
        raise UnsupportedCriticalPayload(payload_type)  # §2.5
    return UnknownPayload(payload_type, body, critical)
