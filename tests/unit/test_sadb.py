"""SADatabase: selector lookup, policy check, make-before-break slots, counters."""

from __future__ import annotations

import json
import struct
from ipaddress import ip_address

import pytest

from tests.helpers import packets
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase

KEY_AB = bytes(range(16))  # site A -> site B
KEY_BA = bytes(range(16, 48))  # site B -> site A
SALT = b"\x01\x02\x03\x04"
PEER_A = ("192.0.2.1", 4500)
PEER_B = ("192.0.2.2", 4500)


def ipv4(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    return packets.ipv4(src, dst, payload, proto=packets.ICMP, ident=1)


def ipv6(src: str, dst: str, payload: bytes = b"ping6") -> bytes:
    return packets.ipv6(src, dst, payload, next_header=58)  # ICMPv6


def drop_reason(call: object, *args: object) -> DropReason:
    with pytest.raises(EspDrop) as info:
        call(*args)  # type: ignore[operator]
    return info.value.reason


def site_pair(esn: bool = False) -> tuple[SADatabase, SADatabase]:
    """Site A (198.51.100.0/24, 2001:db8:a::/48) <-> site B (203.0.113.0/24, 2001:db8:b::/48)."""
    a, b = SADatabase(), SADatabase()
    a_nets, b_nets = ["198.51.100.0/24", "2001:db8:a::/48"], ["203.0.113.0/24", "2001:db8:b::/48"]
    a.add_tunnel("ab", PEER_B, local=a_nets, remote=b_nets)
    b.add_tunnel("ba", PEER_A, local=b_nets, remote=a_nets)
    a.install_next("ab", OutboundSA(0x1000AB, KEY_AB, SALT, esn=esn))
    a.promote("ab")
    b.add_inbound("ba", InboundSA(0x1000AB, KEY_AB, SALT, esn=esn))
    b.install_next("ba", OutboundSA(0x1000BA, KEY_BA, SALT, esn=esn))
    b.promote("ba")
    a.add_inbound("ab", InboundSA(0x1000BA, KEY_BA, SALT, esn=esn))
    return a, b


@pytest.mark.parametrize("esn", [False, True])
def test_site_to_site_both_directions_ipv4_and_ipv6(esn: bool) -> None:
    a, b = site_pair(esn)
    for inner in (ipv4("198.51.100.7", "203.0.113.9"), ipv6("2001:db8:a::7", "2001:db8:b::9")):
        packet, peer = a.encapsulate(inner)
        assert peer == PEER_B
        assert b.decapsulate(packet) == inner
    reply = ipv4("203.0.113.9", "198.51.100.7", b"pong")
    packet, peer = b.encapsulate(memoryview(reply))
    assert peer == PEER_A
    assert a.decapsulate(bytearray(packet)) == reply
    sa = b.inbound(0x1000AB)
    assert sa is not None and sa.packets == 2


def test_longest_prefix_wins_for_ipv4_and_ipv6() -> None:
    db = SADatabase()
    local = ["198.51.100.0/24", "2001:db8:a::/48"]
    db.add_tunnel("wide", PEER_A, local, ["203.0.113.0/24", "2001:db8::/32"])
    db.add_tunnel("narrow", PEER_B, local, ["203.0.113.128/25", "2001:db8:b::/48"])
    for name, key in (("wide", KEY_AB), ("narrow", KEY_BA)):
        db.install_next(name, OutboundSA(0x2000 + len(name), key, SALT))
        db.promote(name)
    cases = [
        ("203.0.113.200", PEER_B),
        ("203.0.113.127", PEER_A),
        ("203.0.113.128", PEER_B),
        ("2001:db8:b::1", PEER_B),
        ("2001:db8:c::1", PEER_A),
    ]
    for destination, peer in cases:
        inner = (
            ipv6("2001:db8:a::1", destination)
            if ":" in destination
            else ipv4("198.51.100.1", destination)
        )
        assert db.encapsulate(inner)[1] == peer, destination
    assert drop_reason(db.encapsulate, ipv4("198.51.100.1", "192.0.2.99")) is DropReason.NO_POLICY
    tunnel = db.lookup(ip_address("198.51.100.1").packed, ip_address("203.0.113.129").packed)
    assert tunnel is not None and tunnel.name == "narrow"


def test_cache_is_invalidated_by_changes() -> None:
    db = SADatabase(cache_size=2)
    inner = ipv4("198.51.100.1", "203.0.113.5")
    assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY  # cached as "none"
    db.add_tunnel("t", PEER_A, ["198.51.100.0/24"], ["203.0.113.0/24"])
    assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY  # tunnel has no SA yet
    db.install_next("t", OutboundSA(0x3000, KEY_AB, SALT))
    assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY  # next never sends
    db.promote("t")
    assert db.encapsulate(inner)[1] == PEER_A
    db.set_peer("t", PEER_B)
    assert db.encapsulate(inner)[1] == PEER_B
    db.add_tunnel("narrow", PEER_A, ["198.51.100.0/24"], ["203.0.113.0/28"])
    db.install_next("narrow", OutboundSA(0x3001, KEY_AB, SALT))
    db.promote("narrow")
    assert db.encapsulate(inner)[1] == PEER_A  # the /28 now wins over the cached /24
    db.remove_tunnel("narrow")
    assert db.encapsulate(inner)[1] == PEER_B
    db.remove_tunnel("t")
    assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY
    assert db.drops[DropReason.NO_POLICY] == 4


def test_sa_changes_keep_the_selector_caches() -> None:
    """A hub installs a Child SA per handshake among thousands of tunnels: SA slot and
    peer changes leave every tunnel's cached verdicts (and the routes) as they were,
    while what is sealed and opened follows the new SAs at once (rule 4)."""
    a, b = site_pair()
    inner = ipv4("198.51.100.7", "203.0.113.9")
    b.add_tunnel("other", PEER_A, ["198.51.100.0/24"], ["192.0.2.128/25"])
    assert b.decapsulate(a.encapsulate(inner)[0]) == inner
    verdicts = dict(b.tunnel("ba").policy.verdicts)
    assert verdicts
    b.install_next("other", OutboundSA(0x4000, KEY_BA, SALT))
    b.promote("other")
    b.set_peer("other", PEER_B)
    b.demote("other")
    b.retire_previous("other")
    assert b.tunnel("ba").policy.verdicts == verdicts
    a.install_next("ab", OutboundSA(0x1000AC, KEY_AB, SALT))
    a.promote("ab")
    assert drop_reason(b.decapsulate, a.encapsulate(inner)[0]) is DropReason.UNKNOWN_SPI
    b.add_inbound("ba", InboundSA(0x1000AC, KEY_AB, SALT))
    assert b.decapsulate(a.encapsulate(inner)[0]) == inner


def test_bounded_cache_stays_correct_with_many_destinations() -> None:
    db = SADatabase(cache_size=3)
    db.add_tunnel("t", PEER_A, ["198.51.100.0/24"], ["203.0.113.0/25"])
    db.install_next("t", OutboundSA(0x4000, KEY_AB, SALT))
    db.promote("t")
    for round_ in range(2):
        for host in range(0, 256, 7):
            inner = ipv4("198.51.100.1", f"203.0.113.{host}")
            if host < 128:
                assert db.encapsulate(inner)[1] == PEER_A, (round_, host)
            else:
                assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY


@pytest.mark.parametrize(
    "inner", [b"", b"\x45" + bytes(18), b"\x60" + bytes(38), b"\x55" + bytes(40), b"\x00" * 60]
)
def test_encapsulate_refuses_non_ip(inner: bytes) -> None:
    a, _ = site_pair()
    assert drop_reason(a.encapsulate, inner) is DropReason.MALFORMED
    assert a.drops[DropReason.MALFORMED] == 1


def test_inbound_policy_checks_source_and_destination() -> None:
    _, b = site_pair()
    raw_sa = OutboundSA(0x1000AB, KEY_AB, SALT)  # same SA as a's current, driven directly
    bad = [
        ipv4("192.0.2.50", "203.0.113.9"),  # source outside B's remote selectors
        ipv4("198.51.100.7", "192.0.2.60"),  # destination outside B's local selectors
        ipv6("2001:db8:a::1", "2001:db8:ffff::1"),
        ipv4("203.0.113.1", "198.51.100.7"),  # reversed: a spoof of B's own side
    ]
    for inner in bad:
        nh = 41 if inner[0] >> 4 == 6 else 4
        assert drop_reason(b.decapsulate, raw_sa.encrypt(inner, nh)) is DropReason.NO_POLICY
    sa = b.inbound(0x1000AB)
    assert sa is not None
    assert sa.drops[DropReason.NO_POLICY] == b.drops[DropReason.NO_POLICY] == 4
    # the same flows, allowed, after the refusals (verdicts are cached per tunnel)
    good = ipv4("198.51.100.7", "203.0.113.9")
    assert b.decapsulate(raw_sa.encrypt(good, 4)) == good


def test_next_header_must_match_inner_version() -> None:
    _, b = site_pair()
    raw_sa = OutboundSA(0x1000AB, KEY_AB, SALT)
    v6 = ipv6("2001:db8:a::1", "2001:db8:b::1")
    v4 = ipv4("198.51.100.7", "203.0.113.9")
    for inner, nh in ((v6, 4), (v4, 41), (v4, 1), (v4[:19], 4), (v6[:39], 41)):
        assert drop_reason(b.decapsulate, raw_sa.encrypt(inner, nh)) is DropReason.MALFORMED
    assert b.drops[DropReason.MALFORMED] == 5


def test_unknown_spi_short_packets_and_sa_drops_reach_the_database() -> None:
    a, b = site_pair()
    packet = a.encapsulate(ipv4("198.51.100.7", "203.0.113.9"))[0]
    assert drop_reason(b.decapsulate, b"\x00\x00\x00\x01") is DropReason.MALFORMED
    assert drop_reason(b.decapsulate, b"\xff" * 4 + packet[4:]) is DropReason.UNKNOWN_SPI
    assert b.decapsulate(packet)
    assert drop_reason(b.decapsulate, packet) is DropReason.REPLAY
    tampered = packet[:-1] + bytes([packet[-1] ^ 1])
    assert drop_reason(b.decapsulate, tampered) is DropReason.REPLAY  # cheap check first
    fresh = bytearray(a.encapsulate(ipv4("198.51.100.7", "203.0.113.9"))[0])
    fresh[20] ^= 0x40
    assert drop_reason(b.decapsulate, bytes(fresh)) is DropReason.AUTH_FAILED
    expected = {
        DropReason.MALFORMED: 1,
        DropReason.UNKNOWN_SPI: 1,
        DropReason.REPLAY: 2,
        DropReason.AUTH_FAILED: 1,
    }
    assert {r: n for r, n in b.drops.items() if n} == expected


def test_make_before_break_rekey() -> None:
    a, b = site_pair()
    inner = ipv4("198.51.100.7", "203.0.113.9")
    in_flight = a.encapsulate(inner)[0]
    # New SA pair: inbound installed first, outbound staged as "next".
    b.add_inbound("ba", InboundSA(0x2000AB, KEY_BA, SALT))
    assert a.install_next("ab", OutboundSA(0x2000AB, KEY_BA, SALT)) is None
    still_old = a.encapsulate(inner)[0]
    assert struct.unpack(">I", still_old[:4])[0] == 0x1000AB  # "next" never sends
    assert a.promote("ab") is None
    tunnel = a.tunnel("ab")
    assert tunnel.current is not None and tunnel.current.spi == 0x2000AB
    assert tunnel.previous is not None and tunnel.previous.spi == 0x1000AB
    assert tunnel.next is None
    new_packet = a.encapsulate(inner)[0]
    assert struct.unpack(">I", new_packet[:4])[0] == 0x2000AB
    assert b.decapsulate(new_packet) == inner
    assert b.decapsulate(still_old) == inner  # old inbound SA still valid,
    assert b.decapsulate(in_flight) == inner  # also for reordered packets
    retired = a.retire_previous("ab")
    assert retired is not None and retired.packets == 2
    assert a.retire_previous("ab") is None
    with pytest.raises(ValueError):
        a.promote("ab")
    old = b.remove_inbound(0x1000AB)
    assert old.packets == 2
    assert drop_reason(b.decapsulate, in_flight) is DropReason.UNKNOWN_SPI


def test_exhausted_current_sa_is_counted() -> None:
    db = SADatabase()
    db.add_tunnel("t", PEER_A, ["198.51.100.0/24"], ["203.0.113.0/24"])
    db.install_next("t", OutboundSA(0x5000, KEY_AB, SALT, initial_seq=2**32 - 1))
    db.promote("t")
    inner = ipv4("198.51.100.1", "203.0.113.1")
    db.encapsulate(inner)
    current = db.tunnel("t").current
    assert current is not None and current.exhausted
    assert drop_reason(db.encapsulate, inner) is DropReason.SEQ_EXHAUSTED
    assert db.drops[DropReason.SEQ_EXHAUSTED] == 1


def test_configuration_errors() -> None:
    db = SADatabase()
    db.add_tunnel("t", PEER_A, ["198.51.100.0/24"], ["203.0.113.0/24"])
    with pytest.raises(ValueError):
        db.add_tunnel("t", PEER_B, ["198.51.100.0/24"], ["203.0.114.0/24"])
    with pytest.raises(ValueError):
        db.add_tunnel("u", PEER_B, ["198.51.100.0/24"], ["203.0.113.0/24"])
    with pytest.raises(ValueError):
        db.add_tunnel("v", PEER_B, ["198.51.100.0/24"], [])
    with pytest.raises(ValueError):
        db.add_tunnel("w", PEER_B, ["198.51.100.1/24"], ["192.0.2.0/24"])  # host bits
    db.add_inbound("t", InboundSA(0x6000, KEY_AB, SALT))
    with pytest.raises(ValueError):
        db.add_inbound("t", InboundSA(0x6000, KEY_BA, SALT))
    with pytest.raises(ValueError):
        SADatabase(cache_size=0)
    removed = db.remove_tunnel("t")
    assert removed.inbound_spis == {0x6000}
    assert db.inbound(0x6000) is None


def test_snapshot_is_plain_data_without_secrets() -> None:
    a, b = site_pair()
    b.decapsulate(a.encapsulate(ipv4("198.51.100.7", "203.0.113.9"))[0])
    snap = b.snapshot()
    text = json.dumps(snap)
    for secret in (KEY_AB, KEY_BA, SALT):
        assert secret.hex() not in text
    tunnel = snap["tunnels"]["ba"]  # type: ignore[index]
    assert tunnel["current"]["spi"] == "001000ba"
    assert tunnel["inbound"][0]["spi"] == "001000ab"
    assert tunnel["inbound"][0]["packets"] == 1
    assert tunnel["remote"] == ["198.51.100.0/24", "2001:db8:a::/48"]
    assert snap["drops"]["replay"] == 0  # type: ignore[index]
    assert "redacted" not in repr(b) and "SADatabase" in repr(b)


def test_demote_stops_sending_but_keeps_inbound() -> None:
    a, b = site_pair()
    inner = ipv4("198.51.100.7", "203.0.113.9")
    esp = a.encapsulate(inner)[0]
    assert a.demote("ab") is None
    tunnel = a.tunnel("ab")
    assert tunnel.current is None and tunnel.previous is not None
    assert drop_reason(a.encapsulate, inner) is DropReason.NO_POLICY
    assert b.decapsulate(esp) == inner  # the peer's inbound SA is untouched


@pytest.mark.parametrize(
    ("source", "sent"),
    [
        ("198.51.100.7", True),
        ("192.0.2.1", False),  # the gateway's own address: its IKE reply to a spoofed source
        ("203.0.113.99", False),  # a remote-site address looping back into the tunnel
        ("2001:db8:a::7", True),
        ("2001:db8:ffff::7", False),
    ],
)
def test_outbound_the_source_must_lie_in_the_local_selectors(source: str, sent: bool) -> None:
    """RFC 4301 §5.1: no SPD entry matches the source, discard (issue #9: COOKIE replies
    to spoofed remote-site addresses were sealed into the tunnel)."""
    db = SADatabase()
    local = ["198.51.100.0/24", "2001:db8:a::/48"]
    db.add_tunnel("t", PEER_B, local, ["203.0.113.0/24", "2001:db8:b::/48"])
    db.install_next("t", OutboundSA(0x2000, KEY_AB, SALT))
    db.promote("t")
    destination = "2001:db8:b::1" if ":" in source else "203.0.113.5"
    inner = (ipv6 if ":" in source else ipv4)(source, destination)
    for _ in range(2):  # the second time from the cache
        if sent:
            assert db.encapsulate(inner)[1] == PEER_B
        else:
            assert drop_reason(db.encapsulate, inner) is DropReason.NO_POLICY
    found = db.lookup(ip_address(source).packed, ip_address(destination).packed)
    assert (found is not None) == sent
