"""Child SA rekey collisions and races (RFC 7296 §2.8.1, §2.25), driven deterministically.

Both sessions start a rekey of the same Child SA at the same virtual instant.
Each answers the other's request as usual (§2.25.1), so four nonces are in
play; the new SA made by the exchange holding the lowest one is redundant
and deleted by its creator, who leaves the old SA to the other side::

    i: CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } -->   <-- r: same, own nonce
    r: <-- { SA, Nr, TSi, TSr }                               i: { SA, Nr, TSi, TSr } -->
    loser:  INFORMATIONAL { D(ESP, its redundant new SA) } -->
    winner: INFORMATIONAL { D(ESP, the old SA) } -->
    (each answered <-- { D(ESP, the other half) })

The DeterministicEntropy seeds below were picked so that each side wins once.
"""

from __future__ import annotations

import pytest
from sessionpair import T0, Link, Sent, SessionPair, assert_one_pair, config_pair, data_plane

from ike.constants import ExchangeType, NotifyType
from ike.events import ChildSaDown, ChildSaOutboundActive, ChildSaUp, IkeSaDown
from ike.exchanges.child_rekey import REDUNDANT
from ike.exchanges.context import ChildStatus, decode_message
from ike.payloads import NoncePayload
from ike.session import IkeSession
from ike.wire import Message

LIFETIME = 600.0
CCSA = ExchangeType.CREATE_CHILD_SA
SEED_I_WINS, SEED_R_WINS = 0, 3


def established(seed: int = 0, link: Link | None = None, **common: object) -> SessionPair:
    i_cfg, r_cfg = config_pair(child_lifetime=LIFETIME, **common)
    pair = SessionPair(i_cfg, r_cfg, link=link, seed=seed)
    pair.start()
    pair.run(until=T0 + 1)
    assert pair.established()
    return pair


def spi(session: IkeSession) -> int:
    (child,) = session.children
    return child.inbound_spi


def both_rekey(pair: SessionPair) -> None:
    """Both sides start rekeying the one Child SA at the same instant."""
    assert pair.initiator.rekey_child(spi(pair.initiator), pair.now)
    assert pair.responder.rekey_child(spi(pair.responder), pair.now)


def assert_only_the_survivor_was_activated(pair: SessionPair) -> None:
    """No side ever let the daemon send on an SA other than the one that survived."""
    survivors = {u.inbound_spi for u in assert_one_pair(pair)}
    for side in "ir":
        activated = {a.inbound_spi for a in pair.of(side, ChildSaOutboundActive)}
        assert activated <= survivors


def decrypted(pair: SessionPair, sent: Sent) -> Message:
    receiver = pair.responder if sent.sender == "i" else pair.initiator
    return decode_message(receiver._ctx, sent.header, sent.data)


def exchange_nonces(pair: SessionPair, initiator: str, since: int) -> tuple[bytes, bytes]:
    """Ni, Nr of the CREATE_CHILD_SA exchange ``initiator`` started (read off the wire)."""
    ccsa = [s for s in pair.wire[since:] if s.header.exchange_type == CCSA]
    request = next(s for s in ccsa if s.sender == initiator and not s.header.is_response)
    response = next(s for s in ccsa if s.sender != initiator and s.header.is_response)
    ni = decrypted(pair, request).find_all(NoncePayload)[0].nonce
    nr = decrypted(pair, response).find_all(NoncePayload)[0].nonce
    return ni, nr


