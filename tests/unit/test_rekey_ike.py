"""IKE SA rekeying (RFC 7296 §1.3.2, §2.8.2, §2.18, §2.25.2) on a virtual clock.

The exchanges, strongSwan style::

    CREATE_CHILD_SA { SA(IKE, new SPIi), Ni, KEi } -->          (on the old IKE SA)
                <-- { SA(IKE, new SPIr), Nr, KEr }
    INFORMATIONAL { D(IKE) } -->                              (old IKE SA, by the rekey initiator)
                <-- { }

The session lives on with the new IKE SA; Child SAs move without a single
Child SA event; the initiator of the rekey is the new SA's original initiator.
"""

from __future__ import annotations

import pytest
from sessionpair import T0, Link, Sent, SessionPair, assert_one_pair, config_pair, data_plane

from ike.constants import ExchangeType, NotifyType, ProtocolId
from ike.crypto import prf_plus
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaRekeyed
from ike.exchanges.context import PER_IKE_SA, decode_message
from ike.ikesa import IkeSa
from ike.payloads import DeletePayload, NoncePayload, SaPayload
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import Message

LIFETIME = 600.0  # ike_lifetime of these tests; Child SAs keep the default hour
CCSA, INFO = ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL
SEED_R_WINS, SEED_I_WINS = 0, 1


def established(seed: int = 0, link: Link | None = None, **common: object) -> SessionPair:
    i_cfg, r_cfg = config_pair(ike_lifetime=LIFETIME, **common)
    pair = SessionPair(i_cfg, r_cfg, link=link, seed=seed)
    pair.start()
    pair.run(until=T0 + 1)
    assert pair.established()
    return pair


def session(pair: SessionPair, side: str) -> IkeSession:
    return pair.initiator if side == "i" else pair.responder


def current(s: IkeSession) -> IkeSa:
    return s._sa  # read-only: the current IKE SA's context (keys for decrypting the wire)


class Tap:
    """Decrypts every datagram as it is sent, with the receiver's keys of the moment.

    (Old and redundant IKE SAs are gone by the time a test looks at the wire.)
    """

    def __init__(self, pair: SessionPair) -> None:
        self.pair = pair
        self.messages: dict[int, Message] = {}
        pair.link.rules.insert(0, self)

    def __call__(self, sent: Sent) -> None:
        receivers = self.pair.responders if sent.sender == "i" else [self.pair.initiator]
        for receiver in receivers:
            sa = receiver._core.sas.find(sent.header)  # read-only: which IKE SA, with its keys
            if sa is not None and sa.ctx.cipher_in is not None:
                self.messages[id(sent)] = decode_message(sa.ctx, sent.header, sent.data)

    def __getitem__(self, sent: Sent) -> Message:
        return self.messages[id(sent)]


def child_events(pair: SessionPair, side: str) -> list[object]:
    return [e for e in pair.events[side] if isinstance(e, ChildSaUp | ChildSaDown)]


def assert_one_ike_sa(pair: SessionPair) -> None:
    """Both sides hold exactly one IKE SA, the same one, and it carries traffic.

    First the clock runs past the linger of deleted SAs (they answer
    retransmitted DELETEs from their cache for the retransmission total, 41.3 s).
    """
    pair.run(until=pair.now + 45)
    i, r = pair.initiator, pair.responder
    assert len(i.local_spis) == 1 and len(r.local_spis) == 1
    assert (i.spi_i, i.spi_r) == (r.spi_i, r.spi_r)
    assert i.is_initiator != r.is_initiator
    assert i.state is r.state is IkeState.ESTABLISHED
    for side in "ir":
        assert not pair.of(side, IkeSaDown)
    keys_i, keys_r = current(i).ctx.keys, current(r).ctx.keys
    assert keys_i is not None and keys_r is not None
    assert (keys_i.sk_d, keys_i.sk_ei, keys_i.sk_er) == (keys_r.sk_d, keys_r.sk_ei, keys_r.sk_er)
    before = len(pair.wire)
    r.check_liveness(pair.now)  # INFORMATIONAL { } --> on the surviving SA, answered
    pair.run(until=pair.now + 5)
    assert [(s.sender, s.header.is_response) for s in pair.wire[before:]] == [
        ("r", False),
        ("i", True),
    ]


