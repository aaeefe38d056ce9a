"""Stateless COOKIEs for IKE_SA_INIT (RFC 7296 §2.6), for the daemon's front door.

Under load (too many half-open IKE SAs) a responder answers an IKE_SA_INIT
request that carries no valid cookie with ``HDR(SPIi, 0), N(COOKIE)`` and
keeps no state at all: no session, no DH. A genuine initiator repeats its
request with the cookie first (the session does that on its own, see
:mod:`ike.exchanges.ike_init`); only then does the daemon create a
responder session. The cookie binds the initiator's nonce, address and SPI:

    Cookie = <VersionIDofSecret> | HMAC-SHA256(<secret>, Ni | IPi | SPIi)

The secret is rotated from time to time; the previous one stays valid so
that a cookie handed out just before a rotation still works.
"""

from __future__ import annotations

import ipaddress

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from ike.constants import ExchangeType, HeaderFlag, NotifyType
from ike.errors import LocalError
from ike.payloads import NoncePayload, NotifyPayload
from ike.wire import Message

VERSION_LEN = 4
MIN_SECRET_LEN = 16
MAX_COOKIE_LEN = 64  # §2.6: an initiator may refuse longer cookies; ours are 36 octets


class CookieJar:
    """The current and previous secret, and the cookies made from them."""

    def __init__(self, secret: bytes) -> None:
        self._secrets: dict[int, bytes] = {}
        self._version = -1
        self.rotate(secret)

    def rotate(self, secret: bytes) -> None:
        """Start a new secret; cookies made with the previous one stay valid."""
        if len(secret) < MIN_SECRET_LEN:
            raise LocalError(f"a cookie secret needs at least {MIN_SECRET_LEN} bytes")
        self._version = (self._version + 1) % 2**32
        self._secrets = {v: s for v, s in self._secrets.items() if v == (self._version - 1) % 2**32}
        self._secrets[self._version] = bytes(secret)

    def cookie(self, request: Message, src_host: str) -> bytes:
        """The cookie for this request from this address (made with the current secret)."""
        return self._make(self._version, request, src_host)

    def valid(self, request: Message, src_host: str) -> bool:
        """Whether the request starts with a cookie we handed out for it."""
        offered = request_cookie(request)
        if offered is None or len(offered) < VERSION_LEN:
            return False
        version = int.from_bytes(offered[:VERSION_LEN], "big")
        if version not in self._secrets:
            return False
        return constant_time.bytes_eq(offered, self._make(version, request, src_host))

    def _make(self, version: int, request: Message, src_host: str) -> bytes:
        nonce = request.find(NoncePayload)
        mac = hmac.HMAC(self._secrets[version], hashes.SHA256())
        mac.update(nonce.nonce if nonce is not None else b"")
        mac.update(ipaddress.ip_address(src_host).packed + request.spi_i)
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
