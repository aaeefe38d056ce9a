"""Fuzz profile: IkeSession.receive_datagram at each stage of an IKE SA's life.

Stages: a fresh responder (IKE_SA_INIT requests), a responder waiting for
IKE_AUTH, an initiator waiting for the IKE_AUTH response, and an established
pair (INFORMATIONAL and CREATE_CHILD_SA both ways). The sessions are the
deterministic ones of tests/unit/sessionpair.py, so they hold the very keys
of the reference pair's traffic (tests/fuzz/genuine.py): half of the inputs
are genuine datagrams mutated, half are genuine plaintexts mutated and then
sealed with the receiving session's real SK key, their SPIs and message ID
made right now and then, so that they get past the ICV into the exchanges.

Allowed outcome: receive_datagram returns (the session answers, or counts a
drop); nothing may escape it. Whatever a session sends must be an IKE message.
A session whose state moved on is rebuilt (and every few hundred inputs).
The first byte of an input is not sent: bit 0 puts the non-ESP marker in
front, bit 1 sends an established pair's input to the initiator.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from fuzzing import Target, mutate, profile
from genuine import Datagram, initiator_first_messages, reference_pair_wire, seal

from ike.constants import NON_ESP_MARKER, ExchangeType
from ike.entropy import DeterministicEntropy
from ike.events import Address
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import IKE_HEADER_LEN, parse_header
from tests.unit.sessionpair import T0, SessionPair, config_pair

pytestmark = pytest.mark.fuzz

MARKER, TO_INITIATOR = 1, 2
HOST_I, HOST_R = "192.0.2.1", "192.0.2.2"
REBUILD_EVERY = 500


def drops(session: IkeSession) -> int:
    return sum(session.drops.values())


class Stage:
    """Sessions at one point of their life, rebuilt when an input moved them on."""

    port = 4500

    def __init__(self) -> None:
        self.used = 0
        self.sessions: list[IkeSession] = []
        self.now = T0
        self.rebuild()

    def rebuild(self) -> None:
        self.used = 0
        self.sessions = self.build()
        self.drain()
        self.state = [s.state for s in self.sessions]
        self.spis = [s.local_spi for s in self.sessions]

    def build(self) -> list[IkeSession]:
        raise NotImplementedError

    def receiver(self, flags: int) -> IkeSession:
        return self.sessions[0]

    def drain(self) -> bool:
        """Events and datagrams out; whatever is sent must be an IKE message."""
        active = False
        for session in self.sessions:
            while session.next_event() is not None:
                active = True
            for data, _src, _dst in session.datagrams_to_send():
                parse_header(data)
                active = True
        return active

    def moved_on(self, active: bool) -> bool:
        """Whether the stage must be rebuilt after an input."""
        return (
            active
            or [s.state for s in self.sessions] != self.state
            or [s.local_spi for s in self.sessions] != self.spis
        )

    def deliver(self, data: bytes) -> bool:
        flags, datagram = data[0], data[1:]
        if flags & MARKER:
            datagram = NON_ESP_MARKER + datagram
        session = self.receiver(flags)
        src: Address = (HOST_R if session.is_initiator else HOST_I, self.port)
        dst: Address = (HOST_I if session.is_initiator else HOST_R, self.port)
        before = drops(session)
        session.receive_datagram(datagram, src, dst, self.now)
        dropped = drops(session) > before
        self.used += 1
        if self.moved_on(self.drain()) or self.used >= REBUILD_EVERY:
            self.rebuild()
        return not dropped


class InitResponder(Stage):
    """A responder session just created for an IKE_SA_INIT request."""

    port = 500

    def build(self) -> list[IkeSession]:
        _i, r = config_pair()
        entropy = DeterministicEntropy("fuzz-init-r")
        return [IkeSession.responder(r, entropy, T0, (HOST_R, 500), (HOST_I, 500))]


def _first(sender: str, exchange: int) -> Datagram:
    return next(d for d in reference_pair_wire() if d.sender == sender and d.exchange == exchange)


class AuthResponder(Stage):
    """The reference responder after IKE_SA_INIT: waits for IKE_AUTH (half-open)."""

    def build(self) -> list[IkeSession]:
        _i, r = config_pair()
        entropy = DeterministicEntropy("responder-0")  # SessionPair's: the reference keys
        session = IkeSession.responder(r, entropy, T0, (HOST_R, 500), (HOST_I, 500))
        request = _first("i", ExchangeType.IKE_SA_INIT).data
        session.receive_datagram(request, (HOST_I, 500), (HOST_R, 500), T0)
        assert session.state is IkeState.AUTH_WAIT
        return [session]


class AuthInitiator(Stage):
    """The reference initiator after IKE_SA_INIT: waits for the IKE_AUTH response."""

    def build(self) -> list[IkeSession]:
        i, _r = config_pair()
        entropy = DeterministicEntropy("initiator-0")
        session = IkeSession.initiator(i, entropy, T0, (HOST_I, 500), (HOST_R, 500))
        session.initiate(T0)
        session.datagrams_to_send()
        response = _first("r", ExchangeType.IKE_SA_INIT).data
        session.receive_datagram(response, (HOST_R, 500), (HOST_I, 500), T0)
        assert session.state is IkeState.AUTH_SENT
        return [session]


class Established(Stage):
    """The reference pair, established (the receiver by bit 1 of the flags)."""

    def build(self) -> list[IkeSession]:
        pair = SessionPair(*config_pair())
        pair.start()
        pair.run(until=T0 + 1)
        assert pair.established()
        self.now = pair.now
        return [pair.responder, pair.initiator]

    def receiver(self, flags: int) -> IkeSession:
        return self.sessions[1 if flags & TO_INITIATOR else 0]

    def moved_on(self, active: bool) -> bool:
        # Answers are expected here; only a change of state or SPIs is a new stage.
        return super().moved_on(False)


def _retarget(rng: random.Random, plain: bytearray, session: IkeSession) -> bytearray:
    """SPIs and (half the time) the message ID the receiving session expects."""
    if len(plain) < IKE_HEADER_LEN:
        return plain
    if rng.random() < 0.8:
        plain[0:16] = session.spi_i + session.spi_r
    if rng.random() < 0.5:
        tm = session._tm
        if plain[19] & 0x20:  # a response: to our request in flight, if any
            if tm.in_flight is not None:
                plain[20:24] = tm.in_flight.message_id.to_bytes(4, "big")
        else:
            plain[20:24] = tm.expected_request_id.to_bytes(4, "big")
    return plain


def session_target(name: str, stage_class: Callable[[], Stage], senders: str) -> Target:
    """``senders``: whose reference datagrams the stage receives ("i", "r" or both)."""
    stage = stage_class()
    wire = [d for d in reference_pair_wire() if d.sender in senders]
    extra = initiator_first_messages() if "i" in senders else []

    def flags_of(d: Datagram) -> int:
        return TO_INITIATOR if d.sender == "r" else 0

    sealed = [(flags_of(d), d.data) for d in wire] + [(0, m) for m in extra]
    plain = [(flags_of(d), d.plain) for d in wire if d.plain is not None]
    sealed_corpus = [data for _f, data in sealed]
    plain_corpus = [p for _f, p in plain]

    def generate(rng: random.Random) -> bytes:
        if plain and rng.random() < 0.5:
            flags, base = rng.choice(plain)
            session = stage.receiver(flags)
            data = _retarget(rng, mutate(rng, plain_corpus, base), session)
            cipher = session._ctx.cipher_in
            out = seal(data, cipher, rng.random() < 0.9) if cipher is not None else bytes(data)
        else:
            flags, base = rng.choice(sealed)
            data = mutate(rng, sealed_corpus, base)
            if len(data) >= IKE_HEADER_LEN and rng.random() < 0.5:
                data[24:28] = len(data).to_bytes(4, "big")
            out = bytes(data)
        if rng.random() < 0.1:
            flags |= MARKER
        return bytes([flags]) + out

    return Target(
        name,
        [bytes([f]) + d for f, d in sealed],
        stage.deliver,
        (),
        generate=generate,
        reset=stage.rebuild,
        stateful=True,
    )


def _check_genuine(stage: Stage, sender: str, exchange: int, state: IkeState) -> None:
    """The harness is not vacuous: the genuine message takes the stage where it should."""
    d = _first(sender, exchange)
    session = stage.receiver(TO_INITIATOR if sender == "r" else 0)
    session.receive_datagram(d.data, (HOST_I, 4500), (HOST_R, 4500), stage.now)
    assert session.state is state, session.state
    stage.rebuild()


def init_responder_target() -> Target:
    return session_target("session_init_r", InitResponder, "i")


def auth_responder_target() -> Target:
    target = session_target("session_auth_r", AuthResponder, "i")
    _check_genuine(AuthResponder(), "i", ExchangeType.IKE_AUTH, IkeState.ESTABLISHED)
    return target


def auth_initiator_target() -> Target:
    target = session_target("session_auth_i", AuthInitiator, "r")
    _check_genuine(AuthInitiator(), "r", ExchangeType.IKE_AUTH, IkeState.ESTABLISHED)
    return target


def established_target() -> Target:
    return session_target("session_established", Established, "ir")


TARGETS = {
    "session_init_r": init_responder_target,
    "session_auth_r": auth_responder_target,
    "session_auth_i": auth_initiator_target,
    "session_established": established_target,
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    profile(name, TARGETS[name])


def test_an_ike_auth_request_with_a_malformed_certificate_is_refused() -> None:
    """Found by this profile: a CERT whose subject CN has an unknown string tag made
    cryptography raise KeyError in verify_chain, out of receive_datagram."""
    stage = AuthResponder()
    (session,) = stage.sessions
    plain = _first("i", ExchangeType.IKE_AUTH).plain
    assert plain is not None and session._ctx.cipher_in is not None
    subject = b"\x06\x03\x55\x04\x03\x0c\x10gw-i.example.org"
    assert plain.count(subject) == 1
    bad = plain.replace(subject, subject.replace(b"\x0c", b"\x49"))
    data = seal(bad, session._ctx.cipher_in, True)
    session.receive_datagram(data, (HOST_I, 4500), (HOST_R, 4500), stage.now)
    assert not session.established