# -- when ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_ike_sa_rekey_starts_inside_the_jitter_window(seed: int) -> None:
    pair = established(seed)
    sas = {side: current(session(pair, side)) for side in "ir"}
    times = {}
    for side, sa in sas.items():
        assert sa.lifetime is not None
        created = sa.lifetime.created
        assert created + 0.9 * LIFETIME <= sa.lifetime.rekey_at <= created + LIFETIME
        assert sa.lifetime.expire_at == pytest.approx(created + 1.1 * LIFETIME)
        times[side] = sa.lifetime.rekey_at
    starter = min(times, key=times.__getitem__)
    before = len(pair.wire)
    pair.run(until=times[starter] - 1e-6)
    assert len(pair.wire) == before
    pair.run(until=times[starter] + 5)
    request = pair.wire[before]
    assert (request.sender, request.header.exchange_type, request.at) == (
        starter,
        CCSA,
        times[starter],
    )
    assert len(pair.of(starter, IkeSaRekeyed)) == 1
    assert_one_ike_sa(pair)


# -- how -------------------------------------------------------------------------------------


@pytest.mark.parametrize("starter", ["i", "r"])
def test_ike_sa_rekey_moves_the_child_sas_and_deletes_the_old_sa(starter: str) -> None:
    pair = established()
    other = "r" if starter == "i" else "i"
    s, o = session(pair, starter), session(pair, other)
    old_s_spi, old_o_spi = s.local_spi, o.local_spi
    old_keys = current(s).ctx.keys
    tap = Tap(pair)
    children_before = {side: child_events(pair, side) for side in "ir"}
    routed_at_response: list[tuple[bytes, ...]] = []
    pair.link.rules.append(
        lambda m: (
            routed_at_response.append(o.local_spis)
            if m.sender == other and m.header.exchange_type == CCSA
            else None
        )
    )
    before = len(pair.wire)
    assert s.rekey_ike(pair.now) and not s.rekey_ike(pair.now)
    pair.run(until=pair.now + 5)

    wire = pair.wire[before:]
    assert [(m.sender, m.header.exchange_type, m.header.is_response) for m in wire] == [
        (starter, CCSA, False),  # { SA(IKE, new SPIi), Ni, KEi } -->
        (other, CCSA, True),  # <-- { SA(IKE, new SPIr), Nr, KEr }
        (starter, INFO, False),  # { D(IKE) } --> on the old IKE SA
        (other, INFO, True),  # <-- { }
    ]
    request = tap[wire[0]]
    assert [type(p).__name__ for p in request.payloads] == [
        "SaPayload",
        "NoncePayload",
        "KePayload",
    ]
    (offer,) = request.find_all(SaPayload)[0].proposals
    assert offer.protocol == ProtocolId.IKE and len(offer.spi) == 8
    for m in wire[:3]:  # the rekey and the delete run on the old IKE SA
        assert {m.header.spi_i, m.header.spi_r} == {old_s_spi, old_o_spi}
    assert isinstance(tap[wire[2]].payloads[0], DeletePayload)

    (event_s,), (event_o,) = pair.of(starter, IkeSaRekeyed), pair.of(other, IkeSaRekeyed)
    assert (event_s.old_local_spi, event_o.old_local_spi) == (old_s_spi, old_o_spi)
    assert event_s.new_local_spi == s.local_spi == offer.spi == o.remote_spi
    assert event_o.new_local_spi == o.local_spi == s.remote_spi
    # §2.18: the rekey initiator is the new SA's original initiator (I flag, SPIi).
    assert s.is_initiator and not o.is_initiator and s.spi_i == offer.spi
    # The responder routes the new SPI before its answer leaves (the peer uses it at once).
    assert routed_at_response == [(old_o_spi, o.local_spi)]
    # Child SAs move: not one Child SA event; new keys for the IKE SA.
    assert {side: child_events(pair, side) for side in "ir"} == children_before
    assert current(s).ctx.keys is not None and current(s).ctx.keys != old_keys
    assert current(s).ctx.keys.sk_d != old_keys.sk_d  # type: ignore[union-attr]
    assert_one_ike_sa(pair)
    # The new IKE SA counts message IDs from 0 again (§2.2).
    assert [m.header.message_id for m in pair.wire[-2:]] == [0, 0]


