"""The tombstone table (ike.tombstones): bounded, swept in order, O(1) per datagram."""

from __future__ import annotations

import dataclasses

import pytest

from ike.constants import ExchangeType, HeaderFlag
from ike.tombstones import Tombstone, Tombstones, Verdict
from ike.wire import IkeHeader

PEER = ("198.51.100.7", 4500)


def stone(n: int, until: float = 100.0) -> Tombstone:
    spi_i, spi_r = n.to_bytes(8, "big"), (n + 1000).to_bytes(8, "big")
    return Tombstone(spi_r, spi_i, spi_r, 3, b"request%d" % n, b"answer%d" % n, PEER, PEER, until)


def request(n: int, *, response: bool = False, message_id: int = 3) -> IkeHeader:
    flags = HeaderFlag.INITIATOR | (HeaderFlag.RESPONSE if response else HeaderFlag.NONE)
    spi_i, spi_r = n.to_bytes(8, "big"), (n + 1000).to_bytes(8, "big")
    return IkeHeader(spi_i, spi_r, 46, 2, 0, ExchangeType.INFORMATIONAL, flags, message_id, 0)


def ask(table: Tombstones, n: int, now: float = 0.0, **kw: object) -> tuple[Verdict, bytes | None]:
    header = request(n, **kw)  # type: ignore[arg-type]
    return table.lookup(header.spi_r, header, b"request%d" % n, PEER, now)


def test_the_oldest_stone_goes_when_the_table_is_full() -> None:
    table = Tombstones(capacity=3)
    table.bury([stone(n) for n in range(5)], now=0.0)
    assert len(table) == 3 and table.evicted == 2
    assert ask(table, 0)[0] is Verdict.UNKNOWN
    assert ask(table, 4) == (Verdict.ANSWER, b"answer4")


def test_expired_stones_are_swept_from_the_front() -> None:
    table = Tombstones()
    table.bury([stone(1, until=10.0), stone(2, until=20.0)], now=0.0)
    table.expire(15.0)
    assert len(table) == 1 and ask(table, 2, now=15.0)[0] is Verdict.ANSWER
    table.bury([stone(3, until=60.0)], now=25.0)  # a burial sweeps too
    assert len(table) == 1


def test_a_response_or_another_message_id_is_dropped_and_counted() -> None:
    table = Tombstones()
    table.bury([stone(1)], now=0.0)
    assert ask(table, 1, response=True) == (Verdict.DROP, None)
    assert ask(table, 1, message_id=4) == (Verdict.DROP, None)
    assert table.status() == {"held": 1, "answered": 0, "dropped": 2, "evicted": 0}


def test_the_other_spi_must_match_too() -> None:
    table = Tombstones()
    table.bury([stone(1)], now=0.0)
    header = request(1)
    forged = dataclasses.replace(header, spi_i=b"\x09" * 8)
    assert table.lookup(header.spi_r, forged, b"request1", PEER, 0.0)[0] is Verdict.DROP


def test_a_table_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        Tombstones(capacity=0)
