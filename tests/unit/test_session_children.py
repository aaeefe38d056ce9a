"""Several configured Child SAs in one IKE session (ike.sessionconfig.ChildConfig).

IKE_AUTH carries the first child; ``keep_children`` makes the IKE SA's
initiator create the others with CREATE_CHILD_SA at once (the responder only
after a grace); the responder picks the configured child whose selectors the
proposal fits; every Child SA keeps its child's proposals and lifetime.
"""

from __future__ import annotations

import ipaddress
import itertools

from sessionpair import T0, Link, Sent, SessionPair, config_pair, with_

from ike.constants import ExchangeType, NotifyType
from ike.events import ChildSaDown, ChildSaUp
from ike.policy import CHILD_CREATE_RETRY, CHILD_START_GRACE
from ike.proposals import parse_esp_proposal
from ike.sessionconfig import ChildConfig

N = ipaddress.ip_network
GCM, CHACHA = parse_esp_proposal("aes256gcm16"), parse_esp_proposal("chacha20poly1305")


def children(side_i: bool, high_lifetime: float = 600.0) -> tuple[ChildConfig, ...]:
    """ "low" and "high": the halves of 198.51.100.0/24 (i) and 203.0.113.0/24 (r)."""
    i_low, i_high, r_low, r_high = (
        N("198.51.100.0/25"), N("198.51.100.128/25"), N("203.0.113.0/25"), N("203.0.113.128/25"),
    )  # fmt: skip
    low = (i_low, r_low) if side_i else (r_low, i_low)
    high = (i_high, r_high) if side_i else (r_high, i_high)
    return (
        ChildConfig("low", (low[0],), (low[1],), (GCM,)),
        ChildConfig("high", (high[0],), (high[1],), (CHACHA,), high_lifetime),
    )


def make_pair(
    *, keep_i: bool = True, keep_r: bool = False, r_children: tuple[ChildConfig, ...] | None = None
) -> SessionPair:
    i, r = config_pair()
    i = with_(i, children=children(True), keep_children=keep_i)
    r = with_(
        r, children=children(False) if r_children is None else r_children, keep_children=keep_r
    )
    pair = SessionPair(i, r)
    pair.start()
    return pair


def ups(pair: SessionPair, side: str) -> dict[str, list[ChildSaUp]]:
    out: dict[str, list[ChildSaUp]] = {}
    for event in pair.of(side, ChildSaUp):
        out.setdefault(event.child, []).append(event)
    return out


def create_child_requests(pair: SessionPair, side: str) -> list[float]:
    return [
        s.at
        for s in pair.sent_by(side)
        if s.header.exchange_type == ExchangeType.CREATE_CHILD_SA and not s.header.is_response
    ]


def test_the_first_child_in_ike_auth_the_second_at_once_with_its_own_proposal() -> None:
    pair = make_pair()
    pair.run(until=pair.now + 30)
    for side in ("i", "r"):
        found = ups(pair, side)
        assert sorted(found) == ["high", "low"] and all(len(v) == 1 for v in found.values())
        assert found["low"][0].algorithms == "aes256gcm16-noesn"
        assert found["high"][0].algorithms == "chacha20poly1305-noesn"
    (created_at,) = create_child_requests(pair, "i")
    assert created_at - 1000.0 < 0.1  # right after IKE_AUTH
    assert create_child_requests(pair, "r") == []  # the responder had nothing to add
    high_r = ups(pair, "r")["high"][0]
    assert high_r.local_ts == (N("203.0.113.128/25"),)
    child = next(c for c in pair.initiator.children if c.name == "high")
    assert 540 <= child.lifetime.rekey_at - child.lifetime.created <= 600
    assert child.lifetime.expire_at - child.lifetime.created == 660.0


def test_each_child_is_rekeyed_on_its_own_lifetime_keeping_its_name() -> None:
    pair = make_pair()
    pair.run(until=pair.now + 1000)  # "high" (600 s) rekeyed once; "low" (1 h) never
    found = ups(pair, "i")
    assert len(found["low"]) == 1
    assert len(found["high"]) == 2 and found["high"][1].rekey_of == found["high"][0].inbound_spi
    assert found["high"][1].algorithms == "chacha20poly1305-noesn"
    assert sorted(c.name for c in pair.initiator.children) == ["high", "low"]


def test_responder_waits_its_grace_so_the_initiator_creates_once() -> None:
    pair = make_pair(keep_i=True, keep_r=True)
    pair.run(until=pair.now + CHILD_START_GRACE + 10)
    assert create_child_requests(pair, "r") == []
    assert all(len(v) == 1 for v in ups(pair, "r").values())


