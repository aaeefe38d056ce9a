"""Two IkeSessions over a fake wire, with explicit time (h11's ConnectionPair, for IKE).

:class:`SessionPair` plays both daemons: it creates the responder session on
an IKE_SA_INIT request (reusing the one that :meth:`IkeSession.matches` a
retransmission), carries datagrams with a fixed latency through a
deterministic :class:`Link` that may lose or duplicate them, drains events
before datagrams (as the daemon must), and advances ``now`` to the next
delivery or deadline. Nothing here reads a clock or the OS RNG.

Also: a small PKI (CA + leaf certificates, ECDSA P-256 or Ed25519) and
config builders.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ike.auth import Identity, PrivateKey
from ike.cookies import CookieJar, cookie_challenge
from ike.entropy import DeterministicEntropy
from ike.events import (
    Address,
    ChildSaDown,
    ChildSaOutboundActive,
    ChildSaUp,
    Event,
    IkeSaDown,
)
from ike.policy import RetransmitPolicy
from ike.proposals import parse_esp_proposal, parse_ike_proposal
from ike.session import IkeSession, peek_header
from ike.sessionconfig import PeerLookup, PskAuth, PubkeyAuth, Secret, SessionConfig
from ike.wire import IkeHeader, parse_message

# -- time ---------------------------------------------------------------------

T0 = 1000.0  # the monotonic "now" every test starts at
WALL_T0 = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)


def wall_clock(now: float) -> datetime.datetime:
    return WALL_T0 + datetime.timedelta(seconds=now - T0)


# -- PKI ------------------------------------------------------------------------

KeyType = str  # "ecdsa" | "ed25519"


def _new_key(kind: KeyType, seed: int) -> PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
    return ec.derive_private_key(seed + 1, ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass(frozen=True)
class Ca:
    key: PrivateKey = field(repr=False)
    cert: x509.Certificate


@cache
def make_ca(name: str = "Test CA", kind: KeyType = "ecdsa", seed: int = 7) -> Ca:
    key = _new_key(kind, seed)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(seed)
        .not_valid_before(WALL_T0 - datetime.timedelta(days=365))
        .not_valid_after(WALL_T0 + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, _hash_for(key))  # type: ignore[arg-type]
    )
    return Ca(key, cert)


@cache
def make_leaf(
    ca: Ca, fqdn: str, kind: KeyType = "ecdsa", seed: int = 11, expired: bool = False
) -> tuple[PrivateKey, x509.Certificate]:
    key = _new_key(kind, seed)
    end = WALL_T0 - datetime.timedelta(days=1) if expired else WALL_T0 + datetime.timedelta(days=90)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(seed)
        .not_valid_before(WALL_T0 - datetime.timedelta(days=30))
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
        .sign(ca.key, _hash_for(ca.key))  # type: ignore[arg-type]
    )
    return key, cert


# -- configurations ---------------------------------------------------------------

GW_I, GW_R = "gw-i.example.org", "gw-r.example.org"
SITE_I = ipaddress.ip_network("198.51.100.0/24")
SITE_R = ipaddress.ip_network("203.0.113.0/24")
ADDR_I: Address = ("192.0.2.1", 500)
ADDR_R: Address = ("192.0.2.2", 500)
FAST = RetransmitPolicy(initial=1.0, factor=1.8, tries=5)


def pubkey(
    fqdn: str,
    kind: KeyType = "ecdsa",
    ca: Ca | None = None,
    trust: Ca | None = None,
    **leaf: Any,
) -> PubkeyAuth:
    """Our key and certificate issued by ``ca``; we trust ``trust`` (default: ``ca``)."""
    ca = ca or make_ca(kind=kind)
    key, cert = make_leaf(ca, fqdn, kind, seed=sum(map(ord, fqdn)), **leaf)
    return PubkeyAuth(private_key=key, certificate=cert, trust_anchors=((trust or ca).cert,))


def psk(secret: bytes = b"correct horse battery staple") -> PskAuth:
    return PskAuth(Secret(secret))


def make_config(
    local: str,
    remote: str | None,
    auth: PubkeyAuth | PskAuth,
    *,
    ike: Sequence[str] = ("aes256gcm16-prfsha256-x25519",),
    esp: Sequence[str] = ("aes256gcm16",),
    local_ts: Sequence[str] = (),
    remote_ts: Sequence[str] = (),
    **extra: Any,
) -> SessionConfig:
    return SessionConfig(
        local_id=Identity.parse(local),
        remote_id=None if remote is None else Identity.parse(remote),
        auth=auth,
        ike_proposals=tuple(parse_ike_proposal(p) for p in ike),
        esp_proposals=tuple(parse_esp_proposal(p) for p in esp),
        local_ts=tuple(ipaddress.ip_network(n) for n in local_ts),
        remote_ts=tuple(ipaddress.ip_network(n) for n in remote_ts),
        wall_clock=wall_clock,
        **extra,
    )


def config_pair(kind: KeyType = "ecdsa", **common: Any) -> tuple[SessionConfig, SessionConfig]:
    """Matching initiator and responder configurations with certificates."""
    i = make_config(GW_I, GW_R, pubkey(GW_I, kind), local_ts=[str(SITE_I)],
                    remote_ts=[str(SITE_R)], **common)  # fmt: skip
    r = make_config(GW_R, GW_I, pubkey(GW_R, kind), local_ts=[str(SITE_R)],
                    remote_ts=[str(SITE_I)], **common)  # fmt: skip
    return i, r


def with_(config: SessionConfig, **changes: Any) -> SessionConfig:
    return replace(config, **changes)


# -- the wire ---------------------------------------------------------------------


@dataclass
class Sent:
    """One datagram put on the wire, and what the link did with it."""

    at: float
    sender: str  # "i" or "r"
    data: bytes = field(repr=False)
    src: Address
    dst: Address
    copies: int  # 0 = lost, 2 = duplicated

    @property
    def header(self) -> IkeHeader:
        return peek_header(self.data)


Rule = Callable[[Sent], int | None]  # returns the number of copies to deliver, None: default
DelayRule = Callable[[Sent], float | None]  # extra one-way delay in seconds, None: none


class Link:
    """Deterministic loss, duplication and delay (seeded from DeterministicEntropy)."""

    def __init__(self, seed: int = 0, loss: float = 0.0, dup: float = 0.0) -> None:
        self._random = random.Random(DeterministicEntropy(seed).random_bytes(16))
        self.loss, self.dup = loss, dup
        self.rules: list[Rule] = []
        self.delays: list[DelayRule] = []

    def delay(self, sent: Sent) -> float:
        for rule in self.delays:
            extra = rule(sent)
            if extra is not None:
                return extra
        return 0.0

    def copies(self, sent: Sent) -> int:
        for rule in self.rules:
            forced = rule(sent)
            if forced is not None:
                return forced
        if self._random.random() < self.loss:
            return 0
        return 2 if self._random.random() < self.dup else 1


LATENCY = 0.01  # one way
IDLE_HORIZON = 600.0  # run() stops when nothing is due sooner (default lifetimes are hours)
DUP_DELAY = 0.003  # a duplicate trails the original


class SessionPair:
    """An initiator and the responder side of a fake daemon, driven by explicit time."""

    def __init__(
        self,
        initiator_config: SessionConfig,
        responder_config: SessionConfig | Sequence[SessionConfig],
        link: Link | None = None,
        seed: int = 0,
        cookies: CookieJar | None = None,
        lookup: PeerLookup | None = None,
    ) -> None:
        self.now = T0
        self.lookup = lookup  # the daemon's peer lookup by identity, if any
        self.link = link or Link(seed)
        self.responder_config = responder_config
        self.cookies = cookies  # set: the fake daemon demands a cookie (as under load)
        self._entropy_r = DeterministicEntropy(f"responder-{seed}")
        self.initiator = IkeSession.initiator(
            initiator_config, DeterministicEntropy(f"initiator-{seed}"), self.now, ADDR_I, ADDR_R
        )
        self.responders: list[IkeSession] = []  # every one ever created
        self.events: dict[str, list[Event]] = {"i": [], "r": []}
        self.events_of: dict[int, list[Event]] = {}  # by id(session)
        self.wire: list[Sent] = []
        self._queue: list[tuple[float, int, str, Sent]] = []  # (due, order, receiver, sent)
        self._order = 0

    # -- driving --------------------------------------------------------------

    def start(self) -> None:
        self.initiator.initiate(self.now)
        self.flush()

    def live_responders(self) -> list[IkeSession]:
        return [s for s in self.responders if not s.finished]

    @property
    def responder(self) -> IkeSession:
        """The responder session that got furthest (the established one, if any)."""
        assert self.responders, "no responder session was created"
        established = [s for s in self.responders if s.remote_identity is not None]
        return (established or self.responders)[-1]

    def sessions(self) -> list[tuple[str, IkeSession]]:
        return [("i", self.initiator), *(("r", s) for s in self.responders)]

    def flush(self) -> None:
        """Drain every session: events first (install SAs), then datagrams."""
        for side, session in self.sessions():
            while (event := session.next_event()) is not None:
                self.events[side].append(event)
                self.events_of.setdefault(id(session), []).append(event)
            for data, src, dst in session.datagrams_to_send():
                self._send(side, data, src, dst)

    def _send(self, side: str, data: bytes, src: Address, dst: Address) -> None:
        sent = Sent(self.now, side, data, src, dst, 1)
        sent.copies = self.link.copies(sent)
        self.wire.append(sent)
        receiver = "r" if side == "i" else "i"
        extra = self.link.delay(sent) if sent.copies else 0.0
        for n in range(sent.copies):
            self._order += 1
            due = self.now + LATENCY + extra + n * DUP_DELAY
            self._queue.append((due, self._order, receiver, sent))

    def _deliver(self, receiver: str, sent: Sent) -> None:
        if receiver == "i":
            self.initiator.receive_datagram(sent.data, sent.src, sent.dst, self.now)
            return
        header = peek_header(sent.data)
        session = next((s for s in self.live_responders() if s.matches(header)), None)
        is_init_request = header.is_initiator and not header.is_response
        if session is None and is_init_request and not any(header.spi_r):
            if self.cookies is not None:  # §2.6: stateless until a valid cookie comes
                request = parse_message(sent.data)
                if not self.cookies.valid(request, sent.src[0]):
                    challenge = cookie_challenge(request, self.cookies.cookie(request, sent.src[0]))
                    self._send("r", challenge, sent.dst, sent.src)
                    return
            # the daemon creates a responder for a new IKE_SA_INIT request
            session = IkeSession.responder(
                self.responder_config,
                self._entropy_r,
                self.now,
                sent.dst,
                sent.src,
                lookup=self.lookup,
            )
            self.responders.append(session)
        if session is not None:
            session.receive_datagram(sent.data, sent.src, sent.dst, self.now)

    def next_time(self) -> float | None:
        times = [due for due, *_ in self._queue]
        for _side, session in self.sessions():
            if not session.finished and (d := session.next_deadline()) is not None:
                times.append(d)
        return min(times, default=None)

    def step(self, horizon: float | None = IDLE_HORIZON) -> bool:
        """Advance to the next delivery or deadline and act on it.

        False when idle: nothing at all is due, or nothing within ``horizon``
        seconds (None: no limit, e.g. to jump to a rekey an hour away).
        """
        self.flush()  # whatever a test made a session do directly goes out now
        at = self.next_time()
        if at is None or (horizon is not None and at > self.now + horizon):
            return False
        self.now = max(self.now, at)
        due = sorted(q for q in self._queue if q[0] <= self.now)
        self._queue = [q for q in self._queue if q[0] > self.now]
        for _due, _order, receiver, sent in due:
            self._deliver(receiver, sent)
            self.flush()
        for _side, session in self.sessions():
            deadline = session.next_deadline()
            if not session.finished and deadline is not None and deadline <= self.now:
                session.handle_timer(self.now)
        self.flush()
        return True

    def run(self, until: float | None = None, max_steps: int = 10_000) -> None:
        """Step until idle (or ``until``, absolute time).

        Idle: nothing is due within :data:`IDLE_HORIZON` (lifetimes keep a
        session's next deadline in the future forever); ``now`` then stays at
        the last thing that happened.
        """
        self.flush()
        for _ in range(max_steps):
            at = self.next_time()
            horizon = self.now + IDLE_HORIZON if until is None else until
            if at is None or at > horizon:
                if until is not None:
                    self.now = max(self.now, until)
                return
            self.step(horizon=None)
        raise AssertionError("SessionPair did not settle")

    def run_until(self, predicate: Callable[[], bool], limit: float = 600.0) -> None:
        """Step until ``predicate()`` holds; fail after ``limit`` seconds from T0."""
        while not predicate():
            if self.now > T0 + limit or not self.step(horizon=None):
                raise AssertionError("condition never became true")

    # -- reading the outcome -------------------------------------------------------

    def of(self, side: str, kind: type[Any]) -> list[Any]:
        return [e for e in self.events[side] if isinstance(e, kind)]

    def established(self) -> bool:
        return bool(self.of("i", ChildSaUp)) and bool(self.of("r", ChildSaUp))

    def child_up(self, side: str) -> ChildSaUp:
        (event,) = self.of(side, ChildSaUp)
        assert isinstance(event, ChildSaUp)
        return event

    def down(self, side: str) -> IkeSaDown:
        (event,) = self.of(side, IkeSaDown)
        assert isinstance(event, IkeSaDown)
        return event

    def sent_by(self, side: str) -> list[Sent]:
        return [s for s in self.wire if s.sender == side]


# -- the daemon's view of Child SAs, rebuilt from events ------------------------------


@dataclass
class DataPlaneSa:
    """A Child SA as a daemon applying the events would hold it."""

    up: ChildSaUp
    sending: bool


def data_plane(events: Sequence[Event]) -> dict[int, DataPlaneSa]:
    """Child SAs up and not down, by inbound SPI, with whether their outbound SA is in use."""
    live: dict[int, DataPlaneSa] = {}
    for event in events:
        if isinstance(event, ChildSaUp):
            assert event.inbound_spi not in live, "ChildSaUp twice for one SPI"
            live[event.inbound_spi] = DataPlaneSa(event, event.outbound_active)
        elif isinstance(event, ChildSaOutboundActive):
            assert not live[event.inbound_spi].sending, "activated twice"
            live[event.inbound_spi].sending = True
        elif isinstance(event, ChildSaDown):
            live.pop(event.inbound_spi, None)
    return live


def assert_one_pair(pair: SessionPair) -> tuple[ChildSaUp, ChildSaUp]:
    """Exactly one Child SA on each side, sending, and the two halves match crosswise."""
    (i,) = data_plane(pair.events["i"]).values()
    (r,) = data_plane(pair.events["r"]).values()
    assert i.sending and r.sending
    ui, ur = i.up, r.up
    assert (ui.inbound_spi, ui.outbound_spi) == (ur.outbound_spi, ur.inbound_spi)
    assert ui.keys.outbound_key == ur.keys.inbound_key
    assert ui.keys.outbound_salt == ur.keys.inbound_salt
    assert ui.keys.inbound_key == ur.keys.outbound_key
    assert ui.keys.inbound_salt == ur.keys.outbound_salt
    # ... and the sessions agree with the daemons' view.
    assert [c.inbound_spi for c in pair.initiator.children] == [ui.inbound_spi]
    assert [c.inbound_spi for c in pair.responder.children] == [ur.inbound_spi]
    return ui, ur
