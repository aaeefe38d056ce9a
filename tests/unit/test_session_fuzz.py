"""Malformed and mutated datagrams never crash a session (only IkeErrors, caught inside).

Every datagram of a real handshake is mutated (bit flips, truncation,
extension, splices) and fed to sessions at each stage of a fresh handshake.
Nothing may escape ``receive_datagram``; the sessions' invariants must hold.
"""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessionpair import SessionPair, config_pair

from ike.events import ChildSaUp


@cache
def reference_wire() -> tuple[tuple[str, bytes], ...]:
    pair = SessionPair(*config_pair())
    pair.start()
    pair.run()
    pair.initiator.check_liveness(pair.now)
    pair.run()
    pair.responder.close(pair.now)
    pair.run()
    return tuple((s.sender, s.data) for s in pair.wire)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    sender, data = draw(st.sampled_from(reference_wire()))
    buf = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "byte"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)) :]
    elif kind == "extend":
        buf += draw(st.binary(min_size=1, max_size=40))
    elif kind == "splice":
        _, other = draw(st.sampled_from(reference_wire()))
        cut = draw(st.integers(0, min(len(buf), len(other))))
        buf = buf[:cut] + bytearray(other[cut:])
    else:
        i = draw(st.integers(0, min(len(buf) - 1, 40)))  # the header and first payloads
        buf[i] = draw(st.integers(0, 255))
    return sender, bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=st.integers(0, 6), junk=st.lists(mutated(), min_size=1, max_size=4))
def test_mutated_datagrams_are_harmless(stage: int, junk: list[tuple[str, bytes]]) -> None:
    pair = SessionPair(*config_pair())
    pair.start()
    for _ in range(stage):
        pair.step()
    for sender, data in junk:
        targets = [pair.initiator] if sender == "r" else pair.live_responders()
        for session in targets:
            session.receive_datagram(data, ("192.0.2.9", 4500), ("192.0.2.1", 4500), pair.now)
    pair.run()
    assert len(pair.of("i", ChildSaUp)) <= 1 and len(pair.of("r", ChildSaUp)) <= 1
    if pair.established():
        i, r = pair.child_up("i"), pair.child_up("r")
        assert i.keys.outbound_key == r.keys.inbound_key


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_harmless(data: bytes) -> None:
    pair = SessionPair(*config_pair())
    pair.start()
    pair.step()
    for session in [pair.initiator, *pair.live_responders()]:
        session.receive_datagram(data, ("192.0.2.9", 500), ("192.0.2.1", 500), pair.now)
    pair.run()
    assert pair.established()  # garbage from elsewhere did not disturb the handshake