def test_a_responder_keeping_children_creates_what_the_initiator_did_not() -> None:
    pair = make_pair(keep_i=False, keep_r=True)
    pair.run(until=pair.now + CHILD_START_GRACE + 10)
    (at,) = create_child_requests(pair, "r")
    assert CHILD_START_GRACE <= at - 1000.0 <= CHILD_START_GRACE + 0.5
    assert sorted(ups(pair, "i")) == ["high", "low"]
    assert ups(pair, "i")["high"][0].algorithms == "chacha20poly1305-noesn"


def test_a_deleted_child_is_created_again_by_the_initiator() -> None:
    pair = make_pair()
    pair.run(until=pair.now + 5)
    high = next(c for c in pair.responder.children if c.name == "high")
    pair.responder.delete_child(high.inbound_spi, pair.now)  # the peer deletes it
    pair.run(until=pair.now + 5)
    found = ups(pair, "i")
    assert len(found["high"]) == 2 and found["high"][1].rekey_of is None
    assert sorted(c.name for c in pair.initiator.children) == ["high", "low"]


def test_a_child_the_peer_lacks_is_retried_with_back_off() -> None:
    pair = make_pair(r_children=children(False)[:1])  # the responder knows only "low"
    pair.run(until=pair.now + 100)
    attempts = create_child_requests(pair, "i")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 5 <= len(attempts) <= 7, attempts  # 2, 4, 8, 16, 32, 60 s apart (plus round trips)
    assert gaps[0] >= CHILD_CREATE_RETRY[0] and all(b > a for a, b in itertools.pairwise(gaps))
    assert sorted(ups(pair, "i")) == ["low"] and pair.initiator.established


def test_the_responder_picks_the_child_the_selectors_fit() -> None:
    pair = make_pair(keep_i=False)
    pair.run(until=pair.now + 5)
    # a narrower proposal inside "high", then one wider than both (the first child wins)
    i = pair.initiator
    i.create_child(pair.now, [N("198.51.100.200/32")], [N("203.0.113.200/32")], child="high")
    pair.run(until=pair.now + 5)
    i.create_child(pair.now, [N("198.51.100.0/24")], [N("203.0.113.0/24")], child="low")
    pair.run(until=pair.now + 5)
    extra = pair.of("r", ChildSaUp)[1:]
    assert [(e.child, e.local_ts, e.remote_ts) for e in extra] == [
        ("high", (N("203.0.113.200/32"),), (N("198.51.100.200/32"),)),
        ("low", (N("203.0.113.0/25"),), (N("198.51.100.0/25"),)),
    ]
    assert extra[0].algorithms == "chacha20poly1305-noesn"


def test_child_sa_not_found_recreates_the_child_once() -> None:
    """i's rekey gets CHILD_SA_NOT_FOUND (r's SA expired, r's own rekeys were lost): the
    rekey task's own re-creation (RFC 7296 §2.25) and keep_children make one, not two."""
    i, r = config_pair(child_lifetime=60.0, rekey_jitter=0.0, keep_children=True)
    r = with_(r, child_lifetime=50.0, keep_children=False)
    link = Link()
    lost = [4]

    def lose_r_rekeys(sent: Sent) -> int | None:  # r's rekey requests at 50, 51, 52.8, 56.04
        request = sent.header.exchange_type == ExchangeType.CREATE_CHILD_SA
        if request and not sent.header.is_response and sent.sender == "r" and lost[0]:
            lost[0] -= 1
            return 0
        return None

    link.rules.append(lose_r_rekeys)
    pair = SessionPair(i, r, link=link)
    pair.start()
    pair.run(until=T0 + 100)
    downs = [d.reason for d in pair.of("i", ChildSaDown)]
    assert any(NotifyType.CHILD_SA_NOT_FOUND.name in reason for reason in downs), downs
    created = [u for u in pair.of("i", ChildSaUp) if u.rekey_of is None]
    assert len(created) == 2, created  # IKE_AUTH's, and one re-creation
    assert len(pair.initiator.children) == 1


def test_a_child_both_sides_created_at_once_is_kept_once() -> None:
    """The initiator creates "high" while the responder's creation (its grace ran out) is
    on the wire: the IKE SA's responder deletes its own copy (INFORMATIONAL { D(ESP) })."""
    pair = make_pair(keep_i=False, keep_r=True)
    pair.run_until(lambda: bool(create_child_requests(pair, "r")))
    pair.initiator.create_child(pair.now, child="high")  # the requests cross
    pair.run(until=pair.now + 5)
    assert len(create_child_requests(pair, "i")) == len(create_child_requests(pair, "r")) == 1
    for side, session in (("i", pair.initiator), ("r", pair.responder)):
        assert len(ups(pair, side)["high"]) == 2
        assert sorted(c.name for c in session.children) == ["high", "low"], side
    (kept,) = [c for c in pair.responder.children if c.name == "high"]
    assert not kept.created_by_us
