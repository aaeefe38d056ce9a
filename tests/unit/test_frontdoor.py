"""FrontDoor: cookies and half-open limits for new IKE_SA_INIT requests (§2.6, RFC 8019)."""

from __future__ import annotations

import random
import struct

import pytest
from sessionpair import ADDR_R, T0, config_pair

from ike.constants import NotifyType
from ike.cookies import (
    cookie_challenge,
    cookie_reply,
    needs_challenge,
    scan_init_request,
    starts_ike_sa,
)
from ike.entropy import DeterministicEntropy
from ike.errors import ParseError
from ike.frontdoor import REASONS, RESERVATION_TTL, FrontDoor, Verdict
from ike.payloads import NoncePayload
from ike.session import IkeSession
from ike.states import IkeState
from ike.wire import parse_header, parse_message

I_CFG = config_pair()[0]


def initiator(host: str, seed: int = 1) -> tuple[IkeSession, bytes]:
    session = IkeSession.initiator(I_CFG, DeterministicEntropy(seed), T0, (host, 500), ADDR_R)
    session.initiate(T0)
    ((request, _src, _dst),) = session.datagrams_to_send()
    return session, request


def door(**limits: int) -> FrontDoor:
    return FrontDoor(DeterministicEntropy(b"door"), T0, **limits)


def spi_i(request: bytes) -> bytes:
    return request[:8]


OTHER_SPI = bytes.fromhex("00000000000000ff")  # a session the test says is open elsewhere


def test_below_the_threshold_requests_are_admitted_and_counted() -> None:
    d = door(cookie_threshold=2)
    _, request = initiator("192.0.2.10")
    admission = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    assert admission.verdict is Verdict.ADMIT and admission.reply == b""
    assert d.half_open == 1  # counted from the admission, before the session exists
    d.opened("gw-b", ("192.0.2.10", 500), spi_i(request))
    assert d.half_open == 1
    d.closed("gw-b", ("192.0.2.10", 500))
    assert d.half_open == 0 and d.status()["half_open"] == 0


