"""FrontDoor: cookies and half-open limits for new IKE_SA_INIT requests (§2.6, RFC 8019)."""

from __future__ import annotations

import pytest
from sessionpair import ADDR_R, T0, config_pair

from ike.constants import NotifyType
from ike.entropy import DeterministicEntropy
from ike.frontdoor import REASONS, FrontDoor, Verdict
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import parse_message

I_CFG = config_pair()[0]


def initiator(host: str, seed: int = 1) -> tuple[IkeSession, bytes]:
    session = IkeSession.initiator(I_CFG, DeterministicEntropy(seed), T0, (host, 500), ADDR_R)
    session.initiate(T0)
    ((request, _src, _dst),) = session.datagrams_to_send()
    return session, request


def door(**limits: int) -> FrontDoor:
    return FrontDoor(DeterministicEntropy(b"door"), T0, **limits)


def test_below_the_threshold_requests_are_admitted_and_counted() -> None:
    d = door(cookie_threshold=2)
    _, request = initiator("192.0.2.10")
    admission = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    assert admission.verdict is Verdict.ADMIT and admission.reply == b""
    d.opened("gw-b", ("192.0.2.10", 500))
    assert d.half_open == 1
    d.closed("gw-b", ("192.0.2.10", 500))
    assert d.half_open == 0 and d.status()["half_open"] == 0


def test_above_the_threshold_a_request_gets_a_cookie_and_no_state() -> None:
    d = door(cookie_threshold=1)
    d.opened("gw-b", ("198.51.100.7", 500))
    session, request = initiator("192.0.2.10")
    admission = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    assert admission.verdict is Verdict.COOKIE and d.half_open == 1
    reply = parse_message(admission.reply)
    assert reply.is_response and reply.spi_i == parse_message(request).spi_i
    assert [n.notify_type for n in reply.notifies()] == [NotifyType.COOKIE]
    # The genuine initiator repeats its request with the cookie first; it gets in.
    session.receive_datagram(admission.reply, ADDR_R, ("192.0.2.10", 500), T0 + 0.01)
    ((again, _src, _dst),) = session.datagrams_to_send()
    assert session.state is IkeState.INIT_SENT
    admitted = d.admit(again, ("192.0.2.10", 500), "gw-b", T0 + 0.01)
    assert (admitted.verdict, admitted.reason) == (Verdict.ADMIT, "admitted with a valid cookie")


def test_a_cookie_is_bound_to_the_source_address() -> None:
    d = door(cookie_threshold=0)
    session, request = initiator("192.0.2.10")
    challenge = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, ("192.0.2.10", 500), T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    stolen = d.admit(again, ("203.0.113.9", 500), "gw-b", T0)  # replayed from elsewhere
    assert stolen.verdict is Verdict.COOKIE and d.counters["invalid cookie"] == 1


def test_a_cookie_survives_one_rotation_of_the_secret_not_two() -> None:
    d = door(cookie_threshold=0, secret_lifetime=60)
    session, request = initiator("192.0.2.10")
    challenge = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, ("192.0.2.10", 500), T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    assert d.admit(again, ("192.0.2.10", 500), "gw-b", T0 + 61).verdict is Verdict.ADMIT
    assert d.admit(again, ("192.0.2.10", 500), "gw-b", T0 + 122).verdict is Verdict.COOKIE


def test_a_spoofer_using_a_peers_address_cannot_fill_its_share() -> None:
    """Per-source threshold: from then on that address must answer a cookie."""
    d = door(cookie_threshold=100, source_threshold=2, max_per_source=3)
    peer = ("192.0.2.2", 500)
    for seed in range(2):  # the spoofer's requests, never followed up
        _, spoofed = initiator("192.0.2.2", seed=100 + seed)
        assert d.admit(spoofed, peer, "gw-b", T0).verdict is Verdict.ADMIT
        d.opened("gw-b", peer)
    _, spoofed = initiator("192.0.2.2", seed=200)
    assert d.admit(spoofed, peer, "gw-b", T0).verdict is Verdict.COOKIE
    # The real peer answers its cookie and gets in; the cap still holds after that.
    session, request = initiator("192.0.2.2", seed=7)
    challenge = d.admit(request, peer, "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, peer, T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    assert d.admit(again, peer, "gw-b", T0).verdict is Verdict.ADMIT
    d.opened("gw-b", peer)
    limited = d.admit(again, peer, "gw-b", T0)
    assert (limited.verdict, limited.reason) == (Verdict.DROP, "half-open limit (source)")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_half_open": 2}, "half-open limit (global)"),
        ({"max_per_peer": 2}, "half-open limit (peer)"),
    ],
)
def test_caps_drop_even_with_a_valid_cookie(limits: dict[str, int], reason: str) -> None:
    d = door(cookie_threshold=0, **limits)
    d.opened("gw-b", ("198.51.100.1", 500))
    d.opened("gw-b", ("198.51.100.2", 500))
    session, request = initiator("192.0.2.10")
    challenge = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, ("192.0.2.10", 500), T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    admission = d.admit(again, ("192.0.2.10", 500), "gw-b", T0)
    assert (admission.verdict, admission.reason) == (Verdict.DROP, reason)


def test_garbage_is_dropped_and_a_flood_grows_nothing() -> None:
    d = door(cookie_threshold=0)
    assert d.admit(b"\x00" * 40, ("192.0.2.10", 500), "gw-b", T0).verdict is Verdict.DROP
    _, request = initiator("192.0.2.10")
    for i in range(5000):  # spoofed from many sources (documentation prefix), above the threshold
        src = (f"2001:db8::{i:x}", 500)
        assert d.admit(request, src, "gw-b", T0 + i / 2000).verdict is Verdict.COOKIE
    assert d.half_open == 0 and set(d.counters) <= set(REASONS)
    assert d.counters["cookie requested"] == 5000
    assert "secret" not in repr(d).replace("<secret redacted>", "")
