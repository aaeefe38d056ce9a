"""ESP packet codec for AES-GCM-16 (RFC 4303 + RFC 4106) and ChaCha20-Poly1305
(RFC 7634), no state.

Wire format (RFC 4303 §2, RFC 4106 §3; RFC 7634 §2 is the same layout)::

    SPI(4) | Sequence Number(4) | IV(8) | ciphertext of
    (payload | Padding(0..3) | Pad Length(1) | Next Header(1)) | ICV(16)

Rules this module implements (the SA objects in :mod:`tunneld.dataplane.sa`
own the state: key, salt, sequence counter, replay window):

1. Nonce = salt(4, from KEYMAT) || IV(8) (RFC 4106 §4, RFC 7634 §2). We
   send IV = the 64-bit sequence number, which is unique per key (RFC 4106
   §3.1); a receiver takes the IV from the wire, whatever it is.
2. AAD = SPI || seq (8 bytes), or with ESN SPI || seq-high || seq-low
   (12 bytes); seq-high is never on the wire (RFC 4106 §5, RFC 7634 §2.1).
3. Padding: both ciphers are stream modes, so we pad only so that payload +
   padding + 2 is a multiple of 4 (RFC 4303 §2.4, RFC 4106 §3.2, RFC 7634
   §2), with the bytes 1, 2, 3.
4. On receive the padding bytes *are* checked (RFC 4303 §2.4 says the receiver
   SHOULD inspect them): a packet that authenticates but carries other padding
   comes from a broken sender and is dropped as MALFORMED. The 4-byte
   alignment itself is not enforced on receive, since the ICV already covers
   every byte and an unaligned but authentic packet harms no one.
5. Every failure is an :class:`~tunneld.dataplane.drops.EspDrop`; the codec
   never lets IndexError, struct.error or InvalidTag escape.
6. The hot path seals and opens *into* caller buffers (``AESGCM.encrypt_into``
   / ``decrypt_into``, cryptography >= 48), see :meth:`OutboundSA.seal_into` and
   :meth:`InboundSA.open_into`; :func:`sealed_len` tells the caller how much
   room one packet takes.
7. :func:`seal` is the *reference* codec: one packet, allocating, easy to
   read against the RFCs. The data plane never calls it; the published test
   vectors and the tests of the hot path (``seal_into``, the batch calls)
   check against it.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tunneld.dataplane.drops import DropReason, EspDrop

if not hasattr(AESGCM, "encrypt_into"):  # rule 6; a clear message beats an AttributeError later
    raise ImportError("tunneld's ESP data plane needs cryptography with AEAD encrypt_into (>= 48)")

#: What the codec accepts as packet bytes (a bytearray is copied from before it is reused).
Buffer = bytes | bytearray | memoryview
#: The AEAD object of one SA; both take (nonce, data, aad) and append a 16-byte tag.
Aead = AESGCM | ChaCha20Poly1305

# ESP encryption transform IDs (RFC 7296 §3.3.2, IANA "Transform Type 1"): the
# Child SA's negotiated cipher, which must reach the data plane (an SA that
# used AES-GCM under a ChaCha20-Poly1305 agreement failed against strongSwan).
ENCR_AES_GCM_16 = 20  # RFC 4106
ENCR_CHACHA20_POLY1305 = 28  # RFC 7634

SPI_LEN = 4  # RFC 4303 §2.1
SEQ_LEN = 4  # RFC 4303 §2.2
ESP_HEADER_LEN = SPI_LEN + SEQ_LEN
IV_LEN = 8  # RFC 4106 §3.1
SALT_LEN = 4  # RFC 4106 §4: last 4 octets of the KEYMAT for this key
ICV_LEN = 16  # ENCR_AES_GCM_16 (RFC 4106 §6)
TRAILER_MIN = 2  # Pad Length + Next Header (RFC 4303 §2.4-2.6)
TRAILER_MAX = TRAILER_MIN + 3  # with our padding to a multiple of 4 (rule 3)
KEY_SIZES = (16, 32)  # AES-128 and AES-256 (RFC 4106 §8.1; 192 is not in our profile)
CHACHA_KEY_SIZE = 32  # RFC 7634 §2: 256-bit key, then the 4-byte salt in KEYMAT
#: Smallest byte string that can be an ESP-GCM packet at all.
MIN_ESP_LEN = ESP_HEADER_LEN + IV_LEN + TRAILER_MIN + ICV_LEN
#: Bytes ESP adds around a payload, excluding 0..3 padding bytes.
OVERHEAD = ESP_HEADER_LEN + IV_LEN + TRAILER_MIN + ICV_LEN

NEXT_HEADER_IPV4 = 4  # IANA protocol number, IP-in-IP (RFC 4303 §2.6, tunnel mode)
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59  # "no next header": a TFC dummy packet (RFC 4303 §2.6)

SEQ32_MAX = 0xFFFFFFFF  # without ESN a sequence number never wraps (RFC 4303 §3.3.3)
SEQ64_MAX = (1 << 64) - 1

#: SPI, seq-low, IV: the 16 bytes in front of the ciphertext, packed at once.
HEADER = struct.Struct(">IIQ")
#: SPI, seq: the start of every ESP packet, and the AAD without ESN.
SPI_SEQ = struct.Struct(">II")
#: SPI, seq-high, seq-low: the AAD with ESN (RFC 4106 §5).
ESN_AAD = struct.Struct(">III")

#: The default padding contents 1, 2, 3, ... (RFC 4303 §2.4), by pad length.
_PADDINGS = tuple(bytes(range(1, n + 1)) for n in range(256))


def _make_trailers() -> tuple[tuple[bytes, ...], ...]:
    """``TRAILERS[next_header][pad_len]``: Padding | Pad Length | Next Header."""
    return tuple(tuple(_PADDINGS[pad] + bytes((pad, nh)) for pad in range(4)) for nh in range(256))


#: Every trailer we send, by next header and pad length (0..3): no per-packet building.
TRAILERS = _make_trailers()
#: The padding a receiver expects, by pad length (RFC 4303 §2.4 default contents).
PADDINGS = _PADDINGS


def trailer(payload_len: int, next_header: int) -> bytes:
    """The ESP trailer for a payload of ``payload_len`` bytes (rule 3)."""
    return TRAILERS[next_header][-(payload_len + TRAILER_MIN) % 4]


def sealed_len(payload_len: int) -> int:
    """Length of the ESP packet (SPI .. ICV) that carries ``payload_len`` bytes (rule 3)."""
    return OVERHEAD + payload_len + (-(payload_len + TRAILER_MIN) & 3)


def aad(spi: int, seq: int, esn: bool) -> bytes:
    """The AAD for a packet with the full sequence number ``seq`` (rule 2)."""
    if esn:
        return ESN_AAD.pack(spi, seq >> 32, seq & SEQ32_MAX)
    return SPI_SEQ.pack(spi, seq)


def seal(
    aead: Aead,
    salt: bytes,
    spi: int,
    seq: int,
    payload: Buffer,
    next_header: int,
    *,
    esn: bool = False,
    iv: bytes | None = None,
) -> bytes:
    """Build one ESP packet (SPI .. ICV): the reference codec (rule 7), not the hot path.

    ``seq`` is the full sequence number (64-bit with ESN); the IV is ``seq``
    unless ``iv`` is given (only for published test vectors, whose IVs are
    arbitrary). The caller guarantees ``seq`` is fresh for this key.
    """
    header = HEADER.pack(spi, seq & SEQ32_MAX, seq)
    if iv is not None:
        header = header[:ESP_HEADER_LEN] + iv
    plaintext = b"".join((payload, trailer(len(payload), next_header)))
    ciphertext = aead.encrypt(salt + header[ESP_HEADER_LEN:], plaintext, aad(spi, seq, esn))
    return header + ciphertext


def parse_header(esp: Buffer) -> tuple[int, int]:
    """``(spi, seq_low)`` of an ESP packet; ``EspDrop(MALFORMED)`` if it cannot be one."""
    if len(esp) < MIN_ESP_LEN:
        raise EspDrop(DropReason.MALFORMED)
    spi, seq_low = SPI_SEQ.unpack_from(esp)
    return spi, seq_low


def open_ciphertext(aead: Aead, salt: bytes, esp: Buffer, associated_data: Buffer) -> bytes:
    """Verify and decrypt; returns payload | padding | pad length | next header.

    ``esp`` must be at least :data:`MIN_ESP_LEN` long (see :func:`parse_header`).
    Slices of ``bytes`` are copied: for 1400-byte packets that measured faster
    than going through a memoryview (cryptography 48); a memoryview passed in
    is sliced without copying.
    """
    nonce = salt + esp[ESP_HEADER_LEN : ESP_HEADER_LEN + IV_LEN]
    try:
        return aead.decrypt(nonce, esp[ESP_HEADER_LEN + IV_LEN :], associated_data)
    except InvalidTag:
        raise EspDrop(DropReason.AUTH_FAILED) from None


def split_trailer(plaintext: bytes) -> tuple[int, int]:
    """``(next_header, payload_len)`` of a decrypted plaintext; checks the padding (rule 4)."""
    size = len(plaintext)
    if size < TRAILER_MIN:
        raise EspDrop(DropReason.MALFORMED)
    pad_len = plaintext[-2]
    end = size - TRAILER_MIN - pad_len
    # startswith(prefix, start) compares in place: no slice is allocated.
    if end < 0 or (pad_len and not plaintext.startswith(_PADDINGS[pad_len], end)):
        raise EspDrop(DropReason.MALFORMED)
    return plaintext[-1], end


def new_aead(key: bytes, salt: bytes, encr: int = ENCR_AES_GCM_16) -> Aead:
    """Validate key and salt sizes and build the one AEAD object of an SA.

    ``encr`` is the negotiated ESP transform ID; any other raises ValueError
    rather than falling back to a cipher the peer does not use.
    """
    if len(salt) != SALT_LEN:
        raise ValueError(f"ESP AEAD salt must be {SALT_LEN} bytes, not {len(salt)}")
    if encr == ENCR_AES_GCM_16:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"AES-GCM key must be {KEY_SIZES} bytes, not {len(key)}")
        return AESGCM(key)
    if encr == ENCR_CHACHA20_POLY1305:
        if len(key) != CHACHA_KEY_SIZE:
            raise ValueError(f"ChaCha20-Poly1305 key must be 32 bytes, not {len(key)}")
        return ChaCha20Poly1305(key)
    raise ValueError(f"ESP encryption transform {encr} is not supported")
