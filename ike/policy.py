"""Timer and size choices of the IKE core: what *we* chose, not what the RFC says.

What the RFC fixes lives in :mod:`ike.constants`. Everything here is a
policy a reader may want to tune; each value says why it is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 7296 §2.10: nonces are at least 128 bits and at least half the PRF key
# size. 32 bytes covers PRF_HMAC_SHA2_512 (half of 64) and is what strongSwan sends.
NONCE_SIZE = 32

# How long a responder keeps a half-open IKE SA (IKE_SA_INIT answered, no
# IKE_AUTH yet). strongSwan's default half_open_timeout is 30 s.
HALF_OPEN_TIMEOUT = 30.0

# §2.21.1: an IKE_SA_INIT response is not authenticated, so an error notify in
# it (or garbage under our SPI) may be forged by anyone who saw our request.
# The initiator keeps its request going this long after the first such
# response, taking a valid response if one comes, and only then fails with
# the error it saw. Two seconds span one retransmission (1 s) and its answer:
# a genuine refusal (a misconfiguration) is still reported within seconds.
INIT_ERROR_GRACE = 2.0

# Above this many half-open IKE SAs the daemon answers new IKE_SA_INIT requests
# with a COOKIE first (§2.6): no state and no DH until the initiator proves it
# receives at its address. strongSwan's default cookie_threshold is 30 (10 in 6.0).
COOKIE_THRESHOLD = 30
# The same per source address: from the third half-open IKE SA of one address
# on, that address must answer a cookie. Two leave room for a gateway whose
# own first attempt is still half-open when it retries (and for both sides of
# a simultaneous start); a spoofer using a real peer's address cannot answer.
COOKIE_SOURCE_THRESHOLD = 2
# Hard caps on half-open IKE SAs (RFC 8019 §4.1: limit them per source and in
# all); beyond them even a request with a valid cookie is dropped until older
# ones end (HALF_OPEN_TIMEOUT). Each costs one DH and ~10 KiB of state.
MAX_HALF_OPEN = 1000
MAX_HALF_OPEN_PER_PEER = 200  # a hub's wildcard peer entry serves many spokes
MAX_HALF_OPEN_PER_SOURCE = 10
# The cookie secret is replaced this often; cookies made with the previous
# secret stay valid, so a cookie lives between one and two of these periods.
COOKIE_SECRET_LIFETIME = 60.0

# Lifetimes (DESIGN §4). The soft lifetime starts a rekey, moved earlier by a
# random fraction in [0, rekey_jitter] so that two peers with the same policy
# rarely rekey at once (RFC 7296 §2.8.1: "SHOULD be jittered"). An SA not
# rekeyed by soft x HARD_LIFETIME_FACTOR is deleted: strongSwan's life_time
# defaults to 110% of rekey_time as well (tunneld.config uses the same factor).
DEFAULT_IKE_LIFETIME = 4 * 3600.0
DEFAULT_CHILD_LIFETIME = 3600.0
DEFAULT_REKEY_JITTER = 0.1
MAX_REKEY_JITTER = 0.5  # tunneld.config accepts 0-0.5; more would halve the lifetime
HARD_LIFETIME_FACTOR = 1.1

# §2.25: after TEMPORARY_FAILURE we "MUST NOT immediately retry" but wait for
# the peer to finish what it is doing (one exchange: a round trip, or the
# retransmissions of one). A random delay in this range (seconds) also keeps
# two peers from colliding again. strongSwan waits 5-15 s.
TEMPORARY_FAILURE_RETRY = (5.0, 15.0)
# §2.25: TEMPORARY_FAILURE for "several minutes" means the peers are out of
# sync: the IKE SA is closed.
TEMPORARY_FAILURE_GIVE_UP = 300.0
# A rekey the peer refused outright (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, ...)
# is tried again after this random delay, until the hard lifetime ends the SA.
REKEY_RETRY = (30.0, 60.0)
# keep_children (ike.sessionconfig): a configured Child SA missing from the IKE
# SA is created by the IKE SA's initiator at once and by its responder after
# this grace (seconds), so that both rarely create the same child. A creation
# that fails is tried again after a delay that doubles within these bounds.
CHILD_START_GRACE = 3.0
CHILD_CREATE_RETRY = (2.0, 60.0)
# A rekey collision loser (§2.8.1, §2.8.2) waits this long for the winner's
# DELETE of a redundant IKE SA before forgetting it on its own.
REDUNDANT_SA_TIMEOUT = 120.0

# Supported hash algorithms announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427
# §4): SHA2-256/384/512 for ECDSA and RSA-PSS, "Identity" (RFC 8420) for Ed25519.
SIGNATURE_HASHES = (2, 3, 4, 5)


@dataclass(frozen=True)
class RetransmitPolicy:
    """Exponential backoff for requests we send (RFC 7296 §2.1, §2.4).

    The request is sent at t0 and retransmitted (identical bytes) after
    ``initial * factor**n`` seconds for n = 0 .. tries-1; when the timeout
    after the last retransmission also expires the peer is declared
    unreachable. ``max_timeout`` caps a single wait.

    strongSwan defaults to 4 s, factor 1.8, 5 tries (~165 s in total). We
    start at 1 s: site-to-site gateways sit on low-latency paths, and a lost
    datagram then costs one second, not four. Total with the defaults below:
    1 + 1.8 + 3.24 + 5.83 + 10.5 + 18.9 = ~41 s before giving up.
    """

    initial: float = 1.0
    factor: float = 1.8
    tries: int = 5
    max_timeout: float = 60.0
    # IKE_SA_INIT holds no state worth waiting for and costs the responder
    # little: an initiator re-establishing a tunnel after an outage keeps
    # asking every few seconds, so the tunnel is back soon after the path is
    # (1 + 1.8 + 3 + 3 + 3 + 3 = 14.8 s per attempt with the defaults).
    init_max_timeout: float = 3.0

    def timeout(self, attempt: int, *, init: bool = False) -> float:
        """Seconds to wait after transmission number ``attempt`` (0 = first send)."""
        cap = min(self.max_timeout, self.init_max_timeout) if init else self.max_timeout
        return float(min(self.initial * self.factor**attempt, cap))

    @property
    def total(self) -> float:
        """Seconds from the first send until the peer is declared unreachable."""
        return sum(self.timeout(n) for n in range(self.tries + 1))

    @property
    def init_total(self) -> float:
        """The same for an IKE_SA_INIT request."""
        return sum(self.timeout(n, init=True) for n in range(self.tries + 1))


DEFAULT_RETRANSMIT = RetransmitPolicy()
