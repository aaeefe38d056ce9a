"""SA database rule 7: authenticated, newest ESP from a new address is reported, once.

``decapsulate_batch`` with the packets' UDP sources calls ``on_move(tunnel,
source)`` when the last packet of a run of one SA that raised its replay
window came from somewhere other than the tunnel's peer. Forged (bad ICV),
replayed, or old-but-unseen packets never count; nothing else changes until
the owner calls ``set_peer``.
"""

from __future__ import annotations

from tunneld.dataplane.sa import DropReason, InboundSA, OutboundSA
from tunneld.dataplane.sadb import PeerAddress, SADatabase, Tunnel

KEY, SALT, SPI = bytes(range(32)), b"\x0a\x0b\x0c\x0d", 0x01020304
PEER, NEW, ATTACKER = ("192.0.2.1", 4500), ("192.0.2.1", 40001), ("192.0.2.99", 4500)
INNER = b"\x45\x00\x00\x3c" + bytes(8) + b"\xc6\x33\x64\x0a" + b"\xcb\x00\x71\x0a" + bytes(40)


def receiver() -> tuple[SADatabase, list[tuple[str, PeerAddress]]]:
    db = SADatabase()
    db.add_tunnel("t", PEER, ["203.0.113.0/24"], ["198.51.100.0/24"])
    db.add_inbound("t", InboundSA(SPI, KEY, SALT))
    moves: list[tuple[str, PeerAddress]] = []

    def on_move(tunnel: Tunnel, source: PeerAddress) -> None:
        moves.append((tunnel.name, source))

    db.on_move = on_move
    return db, moves


def sealed(count: int) -> list[bytes]:
    out = OutboundSA(SPI, KEY, SALT)
    return [out.encrypt(INNER, 4) for _ in range(count)]


def open_from(db: SADatabase, packets: list[bytes], sources: list[PeerAddress]) -> list[DropReason]:
    _, dropped = db.decapsulate_batch(packets, memoryview(bytearray(4096)), sources)
    return dropped


def test_authenticated_newest_esp_from_a_new_port_is_reported_once() -> None:
    db, moves = receiver()
    p = sealed(5)
    assert open_from(db, p[:2], [PEER, PEER]) == [] and moves == []
    assert open_from(db, p[2:4], [NEW, NEW]) == []
    assert moves == [("t", NEW)]
    assert db.tunnel("t").peer == PEER  # the owner moves it, not the data plane
    assert open_from(db, p[4:], [NEW]) == [] and moves == [("t", NEW)]  # once
    db.set_peer("t", NEW)
    assert db.tunnel("t").heard_from is None


def test_forged_and_replayed_esp_from_elsewhere_is_not_reported() -> None:
    db, moves = receiver()
    p = sealed(3)
    assert open_from(db, p[:2], [PEER, PEER]) == []
    forged = bytearray(p[2])
    forged[-1] ^= 1
    dropped = open_from(db, [bytes(forged), p[0], p[1]], [ATTACKER] * 3)
    assert dropped == [DropReason.AUTH_FAILED, DropReason.REPLAY, DropReason.REPLAY]
    assert moves == []
    assert open_from(db, [p[2]], [PEER]) == [] and moves == []  # the genuine one, at home


def test_an_older_packet_arriving_late_from_elsewhere_is_not_reported() -> None:
    """Authentic and never seen, but below the window's top: it was on its way from
    the old address when the newer ones came (RFC 7296 §2.23: only the newest)."""
    db, moves = receiver()
    p = sealed(4)
    assert open_from(db, [p[0], p[2], p[3]], [PEER, NEW, NEW]) == []
    assert moves == [("t", NEW)]
    db.set_peer("t", NEW)
    assert open_from(db, [p[1]], [PEER]) == []  # delivered, yet no report
    assert moves == [("t", NEW)]


def test_only_the_last_newest_packet_of_a_run_counts() -> None:
    db, moves = receiver()
    p = sealed(3)
    assert open_from(db, p, [NEW, ATTACKER, PEER]) == []  # a run of one SA: its last one
    assert moves == []
    assert open_from(db, [p[0]], [NEW]) == [DropReason.REPLAY]  # a replay from elsewhere
    assert moves == []


def test_without_sources_nothing_is_reported() -> None:
    db, moves = receiver()
    _, dropped = db.decapsulate_batch(sealed(2), memoryview(bytearray(4096)))
    assert dropped == [] and moves == []