@pytest.mark.parametrize(("seed", "winner"), [(SEED_I_WINS, "i"), (SEED_R_WINS, "r")])
def test_simultaneous_rekey_keeps_the_sa_without_the_lowest_nonce(seed: int, winner: str) -> None:
    pair = established(seed)
    old_i, old_r = spi(pair.initiator), spi(pair.responder)
    before = len(pair.wire)
    both_rekey(pair)  # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> from both sides
    pair.run(until=pair.now + 30)  # <-- { SA, Nr, TSi, TSr } both ways, then the deletes

    # §2.8.1, checked against the nonces as they were on the wire (octet by octet).
    nonces = {side: exchange_nonces(pair, side, before) for side in "ir"}
    lowest = min(n for pair_ in nonces.values() for n in pair_)
    loser = next(side for side, n in nonces.items() if lowest in n)
    assert loser != winner
    survivor_i, survivor_r = assert_one_pair(pair)
    (child_i,), (child_r,) = pair.initiator.children, pair.responder.children
    assert child_i.created_by_us is (winner == "i") and child_r.created_by_us is (winner == "r")
    assert (child_i.rekey_of, child_r.rekey_of) == (old_i, old_r)

    # The loser deleted its own redundant SA; the winner deleted the old one.
    reasons = {side: {d.inbound_spi: d.reason for d in pair.of(side, ChildSaDown)} for side in "ir"}
    old = {"i": old_i, "r": old_r}
    assert reasons[winner][old[winner]] == "rekeyed"
    assert reasons[loser][old[loser]] == "deleted by peer"
    assert REDUNDANT in reasons[loser].values()
    assert len(reasons["i"]) == len(reasons["r"]) == 2  # the old SA and the redundant one
    # The redundant SA never sent a packet: installed inactive, never activated.
    for side in "ir":
        ups = {u.inbound_spi: u for u in pair.of(side, ChildSaUp)}
        activated = {a.inbound_spi for a in pair.of(side, ChildSaOutboundActive)}
        redundant = next(s for s, r in reasons[side].items() if s != old[side])
        assert not ups[redundant].outbound_active and redundant not in activated
    # The winner's SA: its creator sends at once; the other side once the old SA is gone.
    survivor_other = survivor_r if winner == "i" else survivor_i
    assert not survivor_other.outbound_active
    assert survivor_other.inbound_spi in {
        a.inbound_spi for a in pair.of(loser, ChildSaOutboundActive)
    }


def test_one_hundred_rounds_of_simultaneous_rekeys_end_with_one_pair() -> None:
    winners = {"i": 0, "r": 0}
    for seed in range(100):
        pair = established(seed)
        both_rekey(pair)
        pair.run(until=pair.now + 30)
        assert_only_the_survivor_was_activated(pair)
        for side in "ir":
            assert len(pair.of(side, ChildSaUp)) == 3  # first, ours, theirs
            assert not pair.of(side, IkeSaDown)
        (child,) = pair.initiator.children
        assert child.status is ChildStatus.INSTALLED and not pair.initiator.rekeying
        winners["i" if child.created_by_us else "r"] += 1
    assert winners["i"] >= 30 and winners["r"] >= 30  # nonces are random: both sides win


def _lose(kind: ExchangeType, response: bool, sender: str, times: int = 1) -> object:
    left = [times]

    def rule(sent: Sent) -> int | None:
        match = (sent.header.exchange_type, sent.header.is_response, sent.sender)
        if match == (kind, response, sender) and left[0]:
            left[0] -= 1
            return 0
        return None

    return rule


@pytest.mark.parametrize("seed", [SEED_I_WINS, SEED_R_WINS])
@pytest.mark.parametrize(
    "lost",
    [
        (CCSA, False, "i"),  # i's request: r answers it only after its own exchange completed
        (CCSA, True, "r"),  # r's answer to i: i learns of the collision late
        (CCSA, True, "i"),  # i's answer to r
        (ExchangeType.INFORMATIONAL, False, "i"),  # a DELETE of i
        (ExchangeType.INFORMATIONAL, False, "r"),  # a DELETE of r
    ],
)
def test_simultaneous_rekey_with_a_lost_message_still_ends_with_one_pair(
    seed: int, lost: tuple[ExchangeType, bool, str]
) -> None:
    link = Link()
    pair = established(seed, link)
    link.rules.append(_lose(*lost))  # type: ignore[arg-type]
    both_rekey(pair)
    pair.run(until=pair.now + 60)
    assert_only_the_survivor_was_activated(pair)
    for side in "ir":
        assert not pair.of(side, IkeSaDown)
        assert [c.status for c in (pair.initiator, pair.responder)[side == "r"].children] == [
            ChildStatus.INSTALLED
        ]


@pytest.mark.parametrize("seed", range(30))
def test_simultaneous_rekey_on_a_lossy_duplicating_link(seed: int) -> None:
    link = Link(seed)
    pair = established(seed, link)
    link.loss, link.dup = 0.15, 0.15
    both_rekey(pair)
    pair.run(until=pair.now + 120)
    link.loss = link.dup = 0.0
    pair.run(until=pair.now + 60)
    downs = pair.of("i", IkeSaDown) + pair.of("r", IkeSaDown)
    if not downs:
        assert_only_the_survivor_was_activated(pair)
        return
    # Bad luck (seed 6): six answers in a row lost, the IKE SA gave up; nothing may dangle.
    assert all(d.peer_dead and d.reason.startswith("peer dead:") for d in downs)
    for side in "ir":
        if pair.of(side, IkeSaDown):
            assert not data_plane(pair.events[side])


