"""Stateless COOKIEs for IKE_SA_INIT (RFC 7296 §2.6), for the daemon's front door.

Under load (too many half-open IKE SAs) a responder answers an IKE_SA_INIT
request that carries no valid cookie with ``HDR(SPIi, 0), N(COOKIE)`` and
keeps no state at all: no session, no DH. A genuine initiator repeats its
request with the cookie first (the session does that on its own, see
:mod:`ike.exchanges.ike_init`); only then does the daemon create a
responder session. The cookie binds the initiator's address and SPI:

    Cookie = <VersionIDofSecret> | HMAC-SHA256(<secret>, IPi | SPIi)

(§2.6 suggests Ni as well; the retry repeats Ni unchanged, so Ni adds nothing a
spoofer could use, and leaving it out lets the challenge be made from the
header alone. strongSwan's cookie is ``t | SHA1(IPi | SPIi | t | secret)``.)
The secret is rotated from time to time; the previous one stays valid so
that a cookie handed out just before a rotation still works.

Cost is the point of a cookie (issue: a spoofed flood of IKE_SA_INIT). Under
load the front door answers a request that :func:`needs_challenge` (its
header says a new IKE_SA_INIT request, its first payload is no COOKIE) from
the header alone, as strongSwan's receiver does: SPIi, one HMAC and
:func:`cookie_reply`, packed directly; the body is read (and refused when
malformed) once the initiator comes back with the cookie. Other requests are
read with :func:`scan_init_request`, which walks the generic payload headers
and slices out Ni and the COOKIE without decoding any payload (about a tenth
of ``parse_message``). The :class:`ike.wire.Message` forms
(:meth:`CookieJar.cookie`, :func:`cookie_challenge`, :func:`request_cookie`)
are the same computation for the session and the tests.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from ike.constants import (
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from ike.errors import LocalError, ParseError
from ike.payloads import NotifyPayload
from ike.wire import Message

VERSION_LEN = 4
MIN_SECRET_LEN = 16
MAX_COOKIE_LEN = 64  # §2.6: an initiator may refuse longer cookies; ours are 36 octets


class CookieJar:
    """The current and previous secret, and the cookies made from them."""

    def __init__(self, secret: bytes) -> None:
        # version -> an HMAC keyed with that secret, copied for each cookie (keying
        # costs twice the MAC of a request: this runs for every request of a flood)
        self._secrets: dict[int, hmac.HMAC] = {}
        self._version = -1
        self.rotate(secret)

    def rotate(self, secret: bytes) -> None:
        """Start a new secret; cookies made with the previous one stay valid."""
        if len(secret) < MIN_SECRET_LEN:
            raise LocalError(f"a cookie secret needs at least {MIN_SECRET_LEN} bytes")
        self._version = (self._version + 1) % 2**32
        self._secrets = {v: s for v, s in self._secrets.items() if v == (self._version - 1) % 2**32}
        self._secrets[self._version] = hmac.HMAC(bytes(secret), hashes.SHA256())

    def cookie(self, request: Message | InitRequest, src_host: str) -> bytes:
        """The cookie for this request from this address (made with the current secret)."""
        return self._make(self._version, request.spi_i, src_host)

    def cookie_for(self, spi_i: bytes, src_host: str) -> bytes:
        """:meth:`cookie` from the request's SPIi alone (the front door under a flood)."""
        return self._make(self._version, spi_i, src_host)

    def valid(self, request: Message | InitRequest, src_host: str) -> bool:
        """Whether the request starts with a cookie we handed out for it."""
        offered = request.cookie if isinstance(request, InitRequest) else request_cookie(request)
        if offered is None or len(offered) < VERSION_LEN:
            return False
        version = int.from_bytes(offered[:VERSION_LEN], "big")
        if version not in self._secrets:
            return False
        made = self._make(version, request.spi_i, src_host)
        return constant_time.bytes_eq(offered, made)

    def _make(self, version: int, spi_i: bytes, src_host: str) -> bytes:
        mac = self._secrets[version].copy()
        mac.update(_packed(src_host) + spi_i)
        return version.to_bytes(VERSION_LEN, "big") + mac.finalize()

    def __repr__(self) -> str:
        return f"CookieJar(version={self._version}, <secrets redacted>)"


def request_cookie(request: Message) -> bytes | None:
    """The COOKIE notify of a request, if any (§2.6: it must come first)."""
    first = request.payloads[0] if request.payloads else None
    if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
        return first.data
    return None


def cookie_challenge(request: Message, cookie: bytes) -> bytes:
    """``HDR(SPIi, 0), N(COOKIE)``: the stateless answer asking for a retry."""
    if request.exchange_type != ExchangeType.IKE_SA_INIT or request.is_response:
        raise LocalError("cookies answer IKE_SA_INIT requests only")
    return Message(
        spi_i=request.spi_i,
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.RESPONSE,
        message_id=0,
        payloads=[NotifyPayload(NotifyType.COOKIE, cookie)],
    ).build()