def test_above_the_threshold_a_request_gets_a_cookie_and_no_state() -> None:
    d = door(cookie_threshold=1)
    d.opened("gw-b", ("198.51.100.7", 500), OTHER_SPI)
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
        d.opened("gw-b", peer, spi_i(spoofed))
    _, spoofed = initiator("192.0.2.2", seed=200)
    assert d.admit(spoofed, peer, "gw-b", T0).verdict is Verdict.COOKIE
    # The real peer answers its cookie and gets in; the cap still holds after that.
    session, request = initiator("192.0.2.2", seed=7)
    challenge = d.admit(request, peer, "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, peer, T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    assert d.admit(again, peer, "gw-b", T0).verdict is Verdict.ADMIT
    d.opened("gw-b", peer, spi_i(again))
    session, yet_another = initiator("192.0.2.2", seed=8)  # a second genuine one: over the cap
    challenge = d.admit(yet_another, peer, "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, peer, T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
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
    d.opened("gw-b", ("198.51.100.1", 500), OTHER_SPI)
    d.opened("gw-b", ("198.51.100.2", 500), OTHER_SPI)
    session, request = initiator("192.0.2.10")
    challenge = d.admit(request, ("192.0.2.10", 500), "gw-b", T0)
    session.receive_datagram(challenge.reply, ADDR_R, ("192.0.2.10", 500), T0)
    ((again, _src, _dst),) = session.datagrams_to_send()
    admission = d.admit(again, ("192.0.2.10", 500), "gw-b", T0)
    assert (admission.verdict, admission.reason) == (Verdict.DROP, reason)


def test_a_peer_with_its_own_cap_is_admitted_beyond_the_common_one() -> None:
    """The daemon's reception answers for a hub's spokes: its cap is its own."""
    d = FrontDoor(
        DeterministicEntropy(b"door"), T0, cookie_threshold=99, source_threshold=99,
        max_per_peer=2, peer_limits={"(reception)": 3},
    )  # fmt: skip
    verdicts = {}
    for base, name in ((10, "gw-b"), (20, "(reception)")):
        hosts = [f"192.0.2.{base + k}" for k in range(4)]
        verdicts[name] = [
            d.admit(initiator(host, seed=base + k)[1], (host, 500), name, T0).verdict
            for k, host in enumerate(hosts)
        ]
    assert verdicts["gw-b"] == [Verdict.ADMIT] * 2 + [Verdict.DROP] * 2
    assert verdicts["(reception)"] == [Verdict.ADMIT] * 3 + [Verdict.DROP]


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


def test_a_retransmission_before_its_session_opens_is_not_counted_twice() -> None:
    d = door(cookie_threshold=5)
    _, request = initiator("192.0.2.10")
    src = ("192.0.2.10", 500)
    for _ in range(3):  # the peer task has not created the session yet
        assert d.admit(request, src, "gw-b", T0).verdict is Verdict.ADMIT
    assert d.half_open == 1 and d.status()["admitted_not_opened"] == 1
    d.opened("gw-b", src, spi_i(request))
    assert d.half_open == 1 and d.status()["admitted_not_opened"] == 0
    d.closed("gw-b", src)
    assert d.half_open == 0


def test_admissions_count_toward_the_threshold_at_once() -> None:
    """A burst admitted faster than sessions are made cannot pass the threshold."""
    d = door(cookie_threshold=3, source_threshold=100)
    verdicts = [
        d.admit(initiator(f"192.0.2.{i + 1}", seed=i)[1], (f"192.0.2.{i + 1}", 500), "gw-b", T0)
        for i in range(10)
    ]
    assert [v.verdict for v in verdicts] == [Verdict.ADMIT] * 3 + [Verdict.COOKIE] * 7
    assert d.half_open == 3


def test_a_declined_request_gives_its_reservation_back_and_a_slow_one_keeps_it() -> None:
    """The peer turned an admitted request away (inbox full, held down): not counted any
    more. One whose session comes late (a busy peer task) still counts meanwhile, so
    a flood cannot pass the threshold while sessions are being made."""
    d = door(cookie_threshold=2, source_threshold=100)
    reqs = [initiator(f"192.0.2.{i + 1}", seed=i)[1] for i in range(4)]
    srcs = [(f"192.0.2.{i + 1}", 500) for i in range(4)]
    assert d.admit(reqs[0], srcs[0], "gw-b", T0).verdict is Verdict.ADMIT
    assert d.admit(reqs[1], srcs[1], "gw-b", T0).verdict is Verdict.ADMIT
    late = T0 + 10.0  # far longer than a peer task ever should take
    assert d.admit(reqs[2], srcs[2], "gw-b", late).verdict is Verdict.COOKIE
    d.declined("gw-b", srcs[0], spi_i(reqs[0]))
    d.declined("gw-b", srcs[0], spi_i(reqs[0]))  # twice: once only
    assert d.half_open == 1
    assert d.admit(reqs[3], srcs[3], "gw-b", late).verdict is Verdict.ADMIT
    d.opened("gw-b", srcs[1], spi_i(reqs[1]))
    assert d.half_open == 2 and d.status()["admitted_not_opened"] == 1


def test_a_reservation_whose_session_never_opens_lapses() -> None:
    d = door(cookie_threshold=5)
    _, request = initiator("192.0.2.10")
    src = ("192.0.2.10", 500)
    d.admit(request, src, "gw-b", T0)
    _, other = initiator("192.0.2.11", seed=2)
    d.admit(other, ("192.0.2.11", 500), "gw-b", T0 + RESERVATION_TTL + 0.1)  # the clock moves
    assert d.half_open == 1 and d.status()["admitted_not_opened"] == 1
    d.opened("gw-b", src, spi_i(request))  # late: counted again, as a session
    assert d.half_open == 2


def test_the_scan_reads_what_the_parser_reads() -> None:
    for seed in range(20):
        session, request = initiator("192.0.2.10", seed=seed)
        scanned = scan_init_request(request)
        parsed = parse_message(request)
        assert scanned.spi_i == parsed.spi_i and scanned.cookie is None
        assert scanned.nonce == parsed.find(NoncePayload).nonce  # type: ignore[union-attr]
        cookie = bytes(range(36))
        assert cookie_reply(parsed.spi_i, cookie) == cookie_challenge(parsed, cookie)
        session.receive_datagram(cookie_reply(parsed.spi_i, cookie), ADDR_R, ADDR_R, T0)
        ((again, _src, _dst),) = session.datagrams_to_send()
        assert scan_init_request(again).cookie == cookie


def _chain(*payloads: tuple[int, int, bytes]) -> bytes:
    """An IKE_SA_INIT request of raw (type, flags, body) payloads."""
    body = b""
    for i, (_, flags, data) in enumerate(payloads):
        following = payloads[i + 1][0] if i + 1 < len(payloads) else 0
        body += struct.pack("!BBH", following, flags, 4 + len(data)) + data
    first = payloads[0][0] if payloads else 0
    return (
        struct.pack("!8s8sBBBBII", b"i" * 8, bytes(8), first, 0x20, 34, 0x08, 0, 28 + len(body))
        + body
    )


NONCE = (40, 0, bytes(32))


@pytest.mark.parametrize(
    "data",
    [
        _chain((33, 0, b"sa"), (34, 0, b"ke")),  # no Nonce
        _chain(NONCE)[:-1],  # Length says more than the datagram
        _chain(NONCE) + b"x",  # bytes after the last payload
        _chain((200, 0x80, b"?"), NONCE),  # an unknown critical payload (§2.5)
        _chain(*[(43, 0, b"")] * 70, NONCE),  # more payloads than any request needs
        _chain(NONCE).replace(bytes([0, 0, 0, 36]), bytes([0, 0, 0, 2]), 1),  # payload too short
    ],
    ids=["no-nonce", "truncated", "trailing", "critical", "many", "short-payload"],
)
def test_the_scan_refuses_malformed_requests(data: bytes) -> None:
    with pytest.raises(ParseError):
        scan_init_request(data)
    assert door().admit(data, ("192.0.2.10", 500), "gw-b", T0).verdict is Verdict.DROP


def test_an_unknown_non_critical_payload_is_skipped() -> None:
    assert scan_init_request(_chain((200, 0, b"?"), NONCE)).nonce == bytes(32)


def _with_cookie(request: bytes, cookie: bytes) -> bytes:
    """``request`` (from _chain) retried with N(COOKIE) first, as §2.6 says."""
    notify = struct.pack("!BBHBBH", request[16], 0, 8 + len(cookie), 0, 0, NotifyType.COOKIE)
    body = notify + cookie + request[28:]
    return (
        struct.pack("!8s8sBBBBII", b"i" * 8, bytes(8), 41, 0x20, 34, 0x08, 0, 28 + len(body)) + body
    )


def test_under_load_the_challenge_is_made_from_the_header_and_the_body_read_on_return() -> None:
    """As strongSwan's receiver: busy, a request without a cookie is challenged without
    reading its payloads; a malformed one is refused when it comes back with the cookie."""
    d = door(cookie_threshold=0)
    src = ("192.0.2.10", 500)
    no_nonce = _chain((33, 0, b"sa"), (34, 0, b"ke"))
    challenge = d.admit(no_nonce, src, "gw-b", T0)
    assert challenge.verdict is Verdict.COOKIE and d.half_open == 0
    cookie = parse_message(challenge.reply).notifies()[0].data
    refused = d.admit(_with_cookie(no_nonce, cookie), src, "gw-b", T0)
    assert (refused.verdict, refused.reason) == (Verdict.DROP, "malformed IKE_SA_INIT")
    # the same cookie on a well-formed request from there: admitted (bound to IPi, SPIi)
    admitted = d.admit(_with_cookie(_chain(NONCE), cookie), src, "gw-b", T0)
    assert (admitted.verdict, admitted.reason) == (Verdict.ADMIT, "admitted with a valid cookie")
    # what is not an IKE_SA_INIT request by its header gets no cookie, busy or not
    for data in (b"\x00" * 40, no_nonce[:-1], no_nonce.replace(b"\x20", b"\x10", 1)):
        assert d.admit(data, src, "gw-b", T0).verdict is Verdict.DROP


def test_the_header_tests_agree_with_the_parser() -> None:
    rng = random.Random(5)
    _, request = initiator("192.0.2.10")
    for _ in range(3000):
        data = bytearray(request)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(36)] = rng.choice(
                (0, 0x08, 0x20, 0x22, 0x28, 41, rng.randrange(256))
            )
        mutated = bytes(data[: rng.choice((len(data), rng.randrange(len(data) + 1)))])
        try:
            header = parse_header(mutated)
        except ParseError:
            assert not needs_challenge(mutated)
            continue
        assert starts_ike_sa(mutated) == header.starts_ike_sa
        offers = header.next_payload == 41 and mutated[34:36] == b"\x40\x06"
        assert needs_challenge(mutated) == (header.starts_ike_sa and not offers)