def test_a_queued_rekey_is_dropped_when_the_peer_rekeys_first() -> None:
    """Our rekey waits behind a liveness check; the peer's rekey of the same SA comes first."""
    pair = established()
    pair.initiator.check_liveness(pair.now)  # INFORMATIONAL { } --> occupies i's window
    pair.initiator.rekey_child(spi(pair.initiator), pair.now)  # queued behind it
    pair.responder.rekey_child(spi(pair.responder), pair.now)  # arrives while i's is queued
    before = len(pair.wire)
    pair.run(until=pair.now + 30)
    requests = [s.sender for s in pair.wire[before:] if s.header.exchange_type == CCSA]
    assert requests == ["r", "i"]  # r's request and i's answer: i never sent its own
    _i, r_side = assert_one_pair(pair)
    assert pair.responder.children[0].created_by_us and r_side.outbound_active


# -- rekey against delete (§2.25.1) and against a forgotten SA (§2.25) -------------------------


def test_rekey_against_delete_is_temporary_failure_and_the_sa_is_gone() -> None:
    """r deletes the Child SA while i rekeys it; i's rekey is answered TEMPORARY_FAILURE."""
    pair = established()
    before = len(pair.wire)
    pair.initiator.rekey_child(
        spi(pair.initiator), pair.now
    )  # CREATE_CHILD_SA { N(REKEY_SA).. } -->
    pair.responder.delete_child(spi(pair.responder), pair.now)  # <-- INFORMATIONAL { D(ESP) }
    pair.run(until=pair.now + 60)
    answers = [
        n.notify_type
        for s in pair.wire[before:]
        if s.header.exchange_type == CCSA and s.header.is_response
        for n in decrypted(pair, s).notifies()
    ]
    assert answers == [NotifyType.TEMPORARY_FAILURE]  # <-- { N(TEMPORARY_FAILURE) }
    for side in "ir":
        assert not data_plane(pair.events[side]) and len(pair.of(side, ChildSaUp)) == 1
        assert not pair.of(side, IkeSaDown)
    # Nothing left to rekey: no retry is scheduled (the next deadline is the IKE SA's).
    lifetime = pair.initiator._sa.lifetime
    assert lifetime is not None and pair.initiator.next_deadline() == lifetime.rekey_at


def test_child_sa_not_found_deletes_silently_and_creates_the_sa_again() -> None:
    """r forgot the SA (hard lifetime, its DELETE held up); i's rekey gets CHILD_SA_NOT_FOUND.

    r: child_lifetime 50 s, its rekeys never reach i in time; i: 60 s, no jitter.
    """
    i_cfg, r_cfg = config_pair(child_lifetime=60.0, rekey_jitter=0.0)
    r_cfg = type(r_cfg)(**{**r_cfg.__dict__, "child_lifetime": 50.0})
    link = Link()
    link.rules.append(_lose(CCSA, False, "r", times=4))  # r's rekey request: 50, 51, 52.8, 56.04
    pair = SessionPair(i_cfg, r_cfg, link=link)
    pair.start()
    pair.run(until=T0 + 1)
    old_i = spi(pair.initiator)
    pair.run(until=T0 + 100)
    # 55.0: r's SA reaches its hard lifetime: ChildSaDown, DELETE queued behind its rekey.
    (down_r,) = [d for d in pair.of("r", ChildSaDown) if d.reason == "hard lifetime expired"]
    # 60.03: i rekeys: CREATE_CHILD_SA { N(REKEY_SA, old), SA, Ni, TSi, TSr } -->
    #        <-- { N(CHILD_SA_NOT_FOUND, the SPI from REKEY_SA) }
    refusal = next(
        decrypted(pair, s)
        for s in pair.sent_by("r")
        if s.header.exchange_type == CCSA and s.header.is_response
    )
    (n,) = refusal.notifies()
    assert n.notify_type == NotifyType.CHILD_SA_NOT_FOUND and n.spi == down_r.outbound_spi.to_bytes(
        4, "big"
    )
    # i forgets the SA silently, then CREATE_CHILD_SA { SA, Ni, TSi, TSr } --> (no REKEY_SA)
    downs_i = {d.inbound_spi: d.reason for d in pair.of("i", ChildSaDown)}
    assert "CHILD_SA_NOT_FOUND" in downs_i[old_i]
    new_i, _new_r = assert_one_pair(pair)
    assert new_i.rekey_of is None and new_i.outbound_active
    assert not pair.of("i", IkeSaDown) and not pair.of("r", IkeSaDown)
