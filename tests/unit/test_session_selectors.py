"""Traffic selectors (RFC 7296 §2.9), the state table, and KEYMAT orientation (§2.17)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sessionpair import SITE_I, SessionPair, config_pair

from ike.crypto import prf_plus
from ike.errors import LocalError, TsUnacceptable
from ike.exchanges import selectors
from ike.payloads import TrafficSelector
from ike.states import TRANSITIONS, IkeState, Input, accepts, next_state


def ts(
    start: str, end: str, proto: int = 0, ports: tuple[int, int] = (0, 65535)
) -> TrafficSelector:
    return TrafficSelector(ipaddress.ip_address(start), ipaddress.ip_address(end), proto, *ports)


def net(text: str) -> TrafficSelector:
    return TrafficSelector.from_network(ipaddress.ip_network(text))


def test_narrowing_a_wider_proposal_to_the_configuration() -> None:
    proposed = [net("198.51.100.0/24")]
    configured = [net("198.51.100.0/25")]
    assert selectors.narrow(proposed, configured, "TSi") == (net("198.51.100.0/25"),)


def test_a_narrower_proposal_is_kept() -> None:
    proposed = [ts("198.51.100.10", "198.51.100.20", 6, (443, 443))]
    assert selectors.narrow(proposed, [net("198.51.100.0/24")], "TSi") == tuple(proposed)


def test_disjoint_selectors_are_unacceptable() -> None:
    with pytest.raises(TsUnacceptable) as info:
        selectors.narrow([net("198.51.100.0/24")], [net("203.0.113.0/24")], "TSr")
    assert info.value.notify.name == "TS_UNACCEPTABLE"
    assert "TSr" in str(info.value)


def test_protocols_and_versions_must_agree() -> None:
    tcp, udp = ts("192.0.2.0", "192.0.2.255", 6), ts("192.0.2.0", "192.0.2.255", 17)
    assert selectors.intersect(tcp, udp) is None
    assert selectors.intersect(net("2001:db8::/32"), net("192.0.2.0/24")) is None
    assert selectors.intersect(net("192.0.2.0/24"), tcp) == tcp


def test_initiator_accepts_subsets_only() -> None:
    proposed = [net("198.51.100.0/24")]
    selectors.check_subset([net("198.51.100.128/25")], proposed, "TSi")
    with pytest.raises(TsUnacceptable):
        selectors.check_subset([net("198.51.0.0/16")], proposed, "TSi")
    with pytest.raises(TsUnacceptable):
        selectors.check_subset([], proposed, "TSi")


def test_ranges_become_networks_for_the_data_plane() -> None:
    odd = ts("198.51.100.1", "198.51.100.6")
    assert [str(n) for n in selectors.to_networks([odd])] == [
        "198.51.100.1/32",
        "198.51.100.2/31",
        "198.51.100.4/31",
        "198.51.100.6/32",
    ]
    assert selectors.to_networks([net("2001:db8::/64")]) == (ipaddress.ip_network("2001:db8::/64"),)


addresses = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@given(a1=addresses, a2=addresses, b1=addresses, b2=addresses)
def test_intersection_is_inside_both(
    a1: ipaddress.IPv4Address,
    a2: ipaddress.IPv4Address,
    b1: ipaddress.IPv4Address,
    b2: ipaddress.IPv4Address,
) -> None:
    a = TrafficSelector(min(a1, a2), max(a1, a2))
    b = TrafficSelector(min(b1, b2), max(b1, b2))
    common = selectors.intersect(a, b)
    if common is None:
        assert a.end_addr < b.start_addr or b.end_addr < a.start_addr
    else:
        assert selectors.contains(a, common) and selectors.contains(b, common)


# -- the transition table ------------------------------------------------------------


@pytest.mark.parametrize("state", list(IkeState))
@pytest.mark.parametrize("inp", list(Input))
def test_every_state_input_pair_has_at_most_one_next_state(state: IkeState, inp: Input) -> None:
    """h2 style: the table decides; a pair missing from it is refused, never guessed."""
    if accepts(state, inp):
        target = next_state(state, inp)
        assert target is TRANSITIONS[state, inp]
        # Nothing ever leads back to a pre-handshake state.
        assert target not in (IkeState.IDLE, IkeState.INIT_WAIT)
    else:
        with pytest.raises(LocalError):
            next_state(state, inp)
    # CLOSED is a sink: only an idempotent close is accepted there.
    if state is IkeState.CLOSED:
        assert accepts(state, inp) == (inp is Input.CLOSE)


def test_every_state_can_end() -> None:
    """From every state some input reaches CLOSED (no session can get stuck)."""
    for state in IkeState:
        reachable = {state}
        for _ in range(len(IkeState)):
            reachable |= {t for (s, _i), t in TRANSITIONS.items() if s in reachable}
        assert IkeState.CLOSED in reachable, state


def test_every_input_is_used() -> None:
    """Each input names at least one transition (no dead inputs in the enum)."""
    assert {inp for (_s, inp) in TRANSITIONS} == set(Input)


# -- KEYMAT orientation against an independent computation ---------------------------


def test_initiator_to_responder_keys_come_first_in_keymat() -> None:
    """§2.17: KEYMAT = prf+(SK_d, Ni | Nr); the i->r key and salt are taken first."""
    pair = SessionPair(*config_pair())
    pair.start()
    pair.run()
    ctx = pair.initiator._ctx  # read-only: the SA's PRF, SK_d and nonces
    assert ctx.prf is not None and ctx.keys is not None
    keymat = prf_plus(ctx.prf, ctx.keys.sk_d, ctx.nonce_i + ctx.nonce_r, 2 * (32 + 4))
    up = pair.child_up("i")
    assert up.keys.outbound_key + up.keys.outbound_salt == keymat[:36]
    assert up.keys.inbound_key + up.keys.inbound_salt == keymat[36:]
    assert up.local_ts == (SITE_I,)
