"""Anti-replay window: RFC 4303 §3.4.3 rules, RFC 6479 ring, ESN (Appendix A2.2)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.dataplane.replay import ReplayWindow
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA

KEY = bytes(range(32))
SALT = b"salt"
SPI = 0x0BADCAFE
INNER = b"\x45" + bytes(19)


def accept(window: ReplayWindow, seq_low: int) -> int:
    """check + update, as InboundSA does around a verified ICV."""
    seq = window.check(seq_low)
    window.update(seq)
    return seq


def refused(window: ReplayWindow, seq_low: int) -> bool:
    try:
        window.check(seq_low)
    except EspDrop as drop:
        assert drop.reason is DropReason.REPLAY
        return True
    return False


@pytest.mark.parametrize(
    ("requested", "effective"), [(1, 64), (64, 64), (65, 128), (100, 128), (1024, 1024)]
)
def test_window_size_rounds_up_to_whole_words(requested: int, effective: int) -> None:
    assert ReplayWindow(requested).size == effective


@pytest.mark.parametrize("size", [0, -1, (1 << 20) + 1])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)


def test_classic_table() -> None:
    w = ReplayWindow(64)
    assert refused(w, 0)  # seq 0 is never sent (RFC 4303 §3.3.3)
    for seq in (1, 2, 3, 5):  # in order, with a hole at 4
        accept(w, seq)
    assert refused(w, 3)  # duplicate
    accept(w, 4)  # late but inside the window: fills the hole
    assert refused(w, 4)
    accept(w, 100)  # jump ahead
    assert w.top == 100
    assert refused(w, 36)  # 100 - 64: just left of the window
    assert not refused(w, 37)  # leftmost slot inside the window
    accept(w, 37)
    assert refused(w, 37)
    assert not refused(w, 99) and not refused(w, 101)
    assert refused(w, 100)


def test_far_jump_clears_the_ring() -> None:
    w = ReplayWindow(128)
    for seq in range(1, 200):
        accept(w, seq)
    accept(w, 100_000)  # more than the ring: every word is cleared
    for seq in range(100_000 - w.size + 1, 100_000):
        assert not refused(w, seq), seq
    assert refused(w, 100_000 - w.size)


def test_window_sweep_every_offset() -> None:
    # After a jump to top, exactly top-size+1 .. top-1 are acceptable, each once.
    w = ReplayWindow(256)
    top = 10_000
    accept(w, top)
    for seq in range(top - w.size - 70, top + 1):
        expected_ok = seq > top - w.size and seq != top
        assert refused(w, seq) is not expected_ok, seq
    for seq in range(top - w.size + 1, top):
        accept(w, seq)
    for seq in range(top - w.size + 1, top + 1):
        assert refused(w, seq)


def test_boundary_at_word_edges() -> None:
    # Advancing by one across a 64-bit word boundary must clear the new word,
    # which held bits from one ring-turn earlier.
    w = ReplayWindow(64)  # two words in the ring
    for seq in range(1, 64 * 6):
        accept(w, seq)
        assert refused(w, seq)
        assert not refused(w, seq + 1)


def test_check_never_mutates() -> None:
    w = ReplayWindow()
    accept(w, 10)
    for seq in (11, 5_000, 2**32 - 1):
        assert w.check(seq) == seq
    assert w.top == 10
    assert not refused(w, 9)


def test_update_is_test_and_set() -> None:
    w = ReplayWindow()
    seq = w.check(7)
    w.update(seq)
    with pytest.raises(EspDrop):
        w.update(seq)  # a second check/update pair that raced the first


def test_forged_high_sequence_number_does_not_move_the_window() -> None:
    # A forger may put any sequence number on the wire; with a bad ICV it must
    # neither advance the window nor make a legitimate lower packet a "replay".
    out = OutboundSA(SPI, KEY, SALT)
    inb = InboundSA(SPI, KEY, SALT)
    first, second = out.encrypt(INNER, 4), out.encrypt(INNER, 4)
    assert inb.decrypt(first) == (4, INNER)
    forged = bytearray(second)
    forged[4:8] = struct.pack(">I", 0xFFFFFF00)  # far ahead; ICV no longer matches
    with pytest.raises(EspDrop) as info:
        inb.decrypt(bytes(forged))
    assert info.value.reason is DropReason.AUTH_FAILED
    assert inb.window.top == 1
    assert inb.decrypt(second) == (4, INNER)
    assert inb.drops[DropReason.AUTH_FAILED] == 1


def test_esn_crosses_2_32_through_real_packets() -> None:
    inb = InboundSA(SPI, KEY, SALT, esn=True, replay_window=64)

    def sender(initial_seq: int) -> OutboundSA:
        return OutboundSA(SPI, KEY, SALT, esn=True, initial_seq=initial_seq)

    # The receiver follows the sender up to the boundary in two jumps ...
    for start in (1, 2**31):
        assert inb.decrypt(sender(start).encrypt(INNER, 4)) == (4, INNER)
    near = sender(2**32 - 3)
    packets = [near.encrypt(INNER, 4) for _ in range(8)]  # 2**32-3 .. 2**32+4
    low_halves = [struct.unpack(">I", p[4:8])[0] for p in packets]
    assert low_halves == [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 2, 3, 4]
    # ... then gets them reordered across 2**32: the high half is inferred
    # (App. A2.2) and authenticated through the AAD, never read from the wire.
    for index in (0, 4, 1, 3, 7, 2, 5, 6):
        assert inb.decrypt(packets[index]) == (4, INNER), index
    assert inb.window.top == 2**32 + 4
    for packet in packets:
        with pytest.raises(EspDrop) as info:
            inb.decrypt(packet)
        assert info.value.reason is DropReason.REPLAY
    assert inb.packets == 10


def test_esn_inference_across_the_boundary() -> None:
    w = ReplayWindow(64, esn=True)
    accept(w, 1)
    # Walk up to the end of subspace 0 in big steps (each a jump ahead).
    for seq in (2**31, 2**32 - 10, 2**32 - 1):
        assert accept(w, seq & 0xFFFFFFFF) == seq
    # Low numbers now mean subspace 1 (case A: window inside subspace 0).
    assert accept(w, 0) == 2**32  # seq-low 0 is legal with ESN
    assert accept(w, 5) == 2**32 + 5
    # Window spans both subspaces (case B): a late packet from subspace 0 ...
    assert accept(w, 2**32 - 3) == 2**32 - 3
    assert refused(w, 2**32 - 3)
    # The window bottom is 2**32 + 5 - 63 = 2**32 - 58: a low half at or above
    # it belongs to subspace 0; one below it can only be ahead in subspace 1.
    assert w.check(2**32 - 58) == 2**32 - 58
    assert w.check(2**32 - 59) == 2**33 - 59
    assert w.top == 2**32 + 5


def test_esn_inference_far_ahead_goes_to_next_subspace() -> None:
    w = ReplayWindow(64, esn=True)
    accept(w, 1000)
    # Below the window bottom in case A means "the next subspace" (App. A2.2).
    assert w.check(10) == 2**32 + 10
    assert w.check(999) == 999


def test_esn_before_the_first_subspace_is_refused() -> None:
    w = ReplayWindow(64, esn=True)
    accept(w, 3)
    assert refused(w, 0xFFFFFFF0)  # would be subspace -1
    assert refused(w, 0)  # full number 0 is never sent


def test_esn_past_2_64_is_refused() -> None:
    w = ReplayWindow(64, esn=True)
    accept(w, 1)
    w.update(2**64 - 1)  # as if the peer had sent every number (update takes full ones)
    assert w.top == 2**64 - 1
    assert refused(w, 5)  # would be 2**64 + 5
    assert not refused(w, 0xFFFFFFFE)  # still inside the window


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([1, 64, 65, 200]),
    seqs=st.lists(st.integers(min_value=0, max_value=1200), max_size=150),
)
def test_ring_matches_a_set_model(size: int, seqs: list[int]) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = 0
    for seq in seqs:
        ok = seq != 0 and seq not in seen and seq > top - w.size
        assert refused(w, seq) is not ok, (seq, top)
        if ok:
            w.update(seq)
            seen.add(seq)
            top = max(top, seq)
    assert w.top == top


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([1, 64, 65, 200, 1024]),
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=300), st.integers(1, 200)),
        max_size=40,
    ),
    esn=st.booleans(),
)
def test_update_run_is_one_update_per_number(
    size: int, steps: list[tuple[bool, int, int]], esn: bool
) -> None:
    """Runs marked word by word leave the window exactly as single updates do."""
    base = 2**32 - 150 if esn else 0  # with ESN, across the 2**32 boundary
    runs, singles = ReplayWindow(size, esn=esn), ReplayWindow(size, esn=esn)
    for as_run, gap, length in steps:
        first = max(runs.top, base) + 1 + gap
        if as_run:
            runs.update_run(first, first + length - 1)
            for seq in range(first, first + length):
                singles.update(seq)
        else:
            for window in (runs, singles):
                window.update(first)
        assert runs.top == singles.top
        # every number near the window gets the same verdict from both
        for seq_low in range(max(runs.top - runs.size - 70, 0), runs.top + 70):
            low = seq_low & 0xFFFFFFFF
            assert refused(runs, low) is refused(singles, low), seq_low


def test_update_run_refuses_what_is_not_a_fresh_run() -> None:
    w = ReplayWindow(1024)
    accept(w, 10)
    for first, last in ((10, 12), (5, 20), (12, 11)):
        with pytest.raises(ValueError):
            w.update_run(first, last)
    w.update_run(11, 20)
    assert w.top == 20 and refused(w, 15) and not refused(w, 21)