def test_child_sa_rekeyed_after_an_ike_sa_rekey_uses_the_new_sk_d() -> None:
    """§2.17: KEYMAT comes from the SK_d of the IKE SA the CREATE_CHILD_SA ran on."""
    pair = established()
    pair.responder.rekey_ike(pair.now)
    pair.run(until=pair.now + 5)
    (child,) = pair.initiator.children
    before = len(pair.wire)
    tap = Tap(pair)
    pair.initiator.rekey_child(child.inbound_spi, pair.now)
    pair.run(until=pair.now + 5)
    request, response = (tap[m] for m in pair.wire[before : before + 2])
    ni = request.find_all(NoncePayload)[0].nonce
    nr = response.find_all(NoncePayload)[0].nonce
    ctx = current(pair.initiator).ctx
    assert ctx.prf is not None and ctx.keys is not None
    keymat = prf_plus(ctx.prf, ctx.keys.sk_d, ni + nr, 2 * (32 + 4))
    new_i, _ = assert_one_pair(pair)
    assert new_i.keys.outbound_key + new_i.keys.outbound_salt == keymat[:36]


def test_the_successor_context_keeps_the_peer_and_starts_the_ike_sa_afresh() -> None:
    pair = established()
    old = current(pair.initiator).ctx
    new = old.successor(is_initiator=False, spi_i=bytes(range(8)), spi_r=bytes(range(8, 16)))
    assert new.children is old.children and new.events is old.events  # Child SAs move
    kept = ("configs", "entropy", "remote_identity", "nat_t", "local_addr", "remote_addr")
    assert all(getattr(new, name) == getattr(old, name) for name in kept)
    assert (new.is_initiator, new.spi_i, new.spi_r) == (False, bytes(range(8)), bytes(range(8, 16)))
    assert new.keys is None and new.cipher_in is None and new.sk_iv_counter == 0
    assert new.nonce_i == new.nonce_r == b"" and {f for f in PER_IKE_SA if "nonce" in f}


# -- simultaneous IKE SA rekeys (§2.8.2) ----------------------------------------------------------


def both_rekey_ike(pair: SessionPair) -> None:
    assert pair.initiator.rekey_ike(pair.now)  # CREATE_CHILD_SA { SA(IKE), Ni, KEi } -->
    assert pair.responder.rekey_ike(pair.now)  # <-- CREATE_CHILD_SA { SA(IKE), Ni, KEi }


@pytest.mark.parametrize(("seed", "winner"), [(SEED_I_WINS, "i"), (SEED_R_WINS, "r")])
def test_simultaneous_ike_rekeys_keep_the_sa_without_the_lowest_nonce(
    seed: int, winner: str
) -> None:
    pair = established(seed)
    old_spis = {side: session(pair, side).local_spi for side in "ir"}
    before = len(pair.wire)
    tap = Tap(pair)
    both_rekey_ike(pair)
    pair.run(until=pair.now + 30)
    # Each answered the other: <-- { SA, Nr, KEr } both ways. Then the loser sends
    # { D(IKE) } --> on its own redundant new SA, the winner { D(IKE) } --> on the old one.
    requests = [m for m in pair.wire[before:] if m.header.exchange_type == CCSA]
    nonces = {}
    for side in "ir":
        other = "r" if side == "i" else "i"
        req = next(m for m in requests if m.sender == side and not m.header.is_response)
        rsp = next(m for m in requests if m.sender == other and m.header.is_response)
        nonces[side] = (
            tap[req].find_all(NoncePayload)[0].nonce,
            tap[rsp].find_all(NoncePayload)[0].nonce,
        )
    lowest = min(n for ns in nonces.values() for n in ns)
    loser = next(side for side, ns in nonces.items() if lowest in ns)
    assert loser != winner
    deletes = [
        (m.sender, {m.header.spi_i, m.header.spi_r} == set(old_spis.values()))
        for m in pair.wire[before:]
        if m.header.exchange_type == INFO and not m.header.is_response
        and any(d.protocol == ProtocolId.IKE for d in tap[m].find_all(DeletePayload))
    ]  # fmt: skip
    # The winner deletes the old IKE SA, the loser its own redundant new one; nobody else.
    assert sorted(deletes) == sorted([(winner, True), (loser, False)])
    assert_one_ike_sa(pair)
    assert session(pair, winner).is_initiator  # the survivor was made by the winner's rekey
    for side in "ir":
        (event,) = pair.of(side, IkeSaRekeyed)
        assert event.new_local_spi == session(pair, side).local_spi


