"""The front door: which new IKE_SA_INIT requests may cost us state and a DH.

A new IKE_SA_INIT (SPIr = 0) is the one message anyone can send from any
address that makes a responder compute a DH and keep state. RFC 7296 §2.6
(COOKIE) and RFC 8019 (half-open limits) bound that cost; this module is
the pure policy the daemon asks before it creates a responder session:

1. Half-open IKE SAs (IKE_SA_INIT admitted, IKE_AUTH not yet verified) are
   counted globally, per peer entry and per source address, from the moment
   a request is admitted: the daemon hands it to a peer task that creates the
   session later, and a flood must not slip past the thresholds in between.
   The daemon reports the session it opens (:meth:`FrontDoor.opened`, which
   turns the reservation into the session) and each one that ends or is
   established (:meth:`FrontDoor.closed`), and each admitted request it
   turned away without a session (the peer's inbox was full, the peer is
   held down: :meth:`FrontDoor.declined`). A reservation is never dropped
   while its session may still come (a busy peer task may take seconds on
   a loaded machine: lapsing then let a flood pass the threshold); only a
   reservation nobody reported within :data:`RESERVATION_TTL`, a safety net
   for a lost report, lapses. A retransmitted request meanwhile finds its
   reservation and is not counted twice.
2. A request without a valid cookie is admitted only while fewer than
   ``cookie_threshold`` half-open SAs exist in all and fewer than
   ``source_threshold`` from its source address. Otherwise it gets
   ``HDR(SPIi, 0), N(COOKIE)`` and nothing else: no session, no DH, no
   state at all (the cookie is an HMAC of its source and SPIi, see
   :mod:`ike.cookies`). The challenge is made from the header alone, as
   strongSwan does: a request whose body is malformed gets one too, and is
   refused as malformed when it comes back with the cookie. The per-source
   threshold is what keeps a spoofer who uses a real peer's address from
   filling that address's share: the real peer answers the cookie, the
   spoofer cannot.
3. A request with a valid cookie proves that its sender receives at its
   address; it is admitted within the caps: at most ``max_half_open``
   globally, ``max_per_peer`` per peer entry (or that peer's own cap in
   ``peer_limits``: the daemon's reception answers for a hub's spokes, all
   of whom may come at once) and ``max_per_source`` per source address.
   Beyond them it is dropped (the initiator retransmits and gets in once
   others expire).
4. The cookie secret is drawn from the injected entropy and replaced every
   ``secret_lifetime`` seconds; cookies of the previous secret stay valid,
   so a cookie handed out just before a rotation still works.
5. Every decision is counted under a fixed reason; nothing here grows with
   what senders send except the per-key half-open counters, which are bounded
   by the caps and emptied as SAs close.

What it costs: above the threshold, for a request without a cookie (every
request of a spoofed flood), a look at its header, one HMAC and a reply
packed directly: ~5 us here. Otherwise a walk over the request's payload
headers (:func:`ike.cookies.scan_init_request`, no payload decoded) as well.
It never raises on a malformed request: that is a drop reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from enum import Enum
from typing import NamedTuple

from ike.cookies import (
    CookieJar,
    InitRequest,
    cookie_reply,
    needs_challenge,
    scan_init_request,
)
from ike.entropy import Entropy
from ike.errors import ParseError
from ike.events import Address
from ike.policy import (
    COOKIE_SECRET_LIFETIME,
    COOKIE_SOURCE_THRESHOLD,
    COOKIE_THRESHOLD,
    MAX_HALF_OPEN,
    MAX_HALF_OPEN_PER_PEER,
    MAX_HALF_OPEN_PER_SOURCE,
)

COOKIE_SECRET_LEN = 32
RESERVATION_TTL = 30.0  # a reservation nobody reported lapses (rule 1: a safety net)


class Verdict(Enum):
    ADMIT = "admit"  # create a responder session
    COOKIE = "cookie"  # send ``reply`` (the COOKIE challenge), keep nothing
    DROP = "drop"  # nothing to send, nothing kept


# Fixed, enumerable reasons (counters never grow with what senders send).
REASONS = (
    "admitted",
    "admitted with a valid cookie",
    "retransmission of an admitted request",
    "cookie requested",
    "invalid cookie",
    "malformed IKE_SA_INIT",
    "half-open limit (global)",
    "half-open limit (peer)",
    "half-open limit (source)",
)


class Admission(NamedTuple):
    """A decision (a tuple: made for every request of a flood, a dataclass cost 1 us more)."""

    verdict: Verdict
    reason: str
    reply: bytes = b""  # for COOKIE: the datagram to send back to the source


_MALFORMED = Admission(Verdict.DROP, "malformed IKE_SA_INIT")
_RETRANSMITTED = Admission(Verdict.ADMIT, "retransmission of an admitted request")


class FrontDoor:
    """Cookies and half-open limits for new IKE_SA_INIT requests (see the module docstring)."""

    def __init__(
        self,
        entropy: Entropy,
        now: float,
        *,
        cookie_threshold: int = COOKIE_THRESHOLD,
        source_threshold: int = COOKIE_SOURCE_THRESHOLD,
        max_half_open: int = MAX_HALF_OPEN,
        max_per_peer: int = MAX_HALF_OPEN_PER_PEER,
        max_per_source: int = MAX_HALF_OPEN_PER_SOURCE,
        secret_lifetime: float = COOKIE_SECRET_LIFETIME,
        peer_limits: Mapping[str, int] | None = None,
    ) -> None:
        self._entropy = entropy
        self.cookie_threshold = cookie_threshold
        self.source_threshold = source_threshold
        self.max_half_open = max_half_open
        self.max_per_peer = max_per_peer
        self.peer_limits = dict(peer_limits or {})
        self.max_per_source = max_per_source
        self._secret_lifetime = secret_lifetime
        self._jar = CookieJar(entropy.random_bytes(COOKIE_SECRET_LEN))
        self._rotate_at = now + secret_lifetime
        self.half_open = 0
        # admitted requests whose session is not opened yet: (SPIi, source) -> (peer, until)
        self._reserved: dict[tuple[bytes, Address], tuple[str, float]] = {}
        self._per_peer: Counter[str] = Counter()
        self._per_source: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    # -- the decision ----------------------------------------------------------------

    def admit(self, data: bytes, src: Address, peer: str, now: float) -> Admission:
        """Decide about a new IKE_SA_INIT request (SPIr = 0) from ``src`` for ``peer``.

        The common case under a flood (busy, no cookie) is kept short: it runs for every
        request the gateway reads (see the module docstring, "What it costs")."""
        if now >= self._rotate_at:
            self._rotate(now)
        if self._reserved:
            self._lapse(now)
        host = src[0]
        # Busy and no cookie offered: challenged from the header alone (rule 2; the
        # body is read when the cookie comes back). A retransmission of an admitted
        # request (its session is not opened yet) goes on to be admitted again.
        if self._busy(host) and needs_challenge(data) and (data[:8], src) not in self._reserved:
            return self._challenge(data[:8], host)
        try:
            request = scan_init_request(data)
        except ParseError:
            return self._count(_MALFORMED)
        if (request.spi_i, src) in self._reserved:
            return self._count(_RETRANSMITTED)
        if request.cookie is None:
            if self._busy(host):  # a COOKIE notify too short to hold one, say
                return self._challenge(request.spi_i, host)
            return self._reserve(request, src, peer, now, "admitted")
        if not self._jar.valid(request, host):
            # §2.6: a stale cookie (say, from before two rotations) gets a fresh one
            self.counters["invalid cookie"] += 1
            return self._challenge(request.spi_i, host)
        return self._reserve(request, src, peer, now, "admitted with a valid cookie")

    def _busy(self, host: str) -> bool:
        """Whether a request from ``host`` must bring a cookie (rule 2)."""
        return (
            self.half_open >= self.cookie_threshold
            or self._per_source.get(host, 0) >= self.source_threshold
        )

    def _challenge(self, spi_i: bytes, host: str) -> Admission:
        reply = cookie_reply(spi_i, self._jar.cookie_for(spi_i, host))
        self.counters["cookie requested"] += 1
        return Admission(Verdict.COOKIE, "cookie requested", reply)

    def _reserve(
        self, request: InitRequest, src: Address, peer: str, now: float, reason: str
    ) -> Admission:
        limit = self._limit(peer, src[0])
        if limit is not None:
            return self._count(Admission(Verdict.DROP, limit))
        self._reserved[(request.spi_i, src)] = (peer, now + RESERVATION_TTL)
        self._add(peer, src[0], 1)
        return self._count(Admission(Verdict.ADMIT, reason))

    def _limit(self, peer: str, host: str) -> str | None:
        if self.half_open >= self.max_half_open:
            return "half-open limit (global)"
        if self._per_peer[peer] >= self.peer_limits.get(peer, self.max_per_peer):
            return "half-open limit (peer)"
        if self._per_source[host] >= self.max_per_source:
            return "half-open limit (source)"
        return None

    def _count(self, admission: Admission) -> Admission:
        self.counters[admission.reason] += 1
        return admission

    def _rotate(self, now: float) -> None:
        self._jar.rotate(self._entropy.random_bytes(COOKIE_SECRET_LEN))
        self._rotate_at = now + self._secret_lifetime

    # -- half-open accounting (rule 1) ----------------------------------------------

    def opened(self, peer: str, src: Address, spi_i: bytes) -> None:
        """A responder session was created for an admitted request."""
        if self._reserved.pop((spi_i, src), None) is None:  # its reservation lapsed
            self._add(peer, src[0], 1)

    def declined(self, peer: str, src: Address, spi_i: bytes) -> None:
        """An admitted request was turned away without a session: its reservation goes."""
        if self._reserved.pop((spi_i, src), None) is not None:
            self._add(peer, src[0], -1)

    def closed(self, peer: str, src: Address) -> None:
        """A session reported with :meth:`opened` was established or ended."""
        self._add(peer, src[0], -1)

    def _lapse(self, now: float) -> None:
        """Drop reservations whose session was never opened (oldest first: one TTL)."""
        while self._reserved:
            key, (peer, until) = next(iter(self._reserved.items()))
            if until > now:
                return
            del self._reserved[key]
            self._add(peer, key[1][0], -1)

    def _add(self, peer: str, host: str, n: int) -> None:
        self.half_open = max(0, self.half_open + n)
        for counter, key in ((self._per_peer, peer), (self._per_source, host)):
            counter[key] += n
            if counter[key] <= 0:
                del counter[key]

    def status(self) -> dict[str, object]:
        """For the control socket: counts only, never the secret."""
        return {
            "half_open": self.half_open,
            "admitted_not_opened": len(self._reserved),
            "cookie_threshold": self.cookie_threshold,
            "cookies_required": self.half_open >= self.cookie_threshold,
            "max_half_open": self.max_half_open,
            "decisions": {reason: self.counters[reason] for reason in REASONS},
        }

    def __repr__(self) -> str:
        return f"<FrontDoor half_open={self.half_open} <secret redacted>>"
