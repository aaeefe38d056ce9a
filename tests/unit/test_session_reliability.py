"""IkeSession reliability (RFC 7296 §2.1-§2.3): loss, duplication, retransmission, windows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessionpair import ADDR_I, ADDR_R, T0, Link, Sent, SessionPair, config_pair

from ike.constants import ExchangeType, NotifyType
from ike.entropy import DeterministicEntropy
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp
from ike.exchanges.context import decode_message, encode_message
from ike.policy import HALF_OPEN_TIMEOUT, RetransmitPolicy
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import parse_header, parse_message

SCHEDULE = [0.0, 1.0, 2.8, 6.04, 11.872, 22.3696]  # initial 1 s, factor 1.8, 5 retransmissions
GIVE_UP = 41.26528  # the last wait is 1.8**5 = 18.89568 s
# IKE_SA_INIT waits at most 3 s between copies (RetransmitPolicy.init_max_timeout)
INIT_SCHEDULE = [0.0, 1.0, 2.8, 5.8, 8.8, 11.8]
INIT_GIVE_UP = 14.8


def drop_when(predicate: object, times: int = 1_000_000) -> object:
    """A link rule that loses the first ``times`` datagrams matching ``predicate``."""
    left = [times]

    def rule(sent: Sent) -> int | None:
        if left[0] > 0 and predicate(sent):  # type: ignore[operator]
            left[0] -= 1
            return 0
        return None

    return rule


def is_response(exchange: ExchangeType) -> object:
    return lambda s: s.sender == "r" and s.header.exchange_type == exchange


def test_default_policy_schedule() -> None:
    policy = RetransmitPolicy()
    assert [round(policy.timeout(n), 6) for n in range(6)] == [
        1.0,
        1.8,
        3.24,
        5.832,
        10.4976,
        18.89568,
    ]
    assert policy.total == pytest.approx(GIVE_UP)
    assert [policy.timeout(n, init=True) for n in range(6)] == pytest.approx(
        [1.0, 1.8, 3.0, 3.0, 3.0, 3.0]
    )
    assert policy.init_total == pytest.approx(INIT_GIVE_UP)


def test_retransmissions_follow_the_backoff_then_the_peer_is_unreachable() -> None:
    link = Link()
    link.rules.append(lambda s: 0 if s.sender == "r" else None)  # every response is lost
    pair = SessionPair(*config_pair(), link=link)
    pair.start()
    pair.run(until=T0 + INIT_GIVE_UP - 0.01)
    assert not pair.initiator.finished  # still waiting for the last copy's answer
    pair.run(until=T0 + INIT_GIVE_UP + 0.01)
    assert pair.initiator.finished
    pair.run()

    sent = pair.sent_by("i")
    assert [s.at - T0 for s in sent] == pytest.approx(INIT_SCHEDULE)
    assert len({s.data for s in sent}) == 1  # §2.1: the very same bytes every time
    down = pair.down("i")
    assert down.reason == "peer unreachable: no response to IKE_SA_INIT after 6 transmissions"
    assert pair.initiator.finished and pair.initiator.next_deadline() is None

    # The responder answered each copy from its cache: one session, identical answers.
    assert len(pair.responders) == 1
    answers = pair.sent_by("r")
    assert len(answers) == 6 and len({a.data for a in answers}) == 1
    # ... and gave up on the half-open SA itself.
    assert pair.down("r").reason == "half-open IKE SA timed out"


def test_next_deadline_is_the_retransmission_time() -> None:
    i_cfg, _ = config_pair()
    session = IkeSession.initiator(i_cfg, DeterministicEntropy(3), T0, ADDR_I, ADDR_R)
    assert session.next_deadline() is None
    session.initiate(T0)
    assert len(session.datagrams_to_send()) == 1
    assert session.next_deadline() == pytest.approx(T0 + 1.0)
    session.handle_timer(T0 + 0.5)  # early: nothing happens
    assert session.datagrams_to_send() == []
    session.handle_timer(T0 + 1.0)
    assert len(session.datagrams_to_send()) == 1
    assert session.next_deadline() == pytest.approx(T0 + 2.8)


def test_a_retransmitted_ike_sa_init_does_not_create_a_second_responder() -> None:
    link = Link()
    link.rules.append(drop_when(is_response(ExchangeType.IKE_SA_INIT), times=1))
    pair = SessionPair(*config_pair(), link=link)
    pair.start()
    pair.run()
    assert pair.established()
    assert len(pair.responders) == 1
    init_answers = [
        s for s in pair.sent_by("r") if s.header.exchange_type == ExchangeType.IKE_SA_INIT
    ]
    assert len(init_answers) == 2 and init_answers[0].data == init_answers[1].data


def test_cached_ike_auth_response_is_byte_identical() -> None:
    link = Link()
    link.rules.append(drop_when(is_response(ExchangeType.IKE_AUTH), times=2))
    pair = SessionPair(*config_pair(), link=link)
    pair.start()
    pair.run()
    requests = [s for s in pair.sent_by("i") if s.header.exchange_type == ExchangeType.IKE_AUTH]
    answers = [s for s in pair.sent_by("r") if s.header.exchange_type == ExchangeType.IKE_AUTH]
    assert [s.at - T0 for s in requests] == pytest.approx([0.02, 1.02, 2.82])
    assert len({r.data for r in requests}) == 1
    assert len(answers) == 3 and len({a.data for a in answers}) == 1
    # Processed once: one IkeSaUp and one ChildSaUp on the responder.
    assert len(pair.of("r", IkeSaUp)) == 1 and len(pair.of("r", ChildSaUp)) == 1
    assert pair.established()


@pytest.mark.parametrize("seed", range(12))
def test_lossy_duplicating_link_still_establishes(seed: int) -> None:
    pair = SessionPair(*config_pair(), link=Link(seed, loss=0.3, dup=0.3), seed=seed)
    pair.start()
    pair.run_until(pair.established, limit=120)
    pair.run(until=pair.now + 60)
    assert len(pair.of("i", ChildSaUp)) == 1 and len(pair.of("r", ChildSaUp)) == 1
    i, r = pair.child_up("i"), pair.child_up("r")
    assert i.keys.outbound_key == r.keys.inbound_key and i.keys.inbound_key == r.keys.outbound_key
    assert len(pair.responders) == 1
    # Every answer the responder sent for one message ID is the same bytes (§2.1).
    by_id: dict[int, set[bytes]] = {}
    for s in pair.sent_by("r"):
        by_id.setdefault(s.header.message_id, set()).add(s.data)
    assert all(len(v) == 1 for v in by_id.values())
    assert pair.initiator.state is pair.responder.state is IkeState.ESTABLISHED
    assert not pair.of("i", IkeSaDown) and not pair.of("r", IkeSaDown)


def test_half_open_responder_expires() -> None:
    link = Link()
    link.rules.append(lambda s: 0 if s.header.exchange_type == ExchangeType.IKE_AUTH else None)
    pair = SessionPair(*config_pair(), link=link)
    pair.start()
    pair.run(until=T0 + 0.01 + HALF_OPEN_TIMEOUT - 0.001)
    assert not pair.of("r", IkeSaDown)
    pair.run(until=T0 + 0.01 + HALF_OPEN_TIMEOUT)
    assert pair.down("r").reason == "half-open IKE SA timed out"
    assert pair.responder.finished


# -- message-ID windows ------------------------------------------------------------------


def established_pair() -> SessionPair:
    pair = SessionPair(*config_pair())
    pair.start()
    pair.run()
    assert pair.established()
    return pair


def test_old_and_unknown_messages_are_dropped() -> None:
    pair = established_pair()
    i_sent, r_sent = pair.sent_by("i"), pair.sent_by("r")
    events_before = (len(pair.events["i"]), len(pair.events["r"]))
    wire_before = len(pair.wire)

    # A stale response (IKE_AUTH, message ID 1) when nothing is in flight.
    pair.initiator.receive_datagram(r_sent[1].data, r_sent[1].src, r_sent[1].dst, pair.now)
    # A stale IKE_SA_INIT request (ID 0) to an established responder: out of window.
    pair.responder.receive_datagram(i_sent[0].data, i_sent[0].src, i_sent[0].dst, pair.now)
    # A request far ahead of the window (ID 5, properly encrypted).
    ahead = encode_message(pair.initiator._ctx, ExchangeType.INFORMATIONAL, 5, [], False)
    pair.responder.receive_datagram(ahead, i_sent[1].src, i_sent[1].dst, pair.now)
    # A response sent to the responder, which never has anything in flight here.
    pair.responder.receive_datagram(r_sent[1].data, i_sent[1].src, i_sent[1].dst, pair.now)
    pair.run()

    assert len(pair.wire) == wire_before  # nothing answered
    assert (len(pair.events["i"]), len(pair.events["r"])) == events_before
    assert sum(pair.initiator.drops.values()) == 1
    assert sum(pair.responder.drops.values()) == 3


def test_a_retransmitted_ike_auth_after_establishment_gets_the_cached_answer() -> None:
    pair = established_pair()
    request, answer = pair.sent_by("i")[1], pair.sent_by("r")[1]
    pair.responder.receive_datagram(request.data, request.src, request.dst, pair.now)
    ((data, src, dst),) = pair.responder.datagrams_to_send()
    assert data == answer.data and (src, dst) == (request.dst, request.src)
    assert pair.responder.next_event() is None


def test_a_forged_request_is_dropped_silently() -> None:
    pair = established_pair()
    genuine = encode_message(pair.initiator._ctx, ExchangeType.INFORMATIONAL, 2, [], False)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    pair.responder.receive_datagram(forged, ADDR_I, ADDR_R, pair.now)
    assert pair.responder.datagrams_to_send() == []
    assert pair.responder.drops
    # The window did not move: the genuine message with the same ID is answered.
    pair.responder.receive_datagram(genuine, (ADDR_I[0], 4500), (ADDR_R[0], 4500), pair.now)
    assert len(pair.responder.datagrams_to_send()) == 1


def test_an_unexpected_exchange_is_answered_invalid_syntax() -> None:
    pair = established_pair()
    again = encode_message(pair.initiator._ctx, ExchangeType.IKE_AUTH, 2, [], False)
    pair.responder.receive_datagram(again, (ADDR_I[0], 4500), (ADDR_R[0], 4500), pair.now)
    ((data, _src, _dst),) = pair.responder.datagrams_to_send()
    answer = decode_message(pair.initiator._ctx, parse_header(data), data)
    assert [n.notify_type for n in answer.notifies()] == [NotifyType.INVALID_SYNTAX]
    assert pair.responder.state is IkeState.ESTABLISHED


def test_an_empty_create_child_sa_is_refused_without_harm() -> None:
    """CREATE_CHILD_SA without SA, Nonce or TS payloads: INVALID_SYNTAX, nothing changes."""
    pair = established_pair()
    request = encode_message(pair.initiator._ctx, ExchangeType.CREATE_CHILD_SA, 2, [], False)
    pair.responder.receive_datagram(request, (ADDR_I[0], 4500), (ADDR_R[0], 4500), pair.now)
    ((data, _src, _dst),) = pair.responder.datagrams_to_send()
    answer = decode_message(pair.initiator._ctx, parse_header(data), data)
    assert [n.notify_type for n in answer.notifies()] == [NotifyType.INVALID_SYNTAX]
    assert pair.responder.state is IkeState.ESTABLISHED
    assert pair.responder.next_event() is None
    assert len(pair.responder.children) == 1


# -- property: whatever the link does, the sessions stay consistent -----------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    loss=st.floats(0.0, 0.6),
    dup=st.floats(0.0, 0.5),
    close_at=st.one_of(st.none(), st.floats(0.0, 20.0)),
    closer=st.sampled_from("ir"),
)
def test_any_link_behaviour_keeps_the_sessions_consistent(
    seed: int, loss: float, dup: float, close_at: float | None, closer: str
) -> None:
    pair = SessionPair(*config_pair(), link=Link(seed, loss=loss, dup=dup), seed=seed)
    pair.start()
    if close_at is not None:
        pair.run(until=T0 + close_at)
        sessions = [pair.initiator] if closer == "i" else pair.live_responders()
        for session in sessions:
            session.close(pair.now)
    pair.run(until=T0 + 400)
    for session in [pair.initiator, *pair.responders]:
        events = pair.events_of.get(id(session), [])
        downs = [e for e in events if isinstance(e, IkeSaDown)]
        # Invariant 5: one IkeSaDown at most, last, after a ChildSaDown per ChildSaUp.
        assert len(downs) <= 1 and (not downs or events[-1] is downs[0])
        ups = {e.inbound_spi for e in events if isinstance(e, ChildSaUp)}
        if downs:
            assert ups == {e.inbound_spi for e in events if isinstance(e, ChildSaDown)}
            assert session.state is IkeState.CLOSED
        # Invariant 6: IkeSaUp before any ChildSaUp.
        kinds = [type(e) for e in events]
        if ChildSaUp in kinds:
            assert kinds.index(IkeSaUp) < kinds.index(ChildSaUp)
    for side in "ir":
        assert len(pair.of(side, ChildSaUp)) <= 1
    if pair.established():
        i, r = pair.child_up("i"), pair.child_up("r")
        assert i.keys.outbound_key == r.keys.inbound_key
    for session in [pair.initiator, *pair.responders]:
        assert session.finished or session.state in (IkeState.ESTABLISHED, IkeState.CLOSED)


def test_unauthenticated_messages_do_not_move_a_half_open_window() -> None:
    """A forged IKE_AUTH and a late IKE_SA_INIT (ID 1) must not consume message ID 1."""
    link = Link()
    link.rules.append(lambda s: 0 if s.header.exchange_type == ExchangeType.IKE_AUTH else None)
    pair = SessionPair(*config_pair(), link=link)
    pair.start()
    pair.run(until=T0 + 0.5)  # IKE_SA_INIT done, the IKE_AUTH request lost
    responder = pair.responder
    assert responder.state is IkeState.AUTH_WAIT
    genuine = pair.sent_by("i")[-1]
    assert genuine.header.exchange_type == ExchangeType.IKE_AUTH
    forged = genuine.data[:-1] + bytes([genuine.data[-1] ^ 0x80])
    responder.receive_datagram(forged, genuine.src, genuine.dst, pair.now)
    init = parse_message(pair.sent_by("i")[0].data)
    init.message_id = 1
    responder.receive_datagram(init.build(), ADDR_I, ADDR_R, pair.now)
    assert responder.datagrams_to_send() == []
    assert responder.state is IkeState.AUTH_WAIT
    link.rules.clear()
    pair.run()
    assert pair.established()  # the retransmitted genuine IKE_AUTH still gets through