def test_twenty_rounds_of_simultaneous_ike_rekeys_end_with_one_ike_sa() -> None:
    winners = {"i": 0, "r": 0}
    for seed in range(20):
        pair = established(seed)
        children = {side: child_events(pair, side) for side in "ir"}
        both_rekey_ike(pair)
        pair.run(until=pair.now + 30)
        assert_one_ike_sa(pair)
        assert {side: child_events(pair, side) for side in "ir"} == children  # moved, untouched
        for side in "ir":
            assert len(pair.of(side, IkeSaRekeyed)) == 1
        assert_one_pair(pair)
        winners["i" if pair.initiator.is_initiator else "r"] += 1
    assert winners["i"] >= 5 and winners["r"] >= 5


def _lose_first(kind: ExchangeType, response: bool, sender: str) -> object:
    left = [1]

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
        (CCSA, False, "i"),
        (CCSA, True, "r"),
        (CCSA, True, "i"),
        (INFO, False, "i"),
        (INFO, True, "r"),
    ],
)
def test_simultaneous_ike_rekeys_with_a_lost_message(
    seed: int, lost: tuple[ExchangeType, bool, str]
) -> None:
    link = Link()
    pair = established(seed, link)
    link.rules.append(_lose_first(*lost))  # type: ignore[arg-type]
    both_rekey_ike(pair)
    pair.run(until=pair.now + 200)
    assert_one_ike_sa(pair)
    assert_one_pair(pair)


@pytest.mark.parametrize(
    "lost", [(CCSA, False, "i"), (CCSA, True, "r"), (INFO, False, "i"), (INFO, True, "r")]
)
def test_a_lost_ike_rekey_message_is_retransmitted(lost: tuple[ExchangeType, bool, str]) -> None:
    link = Link()
    pair = established(link=link)
    link.rules.append(_lose_first(*lost))  # type: ignore[arg-type]
    pair.initiator.rekey_ike(pair.now)
    pair.run(until=pair.now + 200)
    assert_one_ike_sa(pair)
    assert pair.initiator.is_initiator  # i's rekey made the surviving SA
    for side in "ir":
        assert len(pair.of(side, IkeSaRekeyed)) == 1


# -- races (§2.25.2) and the hard lifetime ------------------------------------------------------


def test_ike_rekey_against_child_rekey_is_temporary_failure_both_ways_then_both_succeed() -> None:
    pair = established()
    before = len(pair.wire)
    tap = Tap(pair)
    (child,) = pair.initiator.children
    pair.initiator.rekey_child(child.inbound_spi, pair.now)  # CCSA { N(REKEY_SA), .. } -->
    pair.responder.rekey_ike(pair.now)  # <-- CCSA { SA(IKE), Ni, KEi }
    pair.run(until=pair.now + 60)
    refusals = [
        (m.sender, m.at)
        for m in pair.wire[before:]
        if m.header.exchange_type == CCSA
        and m.header.is_response
        and NotifyType.TEMPORARY_FAILURE in [n.notify_type for n in tap[m].notifies()]
    ]
    assert sorted(s for s, _ in refusals) == ["i", "r"]  # each refused the other's (§2.25.1/2)
    retries = [
        m for m in pair.wire[before:] if m.header.exchange_type == CCSA and not m.header.is_response
    ][2:]
    refused_at = max(at for _, at in refusals)
    assert retries and all(5.0 <= m.at - refused_at <= 15.0 + 0.1 for m in retries[:1])
    assert_one_ike_sa(pair)
    assert_one_pair(pair)
    assert len(pair.of("i", ChildSaUp)) == 2 and len(pair.of("i", IkeSaRekeyed)) == 1


