"""The zero-copy ESP calls: OutboundSA.seal_into, InboundSA.open_into and the
SADatabase batch calls the packet pumps use (buffers in, lengths out).

The bytes API (``encrypt``/``decrypt``) is built on these, so the vector and
scapy tests cover the packet format; here: offsets, the staging buffer's
trailer room, what is (not) written where, and that a failed open leaves no
trace in the replay window.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunneld.dataplane import esp
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase

KEY, SALT, SPI = bytes(range(32)), b"\x0a\x0b\x0c\x0d", 0x01020304
INNER = b"\x45" + bytes(range(1, 100))  # 100 bytes: pad length 2


def staged(inner: bytes) -> memoryview:
    plain = memoryview(bytearray(len(inner) + esp.TRAILER_MAX))
    plain[: len(inner)] = inner
    return plain


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 99, 100, 1400])
def test_seal_into_writes_exactly_the_packet_encrypt_builds(size: int) -> None:
    inner = bytes((i * 7) % 256 for i in range(size))
    by_bytes = OutboundSA(SPI, KEY, SALT).encrypt(inner, 4)
    out = memoryview(bytearray(b"\xee" * (esp.sealed_len(size) + 20)))
    length = OutboundSA(SPI, KEY, SALT).seal_into(staged(inner), 0, size, 4, out, 7)
    assert length == esp.sealed_len(size) == len(by_bytes)
    assert bytes(out[7 : 7 + length]) == by_bytes  # same seq 1, same key: same bytes
    assert bytes(out[:7]) == b"\xee" * 7 and bytes(out[7 + length :]) == b"\xee" * 13
    # an independent AES-GCM opens it: nonce = salt || seq, AAD = SPI || seq (RFC 4106)
    packet = bytes(out[7 : 7 + length])
    plaintext = AESGCM(KEY).decrypt(SALT + packet[8:16], packet[16:], packet[:8])
    assert plaintext == inner + esp.trailer(size, 4)


def test_seal_into_writes_the_trailer_into_the_staging_room_only() -> None:
    plain = memoryview(bytearray(b"\xaa" * (len(INNER) + esp.TRAILER_MAX)))
    plain[: len(INNER)] = INNER
    out = memoryview(bytearray(esp.sealed_len(len(INNER))))
    OutboundSA(SPI, KEY, SALT).seal_into(plain, 0, len(INNER), 41, out, 0)
    assert bytes(plain[: len(INNER)]) == INNER
    assert bytes(plain[len(INNER) :]) == b"\x01\x02\x02\x29" + b"\xaa"  # pad 1,2 | 2 | 41


def test_seal_into_consumes_one_sequence_number_per_packet_and_counts() -> None:
    sa = OutboundSA(SPI, KEY, SALT, initial_seq=2**32 - 2)
    out = memoryview(bytearray(3 * esp.sealed_len(len(INNER))))
    offset = 0
    for _ in range(2):
        offset += sa.seal_into(staged(INNER), 0, len(INNER), 4, out, offset)
    assert [int.from_bytes(out[i + 4 : i + 8], "big") for i in (0, offset // 2)] == [
        2**32 - 2,
        2**32 - 1,
    ]
    with pytest.raises(EspDrop) as info:
        sa.seal_into(staged(INNER), 0, len(INNER), 4, out, offset)
    assert info.value.reason is DropReason.SEQ_EXHAUSTED and sa.exhausted
    assert (sa.packets, sa.bytes, sa.drops[DropReason.SEQ_EXHAUSTED]) == (2, 200, 1)


def test_seal_into_refuses_buffers_without_room() -> None:
    sa = OutboundSA(SPI, KEY, SALT)
    out = memoryview(bytearray(esp.sealed_len(len(INNER))))
    tight = memoryview(bytearray(INNER))  # no room for the trailer
    with pytest.raises(ValueError):
        sa.seal_into(tight, 0, len(INNER), 4, out, 0)
    with pytest.raises(ValueError):
        sa.seal_into(staged(INNER), 0, len(INNER), 4, out[:-1], 0)
    with pytest.raises(ValueError):
        sa.seal_into(staged(INNER), 0, len(INNER), 256, out, 0)


@pytest.mark.parametrize("esn", [False, True])
def test_open_into_leaves_the_inner_packet_at_the_offset(esn: bool) -> None:
    packets = [OutboundSA(SPI, KEY, SALT, esn=esn).encrypt(INNER, 4)]
    inb = InboundSA(SPI, KEY, SALT, esn=esn)
    out = memoryview(bytearray(b"\xee" * 200))
    assert inb.open_into(memoryview(packets[0]), out, 50) == (4, len(INNER))
    assert bytes(out[50 : 50 + len(INNER)]) == INNER
    assert bytes(out[:50]) == b"\xee" * 50  # nothing before the offset is touched
    assert (inb.packets, inb.bytes, inb.window.top) == (1, len(INNER), 1)


def test_a_failed_open_into_moves_no_window_and_counts() -> None:
    good = OutboundSA(SPI, KEY, SALT).encrypt(INNER, 4)
    forged = bytearray(good)
    forged[-1] ^= 1
    inb = InboundSA(SPI, KEY, SALT)
    out = memoryview(bytearray(200))
    with pytest.raises(EspDrop) as info:
        inb.open_into(forged, out, 0)
    assert info.value.reason is DropReason.AUTH_FAILED
    assert inb.window.top == 0 and inb.packets == 0
    assert inb.open_into(good, out, 0) == (4, len(INNER))  # the real one still passes
    with pytest.raises(EspDrop) as info:
        inb.open_into(good, out, 0)
    assert info.value.reason is DropReason.REPLAY
    assert inb.drops[DropReason.AUTH_FAILED] == inb.drops[DropReason.REPLAY] == 1


def test_open_into_checks_padding_after_the_icv() -> None:
    aead = AESGCM(KEY)
    header = esp.HEADER.pack(SPI, 1, 1)
    bad_padding = INNER + b"\x07\x07\x02\x04"  # pad length 2, contents not 1, 2
    packet = header + aead.encrypt(SALT + header[8:], bad_padding, header[:8])
    inb = InboundSA(SPI, KEY, SALT)
    with pytest.raises(EspDrop) as info:
        inb.open_into(packet, memoryview(bytearray(200)), 0)
    assert info.value.reason is DropReason.MALFORMED
    assert inb.window.top == 1  # authentic, so it did move the window (as decrypt does)


def test_open_into_refuses_an_output_buffer_without_room() -> None:
    packet = OutboundSA(SPI, KEY, SALT).encrypt(INNER, 4)
    inb = InboundSA(SPI, KEY, SALT)
    with pytest.raises(ValueError):
        inb.open_into(packet, memoryview(bytearray(len(packet) - 33)), 0)
    assert inb.window.top == 0 and inb.open_into(packet, memoryview(bytearray(200)), 0)[1] == 100


def _pair() -> tuple[SADatabase, SADatabase]:
    a, b = SADatabase(), SADatabase()
    a.add_tunnel("t", ("192.0.2.2", 4500), ["198.51.100.0/24"], ["203.0.113.0/24"])
    b.add_tunnel("t", ("192.0.2.1", 4500), ["203.0.113.0/24"], ["198.51.100.0/24"])
    a.install_next("t", OutboundSA(SPI, KEY, SALT))
    a.promote("t")
    b.add_inbound("t", InboundSA(SPI, KEY, SALT))
    return a, b


def _ipv4(src: bytes, dst: bytes, size: int = 60) -> bytes:
    return b"\x45\x00" + size.to_bytes(2, "big") + bytes(8) + src + dst + bytes(size - 20)


def test_sadb_batches_carry_packets_back_to_back_in_one_buffer() -> None:
    a, b = _pair()
    packets = [_ipv4(b"\xc6\x33\x64\x0a", b"\xcb\x00\x71" + bytes([i]), 40 + i) for i in range(5)]
    plain = memoryview(bytearray(1000))
    spans, at = [], 3
    for p in packets:  # any layout, as long as each packet has trailer room behind it
        plain[at : at + len(p)] = p
        spans.append((at, len(p)))
        at += len(p) + esp.TRAILER_MAX + 1
    out = memoryview(bytearray(2000))
    runs, dropped = a.encapsulate_batch(plain, spans, out)
    sizes = [esp.sealed_len(len(p)) for p in packets]
    assert sizes == [76, 76, 76, 80, 80]  # padded to a multiple of 4 (RFC 4303 §2.4)
    peer = ("192.0.2.2", 4500)
    assert dropped == [] and runs == [(peer, 0, 228, 76), (peer, 228, 388, 80)]
    starts = [0, 76, 152, 228, 308]
    sealed = [out[start : start + size] for start, size in zip(starts, sizes, strict=True)]
    opened, dropped = b.decapsulate_batch(sealed, memoryview(bytearray(2000)))
    assert [bytes(p) for p in opened] == packets and dropped == []
    assert opened[1].obj is opened[0].obj  # views into the one buffer, back to back
    assert b.inbound(SPI).packets == 5  # type: ignore[union-attr]


def test_sadb_encapsulate_batch_runs_respect_peer_size_and_limits() -> None:
    a, _ = _pair()
    a.add_tunnel("v", ("192.0.2.3", 4500), ["198.51.100.0/24"], ["192.0.2.128/25"])
    a.install_next("v", OutboundSA(SPI + 7, KEY, SALT))
    a.promote("v")
    src, to_t, to_v = b"\xc6\x33\x64\x0a", b"\xcb\x00\x71\x0a", b"\xc0\x00\x02\x81"
    nowhere = b"\x0a\x00\x00\x01"  # no tunnel: dropped, the open run stays open
    lens = [100, 100, 100, 100, 96, 100, 100, 100, 120, 100]  # ESP: 136, 132 (96), 156 (120)
    dests = [to_t, to_t, to_t, to_t, to_t, to_v, nowhere, to_t, to_t, to_t]
    packets = [_ipv4(src, d, n) for d, n in zip(dests, lens, strict=True)]
    plain = memoryview(bytearray(4000))
    spans, at = [], 0
    for p in packets:
        plain[at : at + len(p)] = p
        spans.append((at, len(p)))
        at += len(p) + esp.TRAILER_MAX
    runs, dropped = a.encapsulate_batch(plain, spans, memoryview(bytearray(4000)), max_count=3)
    t, v = ("192.0.2.2", 4500), ("192.0.2.3", 4500)
    assert runs == [
        (t, 0, 408, 136),  # three: max_count
        (t, 408, 676, 136),  # the shorter 132-byte packet joins and closes the run
        (v, 676, 812, 136),  # another peer
        (t, 812, 948, 136),  # back to t (the dropped packet in between left no gap)
        (t, 948, 1240, 156),  # longer: a new run, which the shorter last one closes
    ]
    assert dropped == [DropReason.NO_POLICY] and a.drops[DropReason.NO_POLICY] == 1


def test_sadb_decapsulate_batch_reports_drops_in_order_and_goes_on() -> None:
    a, b = _pair()
    ok = _ipv4(b"\xc6\x33\x64\x0a", b"\xcb\x00\x71\x0a")
    spoofed = _ipv4(b"\x0a\x09\x09\x09", b"\xcb\x00\x71\x0a")  # source outside 198.51.100/24
    first = a.encapsulate(ok)[0]
    # A refuses to send it (its outbound policy); a peer that does not check, sealing
    # with the same key and the next sequence number, gets it to B's inbound check
    spoof = OutboundSA(SPI, KEY, SALT, initial_seq=2).encrypt(spoofed, 4)
    assert a.encapsulate(ok)[0][4:8] == (2).to_bytes(4, "big")  # A's seq 2 goes unused
    second = a.encapsulate(ok)[0]
    forged = bytearray(second)
    forged[-1] ^= 1
    unknown = b"\x00\x00\x09\x99" + first[4:]
    batch = [b"\x01\x02", first, unknown, spoof, first, forged, second]
    opened, dropped = b.decapsulate_batch(batch, memoryview(bytearray(1000)))
    assert [bytes(p) for p in opened] == [ok, ok]
    assert dropped == [
        DropReason.MALFORMED,
        DropReason.UNKNOWN_SPI,
        DropReason.NO_POLICY,
        DropReason.REPLAY,
        DropReason.AUTH_FAILED,
    ]
    assert {r: n for r, n in b.drops.items() if n} == dict.fromkeys(dropped, 1)
    sa = b.inbound(SPI)
    assert sa is not None and sa.drops[DropReason.NO_POLICY] == 1 and sa.packets == 3


@pytest.mark.parametrize("esn", [False, True])
def test_open_batch_defers_replay_updates_only_for_the_runs_next_number(esn: bool) -> None:
    """Replay rule 6: within a batch a run of consecutive numbers updates the window
    once, and duplicates, forgeries and stragglers inside the batch are still caught."""
    start = 2**32 - 3 if esn else 1  # with ESN, the run crosses 2**32
    out_sa = OutboundSA(SPI, KEY, SALT, esn=esn, initial_seq=start)
    packets = [out_sa.encrypt(INNER + bytes([i]), 4) for i in range(8)]  # start .. start+7
    forged = bytearray(packets[4])
    forged[-1] ^= 1
    order = [0, 1, 2, 1, 3, forged, 4, 4, 6, 5, 7, 0]
    batch = [bytes(packets[i]) if isinstance(i, int) else bytes(i) for i in order]
    inb = InboundSA(SPI, KEY, SALT, esn=esn)
    if esn:
        inb.window.update(start - 1)  # the window sits just below 2**32
    opened: list[memoryview] = []
    dropped: list[DropReason] = []
    index, _ = inb.open_batch(batch, 0, memoryview(bytearray(3000)), 0, opened, dropped)
    assert index == len(batch)
    assert [bytes(p)[-1] for p in opened] == [0, 1, 2, 3, 4, 6, 5, 7]
    assert dropped == [
        DropReason.REPLAY,  # 1 again, inside the run
        DropReason.AUTH_FAILED,  # the forged 4: the genuine one still passes
        DropReason.REPLAY,  # 4 again, right after the run took it
        DropReason.REPLAY,  # 0 again, at the end
    ]
    assert inb.window.top == start + 7
    for i in range(8):  # the window knows every one of them now
        with pytest.raises(EspDrop):
            inb.decrypt(packets[i])


def test_encapsulate_batch_stops_sealing_when_the_sequence_numbers_run_out() -> None:
    a, _ = _pair()
    a.install_next("t", OutboundSA(SPI, KEY, SALT, initial_seq=2**32 - 2))  # two numbers left
    a.promote("t")
    packets = [_ipv4(b"\xc6\x33\x64\x0a", b"\xcb\x00\x71\x0a", 60) for _ in range(4)]
    plain = memoryview(bytearray(400))
    spans = [(i * 80, 60) for i in range(4)]
    for (start, size), p in zip(spans, packets, strict=True):
        plain[start : start + size] = p
    out = memoryview(bytearray(400))
    runs, dropped = a.encapsulate_batch(plain, spans, out)
    assert runs == [(("192.0.2.2", 4500), 0, 192, 96)]  # two packets, nothing after them
    assert dropped == [DropReason.SEQ_EXHAUSTED] * 2
    sa = a.tunnel("t").current
    assert sa is not None and sa.exhausted and sa.remaining == 0 and sa.packets == 2
    assert sa.drops[DropReason.SEQ_EXHAUSTED] == 2 == a.drops[DropReason.SEQ_EXHAUSTED]
    seqs = [int.from_bytes(out[o + 4 : o + 8], "big") for o in (0, 96)]
    assert seqs == [2**32 - 2, 2**32 - 1]
