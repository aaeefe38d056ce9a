"""Hypothesis: random and mutated bytes into every decoder raise only EspDrop.

Decoders under test: the RFC 3948 demux, InboundSA.decrypt,
SADatabase.decapsulate and the replay window. For untouched packets the
decoders must succeed; for anything else the only acceptable outcome is
EspDrop (with a reason) or, when a mutation happens not to change the
authenticated bytes, the original inner packet.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.packets import ipv4
from tunneld.dataplane.replay import ReplayWindow
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.dataplane.udpencap import UdpKind, classify

KEY = bytes(range(32))
SALT = b"fuzz"
SPI = 0x00F0220E
INNER = ipv4("198.51.100.1", "203.0.113.1", bytes(8), ident=1, checksums=False)  # UDP, zeroed
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_packets(esn: bool) -> list[bytes]:
    out = OutboundSA(SPI, KEY, SALT, esn=esn)
    return [out.encrypt(INNER, 4) for _ in range(4)]


PACKETS = {esn: valid_packets(esn) for esn in (False, True)}


def database(esn: bool) -> SADatabase:
    db = SADatabase()
    db.add_tunnel("t", ("192.0.2.1", 4500), ["203.0.113.0/24"], ["198.51.100.0/24"])
    db.add_inbound("t", InboundSA(SPI, KEY, SALT, esn=esn))
    return db


def outcome(call: Callable[[bytes], object], data: bytes) -> object:
    """The result, or the drop reason; any other exception fails the test."""
    try:
        return call(data)
    except EspDrop as drop:
        assert isinstance(drop.reason, DropReason)
        return drop.reason


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bool, int, bytes]:
    esn = draw(st.booleans())
    index = draw(st.integers(0, 3))
    data = bytearray(PACKETS[esn][index])
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for bit in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=4)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    else:
        start = draw(st.integers(0, len(data)))
        data[start : start + draw(st.integers(0, 8))] = draw(st.binary(max_size=8))
    return esn, index, bytes(data)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_into_every_decoder(data: bytes) -> None:
    for esn in (False, True):
        result = outcome(InboundSA(SPI, KEY, SALT, esn=esn).decrypt, data)
        assert isinstance(result, DropReason)
        assert isinstance(outcome(database(esn).decapsulate, data), DropReason)
    kind = outcome(classify, data)
    assert isinstance(kind, (DropReason, tuple))


@FUZZ
@given(mutated())
def test_mutated_packets_into_every_decoder(sample: tuple[bool, int, bytes]) -> None:
    esn, index, data = sample
    original = PACKETS[esn][index]
    sa_result = outcome(InboundSA(SPI, KEY, SALT, esn=esn).decrypt, data)
    db_result = outcome(database(esn).decapsulate, data)
    if data == original:
        assert sa_result == (4, INNER) and db_result == INNER
    else:
        # Every byte is covered by the ICV (SPI and seq through the AAD, the IV
        # through the nonce), so no change to a valid packet may pass.
        assert isinstance(sa_result, DropReason)
        assert isinstance(db_result, DropReason)
    demuxed = outcome(classify, data)
    assert isinstance(demuxed, DropReason) or demuxed[0] in UdpKind  # type: ignore[index]


@FUZZ
@given(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=12))
def test_untouched_packets_in_any_order(first: int, rest: list[int]) -> None:
    for esn in (False, True):
        sa = InboundSA(SPI, KEY, SALT, esn=esn)
        delivered: set[int] = set()
        for index in [first, *rest]:
            result = outcome(sa.decrypt, PACKETS[esn][index])
            if index in delivered:
                assert result is DropReason.REPLAY
            else:
                assert result == (4, INNER)
                delivered.add(index)


@FUZZ
@given(
    st.booleans(),
    st.sampled_from([1, 64, 100, 1024]),
    st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.booleans()),
        max_size=60,
    ),
)
def test_replay_window_only_raises_espdrop(
    esn: bool, size: int, steps: list[tuple[int, bool]]
) -> None:
    window = ReplayWindow(size, esn=esn)
    for seq_low, authentic in steps:
        full = outcome(window.check, seq_low)  # type: ignore[arg-type]
        if isinstance(full, DropReason):
            assert full is DropReason.REPLAY
            continue
        assert isinstance(full, int) and full & 0xFFFFFFFF == seq_low
        if authentic:
            window.update(full)
            assert outcome(window.check, seq_low) is DropReason.REPLAY  # type: ignore[arg-type]


def _two_tunnel_db() -> SADatabase:
    db = database(False)
    db.add_tunnel("u", ("192.0.2.9", 4500), ["203.0.113.128/25"], ["198.51.100.128/25"])
    db.add_inbound("u", InboundSA(SPI + 1, KEY, SALT))
    return db


SENDERS = (OutboundSA(SPI, KEY, SALT), OutboundSA(SPI + 1, KEY, SALT))
# Packets of two SAs (the second tunnel's selectors refuse INNER's addresses).
POOL = [SENDERS[i % 2].encrypt(INNER + bytes(i % 5), 4) for i in range(12)]


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(POOL),
            st.binary(max_size=40),
            st.tuples(st.sampled_from(POOL), st.integers(0, 60)).map(
                lambda pi: pi[0][: pi[1]] + bytes([pi[0][pi[1]] ^ 1]) + pi[0][pi[1] + 1 :]
            ),
        ),
        max_size=24,
    )
)
def test_a_batch_opens_exactly_what_one_packet_at_a_time_opens(batch: list[bytes]) -> None:
    """decapsulate_batch (SA runs, offsets, drops) against a twin fed packet by packet."""
    one_by_one = _two_tunnel_db()
    expected = [outcome(one_by_one.decapsulate, p) for p in batch]
    batched = _two_tunnel_db()
    arena = bytearray(b"".join(batch))  # views into one buffer, as from UdpSocket
    views, at = [], 0
    for p in batch:
        views.append(memoryview(arena)[at : at + len(p)])
        at += len(p)
    opened, dropped = batched.decapsulate_batch(views, memoryview(bytearray(at + 64)))
    assert [bytes(p) for p in opened] == [e for e in expected if isinstance(e, bytes)]
    assert dropped == [e for e in expected if isinstance(e, DropReason)]
    assert batched.snapshot() == one_by_one.snapshot()