def test_delete_against_ike_rekey_ends_both_sides_once() -> None:
    pair = established()
    pair.initiator.close(pair.now)  # INFORMATIONAL { D(IKE) } -->
    pair.responder.rekey_ike(
        pair.now
    )  # <-- CREATE_CHILD_SA { SA(IKE), Ni, KEi }: TEMPORARY_FAILURE
    pair.run(until=pair.now + 60)
    for side in "ir":
        assert len(pair.of(side, IkeSaDown)) == 1 and not pair.of(side, IkeSaRekeyed)
        assert not data_plane(pair.events[side])
    assert pair.initiator.finished


def test_hard_lifetime_ends_an_ike_sa_that_could_not_be_rekeyed() -> None:
    """The rekey requests are black-holed; at 1.1 x lifetime the IKE SA is deleted, once."""
    link = Link()
    link.rules.append(lambda m: 0 if m.header.exchange_type == CCSA else None)
    i_cfg, r_cfg = config_pair(ike_lifetime=30.0)
    pair = SessionPair(i_cfg, r_cfg, link=link)
    tap = Tap(pair)
    pair.start()
    pair.run(until=T0 + 1)
    hard = {}
    for side in "ir":
        lifetime = current(session(pair, side)).lifetime
        assert lifetime is not None
        hard[side] = lifetime.expire_at
    pair.run(until=max(hard.values()) + 5)
    reasons = {side: pair.of(side, IkeSaDown)[0].reason for side in "ir"}
    expired = [side for side in "ir" if reasons[side] == "IKE SA hard lifetime expired"]
    assert expired  # the first side to reach it; the other may hear its DELETE first
    for side in expired:  # one D(IKE), sent exactly at the hard lifetime, not retransmitted
        (delete,) = [m for m in pair.sent_by(side) if m.header.exchange_type == INFO]
        assert delete.at == hard[side] and tap[delete].find_all(DeletePayload)
    for side in "ir":
        (down,) = pair.of(side, IkeSaDown)
        assert reasons[side] in ("IKE SA hard lifetime expired", "deleted by peer")
        assert not down.peer_dead and not data_plane(pair.events[side])


def test_rekeyed_ike_sa_repr_and_status_hold_no_keys() -> None:
    pair = established()
    pair.initiator.rekey_ike(pair.now)
    pair.run(until=pair.now + 5)
    s = pair.initiator
    keys = current(s).ctx.keys
    assert keys is not None
    texts = [repr(s), str(s.status(pair.now)), repr(current(s)), repr(current(s).ctx)]
    texts += [repr(e) for side in "ir" for e in pair.events[side]]
    blob = "\n".join(texts)
    for secret in (keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr):
        assert secret.hex() not in blob and repr(secret)[2:-1] not in blob
    assert s.status(pair.now)["spi_i"] == s.spi_i.hex()


def test_a_queued_ike_rekey_is_dropped_when_the_peer_rekeys_first_and_the_new_sa_rekeys_later() -> (
    None
):
    pair = established()
    pair.initiator.check_liveness(pair.now)  # INFORMATIONAL { } --> occupies i's window
    assert pair.initiator.rekey_ike(pair.now)  # queued behind it
    assert pair.responder.rekey_ike(pair.now)  # <-- CREATE_CHILD_SA { SA(IKE), Nr, KEr } first
    before = len(pair.wire)
    pair.run(until=pair.now + 5)
    requests = [m.sender for m in pair.wire[before:] if m.header.exchange_type == CCSA]
    assert requests == ["r", "i"]  # r's rekey and i's answer; i's own was never sent
    assert not pair.initiator.is_initiator and not pair.initiator.rekeying
    # The new IKE SA is rekeyed again at its own soft lifetime (and on request).
    lifetime = current(pair.initiator).lifetime
    assert lifetime is not None
    pair.run(until=lifetime.expire_at)
    assert len(pair.of("i", IkeSaRekeyed)) == 2
    assert pair.initiator.rekey_ike(pair.now)
