"""Liveness (RFC 7296 §2.4): DPD on a virtual clock, notice_inbound, INITIAL_CONTACT.

INFORMATIONAL { } -->          (after dpd_delay without anything from the peer)
            <-- { }
"""

from __future__ import annotations

import pytest
from sessionpair import GW_I, T0, Link, SessionPair, config_pair, data_plane

from ike.constants import ExchangeType
from ike.events import ChildSaOutboundActive, ChildSaUp, IkeSaDown, IkeSaUp, InitialContact

DPD = 30.0
SCHEDULE = [0.0, 1.0, 2.8, 6.04, 11.872, 22.3696]  # initial 1 s, factor 1.8, 5 retransmissions
GIVE_UP = 41.26528
INFO = ExchangeType.INFORMATIONAL


def established(link: Link | None = None, **common: object) -> SessionPair:
    pair = SessionPair(*config_pair(**common), link=link)
    pair.start()
    pair.run(until=T0 + 1)
    assert pair.established()
    return pair


def informational_requests(pair: SessionPair, side: str, since: float = T0) -> list[float]:
    return [
        s.at
        for s in pair.sent_by(side)
        if s.header.exchange_type == INFO and not s.header.is_response and s.at >= since
    ]


def test_dpd_declares_a_black_holed_peer_dead_on_the_backoff_schedule() -> None:
    link = Link()
    pair = established(link, dpd_delay=DPD)
    link.rules.append(lambda s: 0)  # from now on the peer is gone, both ways
    pair.run(until=T0 + DPD + GIVE_UP + 5)
    # Each side last heard the other when IKE_AUTH completed: r at 0.03 (the
    # request, sent at 0.02), i at 0.04 (the response). DPD fires dpd_delay
    # later, then backs off.
    for side, heard in (("i", T0 + 0.04), ("r", T0 + 0.03)):
        sent = informational_requests(pair, side)
        assert [round(t - heard - DPD, 6) for t in sent] == pytest.approx(SCHEDULE)
        (down,) = pair.of(side, IkeSaDown)
        assert down.peer_dead and down.notify is None
        assert down.reason == "peer dead: no answer to a liveness check after 6 transmissions"
        assert not data_plane(pair.events[side])  # the Child SA went with it
    assert pair.initiator.finished and pair.initiator.next_deadline() is None


def test_answered_liveness_checks_keep_the_sa_and_recur() -> None:
    pair = established(dpd_delay=DPD)
    pair.run(until=T0 + 5 * DPD)
    checks = informational_requests(pair, "i") + informational_requests(pair, "r")
    assert len(checks) >= 4  # each check also counts as news for the side that answers it
    assert all(b - a >= DPD - 0.1 for a, b in zip(sorted(checks), sorted(checks)[1:], strict=False))
    assert not pair.of("i", IkeSaDown) and not pair.of("r", IkeSaDown)


def test_esp_from_the_peer_defers_liveness_checks() -> None:
    """The daemon reports authenticated ESP (notice_inbound): an active peer is never asked."""
    pair = established(dpd_delay=DPD, send_initial_contact=False)
    for _ in range(10):  # ESP every 10 s for 100 s, to both sides
        pair.run(until=pair.now + 10)
        for session in (pair.initiator, pair.responder):
            session.notice_inbound(pair.now)
    last_esp = pair.now
    assert informational_requests(pair, "i") == informational_requests(pair, "r") == []
    pair.run(until=last_esp + DPD + 1)
    first = min(informational_requests(pair, "i") + informational_requests(pair, "r"))
    assert first == pytest.approx(last_esp + DPD)


def test_no_liveness_checks_when_dpd_is_off() -> None:
    pair = established()  # dpd_delay = 0
    pair.run(until=T0 + 1000)
    assert informational_requests(pair, "i") == informational_requests(pair, "r") == []
    (child,) = pair.initiator.children
    lifetime = pair.initiator._sa.lifetime
    assert lifetime is not None
    assert pair.initiator.next_deadline() == min(child.lifetime.rekey_at, lifetime.rekey_at)


def test_any_unanswered_request_of_an_established_sa_means_peer_dead() -> None:
    link = Link()
    pair = established(link)
    link.rules.append(lambda s: 0)
    (child,) = pair.initiator.children
    pair.initiator.rekey_child(child.inbound_spi, pair.now)
    pair.run(until=pair.now + GIVE_UP + 1)
    down = pair.down("i")
    assert down.peer_dead
    assert down.reason == "peer dead: no answer to CREATE_CHILD_SA after 6 transmissions"


def test_an_unreachable_peer_before_establishment_is_not_peer_dead() -> None:
    link = Link()
    link.rules.append(lambda s: 0 if s.sender == "r" else None)
    pair = SessionPair(*config_pair(dpd_delay=DPD), link=link)
    pair.start()
    pair.run()
    assert not pair.down("i").peer_dead
    assert pair.down("i").reason.startswith("peer unreachable:")


# -- make-before-break: ESP on the new SA proves the peer installed it -----------------------


def test_esp_on_the_new_inbound_sa_activates_the_responder_outbound_at_once() -> None:
    link = Link()
    pair = established(link)
    held = [True]  # the rekey initiator's DELETE of the old SA is held up for 20 s
    link.delays.append(
        lambda s: 20.0 if held[0] and s.header.exchange_type == INFO and s.sender == "i" else None
    )
    (child,) = pair.initiator.children
    pair.initiator.rekey_child(child.inbound_spi, pair.now)
    pair.run(until=pair.now + 1)
    new_r = pair.of("r", ChildSaUp)[-1]
    assert not new_r.outbound_active and not pair.of("r", ChildSaOutboundActive)
    pair.responder.notice_inbound(pair.now, new_r.rekey_of)  # ESP on the old SA: nothing
    assert pair.responder.next_event() is None
    pair.responder.notice_inbound(pair.now, new_r.inbound_spi)  # ESP on the new one
    pair.flush()
    (active,) = pair.of("r", ChildSaOutboundActive)
    assert active.inbound_spi == new_r.inbound_spi
    pair.run(until=pair.now + 30)  # the DELETE arrives later: no second activation
    assert len(pair.of("r", ChildSaOutboundActive)) == 1
    assert [u.inbound_spi for u in (s.up for s in data_plane(pair.events["r"]).values())] == [
        new_r.inbound_spi
    ]


# -- INITIAL_CONTACT --------------------------------------------------------------------------


def test_initial_contact_is_reported_after_ike_sa_up() -> None:
    pair = established()
    kinds = [type(e) for e in pair.events["r"]]
    assert kinds[:3] == [IkeSaUp, InitialContact, ChildSaUp]
    (contact,) = pair.of("r", InitialContact)
    assert contact.remote_id == GW_I
    assert not pair.of("i", InitialContact)  # a responder never sends it


def test_no_initial_contact_event_without_the_notify() -> None:
    pair = established(send_initial_contact=False)
    assert not pair.of("r", InitialContact)


def test_an_unanswered_delete_of_our_own_is_not_peer_dead() -> None:
    """We were ending the IKE SA anyway (close): no dpd_action for its DELETE timing out."""
    link = Link()
    pair = established(link)
    link.rules.append(lambda s: 0)
    pair.initiator.close(pair.now)  # INFORMATIONAL { D(IKE) } --> into the void
    pair.run(until=pair.now + GIVE_UP + 1)
    down = pair.down("i")
    assert not down.peer_dead
    assert down.reason == "no answer to INFORMATIONAL after 6 transmissions while deleting"
