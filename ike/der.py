"""The little DER (X.690) that IKE needs outside certificates.

Certificates are parsed by ``cryptography``; this module only reads and writes
the small ASN.1 pieces that travel in IKE payloads and that ``cryptography``
has no public codec for: the AlgorithmIdentifier in RFC 7427 AUTH data
(including RSASSA-PSS parameters) and the DER Name in an ID_DER_ASN1_DN
identity. It is a codec, not cryptography.

Only what DER allows is accepted: single-octet tags, definite minimal lengths.
Anything else raises :class:`~ike.errors.ParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ike.errors import ParseError

# Universal tags (X.680 §8.4) and the context tags RSASSA-PSS-params uses.
INTEGER = 0x02
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
NUMERIC_STRING = 0x12
PRINTABLE_STRING = 0x13
TELETEX_STRING = 0x14
IA5_STRING = 0x16
VISIBLE_STRING = 0x1A
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31


def context(n: int) -> int:
    """Tag of an explicit context-specific constructed field ``[n]``."""
    return 0xA0 | n


_MAX_LENGTH_OCTETS = 4  # IKE payloads are < 64 KiB; 4 octets is plenty


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes  # the content octets
    raw: bytes  # the whole encoding, tag and length included


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """One TLV at ``offset``; returns it and the offset just past it."""
    if offset + 2 > len(data):
        raise ParseError("DER: truncated tag/length")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ParseError("DER: multi-octet tags are not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_OCTETS or pos + count > len(data):
            raise ParseError("DER: bad length encoding")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ParseError("DER: length not minimally encoded")
        pos += count
    end = pos + length
    if end > len(data):
        raise ParseError("DER: value runs past the end of the data")
    return Tlv(tag, data[pos:end], data[offset:end]), end


def read_one(data: bytes, tag: int) -> Tlv:
    """Exactly one TLV with ``tag`` filling all of ``data``."""
    tlv, end = read_tlv(data)
    if end != len(data):
        raise ParseError("DER: trailing data")
    if tlv.tag != tag:
        raise ParseError(f"DER: expected tag 0x{tag:02x}, got 0x{tlv.tag:02x}")
    return tlv


def read_all(data: bytes) -> list[Tlv]:
    """The TLVs that exactly fill ``data`` (the contents of a SEQUENCE/SET)."""
    items: list[Tlv] = []
    offset = 0
    while offset < len(data):
        tlv, offset = read_tlv(data, offset)
        items.append(tlv)
    return items


def decode_oid(content: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's content octets (X.690 §8.19)."""
    if not content or content[-1] & 0x80:
        raise ParseError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    arc_start = True
    for octet in content:
        if arc_start and octet == 0x80:
            raise ParseError("DER: OBJECT IDENTIFIER arc not minimally encoded")
        value = (value << 7) | (octet & 0x7F)
        arc_start = not octet & 0x80
        if arc_start:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def decode_integer(content: bytes) -> int:
    if not content or (len(content) > 1 and content[0] == 0 and not content[1] & 0x80):
        raise ParseError("DER: malformed INTEGER")
    return int.from_bytes(content, "big", signed=True)


_STRING_CODECS = {
    UTF8_STRING: "utf-8",
    PRINTABLE_STRING: "ascii",
    NUMERIC_STRING: "ascii",
    IA5_STRING: "ascii",
    VISIBLE_STRING: "ascii",
    TELETEX_STRING: "latin-1",  # T.61 in theory; Latin-1 is what is seen in practice
    BMP_STRING: "utf-16-be",
    UNIVERSAL_STRING: "utf-32-be",
}


def decode_string(tlv: Tlv) -> str:
    codec = _STRING_CODECS.get(tlv.tag)
    if codec is None:
        raise ParseError(f"DER: tag 0x{tlv.tag:02x} is not a string type")
    try:
        return tlv.value.decode(codec)
    except UnicodeDecodeError:
        raise ParseError("DER: string does not decode") from None


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content


def encode_oid(dotted: str) -> bytes:
    """A complete OBJECT IDENTIFIER TLV for ``dotted`` (e.g. "1.3.101.112")."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return encode(OID, bytes(body))


def encode_integer(n: int) -> bytes:
    return encode(INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def encode_null() -> bytes:
    return encode(NULL, b"")