def _packed(host: str) -> bytes:
    """The address as 4 or 16 bytes (inet_pton: a tenth of ipaddress's cost per request)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return ipaddress.ip_address(host).packed  # raises ValueError for what is no address


# --- the raw forms, for the front door ---------------------------------------------------

_HEADER = struct.Struct("!8s8sBBBBII")  # §3.1
_GENERIC = struct.Struct("!BBH")  # §3.2
_NOTIFY = struct.Struct("!BBH")  # §3.10: Protocol ID, SPI Size, Notify Message Type
_ZERO_SPI = bytes(8)
_RESPONSE, _INITIATOR = int(HeaderFlag.RESPONSE), int(HeaderFlag.INITIATOR)
_KNOWN_PAYLOADS = frozenset(int(t) for t in PayloadType if t is not PayloadType.NONE)
# Plain ints for the per-datagram scan (an enum member's lookup costs more than the
# comparison: the scan runs for every spoofed request during a flood).
_NO_NEXT, _NONCE, _NOTIFY_PAYLOAD = (
    int(PayloadType.NONE),
    int(PayloadType.NONCE),
    int(PayloadType.N),
)
_COOKIE, _IKE_SA_INIT = int(NotifyType.COOKIE), int(ExchangeType.IKE_SA_INIT)
_HEADER_LEN, _GENERIC_LEN, _NOTIFY_LEN = IKE_HEADER_LEN, _GENERIC.size, _NOTIFY.size
MAX_INIT_PAYLOADS = 64  # more in one IKE_SA_INIT request is not a request we answer


@dataclass(frozen=True, slots=True)
class InitRequest:
    """What the front door needs of a new IKE_SA_INIT request, read without decoding it."""

    spi_i: bytes
    nonce: bytes
    cookie: bytes | None  # the data of N(COOKIE) when it is the first payload (§2.6)


def scan_init_request(data: bytes) -> InitRequest:
    """Check that ``data`` is an IKE_SA_INIT request (SPIr = 0) whose payload chain fits
    the datagram exactly and carries a Nonce, and slice out what a cookie needs.

    Payload bodies are not decoded: a request that passes may still be refused by
    the session that decodes it. ParseError for anything else, including an unknown
    payload type marked critical (§2.5: the session would refuse it too).
    """
    if len(data) < _HEADER_LEN:
        raise ParseError("shorter than an IKE header")
    spi_i, spi_r, next_type, version, exchange, flags, _, length = _HEADER.unpack_from(data)
    if length != len(data) or version >> 4 != IKE_MAJOR_VERSION:
        raise ParseError("IKE header Length or version")
    if exchange != _IKE_SA_INIT or spi_r != _ZERO_SPI:
        raise ParseError("not a new IKE_SA_INIT")
    if flags & _RESPONSE or not flags & _INITIATOR:
        raise ParseError("not an IKE_SA_INIT request")
    offset, nonce, cookie = _HEADER_LEN, None, None
    generic = _GENERIC.unpack_from
    for count in range(MAX_INIT_PAYLOADS + 1):
        if next_type == _NO_NEXT:
            break
        if count == MAX_INIT_PAYLOADS:
            raise ParseError(f"more than {MAX_INIT_PAYLOADS} payloads")
        if offset + _GENERIC_LEN > length:
            raise ParseError("payload header beyond the message")
        this = next_type
        next_type, generic_flags, size = generic(data, offset)
        end = offset + size
        if size < _GENERIC_LEN or end > length:
            raise ParseError("payload length beyond the message")
        if this == _NONCE:
            nonce = data[offset + _GENERIC_LEN : end]
        elif this == _NOTIFY_PAYLOAD and count == 0 and size >= _GENERIC_LEN + _NOTIFY_LEN:
            _, spi_size, notify_type = _NOTIFY.unpack_from(data, offset + _GENERIC_LEN)
            if notify_type == _COOKIE:
                cookie = data[offset + _GENERIC_LEN + _NOTIFY_LEN + spi_size : end]
        elif generic_flags & 0x80 and this not in _KNOWN_PAYLOADS:
            raise ParseError(f"unsupported critical payload {this}")
        offset = end
    if offset != length:
        raise ParseError("bytes after the last payload")
    if nonce is None:
        raise ParseError("IKE_SA_INIT request without a Nonce")
    return InitRequest(spi_i, nonce, cookie)


def needs_challenge(data: bytes) -> bool:
    """Whether the header calls ``data`` a new IKE_SA_INIT request (:func:`starts_ike_sa`,
    IKEv2, its Length the datagram's) whose first payload is not N(COOKIE): under load
    it gets a challenge, made from SPIi and the source alone. Payloads are not read."""
    return (
        starts_ike_sa(data)
        and data[17] >> 4 == IKE_MAJOR_VERSION
        and int.from_bytes(data[24:28], "big") == len(data)
        and not (data[16] == _NOTIFY_PAYLOAD and data[34:36] == _COOKIE_TYPE)
    )


def starts_ike_sa(data: bytes) -> bool:
    """:attr:`ike.wire.IkeHeader.starts_ike_sa` from the raw bytes, without parsing the
    header: an IKE_SA_INIT with the Initiator flag, not the Response flag, and SPIr = 0.
    (The dispatcher's test for every datagram of a flood; a tenth of ``parse_header``.)"""
    return (
        len(data) >= _HEADER_LEN
        and data[18] == _IKE_SA_INIT
        and data[19] & _FLAG_BITS == _INITIATOR
        and data[8:16] == _ZERO_SPI
    )


_FLAG_BITS = _RESPONSE | _INITIATOR
_COOKIE_TYPE = _COOKIE.to_bytes(2, "big")  # §3.10: Notify Message Type, 6 bytes into the body
_REPLY = struct.Struct("!8s8sBBBBIIBBHBBH")  # HDR + one notify payload's headers


def cookie_reply(spi_i: bytes, cookie: bytes) -> bytes:
    """:func:`cookie_challenge` packed directly: ``HDR(SPIi, 0), N(COOKIE)``."""
    notify_len = _GENERIC_LEN + _NOTIFY_LEN + len(cookie)
    return (
        _REPLY.pack(
            spi_i,
            _ZERO_SPI,
            _NOTIFY_PAYLOAD,
            IKE_MAJOR_VERSION << 4,
            _IKE_SA_INIT,
            _RESPONSE,
            0,
            _HEADER_LEN + notify_len,
            _NO_NEXT,
            0,
            notify_len,
            0,
            0,
            _COOKIE,
        )
        + cookie
    )
