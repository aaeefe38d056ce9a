"""Fuzz profile: the data plane's decoders of packets from the network.

ESP decapsulation with real keys (InboundSA.decrypt and SADatabase.decapsulate,
AES-GCM and ChaCha20-Poly1305, with and without ESN; ciphertexts mutated, and
plaintexts mutated then sealed with the key so that the trailer, dummy and
selector checks are reached), batches (SADatabase.decapsulate_batch and
with it InboundSA.open_batch, against a twin fed one packet at a time), the
RFC 3948 demultiplexer of UDP port 4500, and the TUN offload's parser of
decrypted inner packets (coalesce). Allowed outcome: a result or EspDrop
(the IKE side's ParseError for the IKE bytes after a non-ESP marker);
coalesce may raise nothing.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest
from fuzzing import Target, mutate, profile
from genuine import (
    ESP_KEY,
    ESP_SALT,
    ESP_SPI,
    SITE_A,
    SITE_B,
    V6_A,
    V6_B,
    esp_config,
    esp_packets,
    esp_plain_forms,
    ike_corpus,
    tcp_segment,
)

from ike.constants import NAT_KEEPALIVE, NON_ESP_MARKER
from ike.errors import ParseError
from ike.session import peek_header
from tests.helpers.packets import udp_packet
from tunneld.datapath import DEFAULT_BATCH
from tunneld.dataplane import esp
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase
from tunneld.dataplane.udpencap import UdpKind, classify
from tunneld.io.offload import PLAIN_HDR, VNET_HDR, coalesce

pytestmark = pytest.mark.fuzz

ESN, CHACHA, DATABASE, PERSISTENT = 1, 2, 4, 8
MAX_BATCH = 2 * DEFAULT_BATCH
_U16 = struct.Struct("!H")


def database(esn: bool, encr: int) -> SADatabase:
    """Two tunnels: ``t`` (SITE_A <-> SITE_B, v4 and v6) and ``u`` (a narrower one)."""
    db = SADatabase()
    db.add_tunnel("t", ("192.0.2.1", 4500), [SITE_B, V6_B], [SITE_A, V6_A])
    db.add_inbound("t", InboundSA(ESP_SPI, ESP_KEY, ESP_SALT, esn=esn, encr=encr))
    db.add_tunnel("u", ("192.0.2.9", 4500), ["203.0.113.128/25"], ["198.51.100.128/25"])
    db.add_inbound("u", InboundSA(ESP_SPI + 1, ESP_KEY, ESP_SALT, esn=esn, encr=encr))
    return db


def seal_esp(plain: bytes | bytearray, flags: int) -> bytes:
    """Seal SPI | seq | IV | plaintext with the SA's key (ESN high half 0)."""
    if len(plain) < esp.ESP_HEADER_LEN + esp.IV_LEN:
        return bytes(plain)
    esn, encr = esp_config(flags)
    spi, seq_low = esp.SPI_SEQ.unpack_from(plain)
    aead = esp.new_aead(ESP_KEY, ESP_SALT, encr)
    nonce = ESP_SALT + bytes(plain[8:16])
    return bytes(plain[:16]) + aead.encrypt(nonce, bytes(plain[16:]), esp.aad(spi, seq_low, esn))


class EspFuzz:
    """Inputs: a config byte (ESN, CHACHA, DATABASE, PERSISTENT), then the packet."""

    def __init__(self) -> None:
        self.packets = {f: esp_packets(f) for f in range(4)}
        self.plain = esp_plain_forms()
        self.corpus = [bytes([f]) + p for f, packets in self.packets.items() for p in packets]
        self.persistent: dict[int, object] = {}

    def packet(self, rng: random.Random, flags: int) -> bytes:
        roll = rng.random()
        if roll < 0.05:  # untouched: must be delivered (by a fresh SA)
            return rng.choice(self.packets[flags & 3])
        if roll < 0.5:
            packets = self.packets[flags & 3]
            return bytes(mutate(rng, packets, rng.choice(packets)))
        return seal_esp(mutate(rng, self.plain), flags)

    def generate(self, rng: random.Random) -> bytes:
        flags = rng.randrange(16)
        return bytes([flags]) + self.packet(rng, flags)

    def receiver(self, flags: int) -> object:
        esn, encr = esp_config(flags)
        key = flags & (ESN | CHACHA | DATABASE)
        if flags & PERSISTENT:
            if key not in self.persistent:
                self.persistent[key] = self._new(key, esn, encr)
            return self.persistent[key]
        return self._new(key, esn, encr)

    @staticmethod
    def _new(key: int, esn: bool, encr: int) -> object:
        if key & DATABASE:
            return database(esn, encr)
        return InboundSA(ESP_SPI, ESP_KEY, ESP_SALT, esn=esn, encr=encr)

    def run(self, data: bytes) -> bool:
        if not data:
            raise EspDrop(DropReason.MALFORMED)  # no config byte: nothing to decode
        flags, packet = data[0], data[1:]
        receiver = self.receiver(flags)
        if isinstance(receiver, SADatabase):
            inner = receiver.decapsulate(packet)
            assert isinstance(inner, bytes)
        else:
            assert isinstance(receiver, InboundSA)
            next_header, inner = receiver.decrypt(packet)
            assert 0 <= next_header <= 255 and next_header != esp.NEXT_HEADER_NONE
        assert len(inner) <= len(packet) - esp.OVERHEAD
        return True


def esp_target() -> Target:
    fuzz = EspFuzz()
    for flags, packets in fuzz.packets.items():  # the genuine packets open (not vacuous)
        for p in packets[:4]:
            fuzz.run(bytes([flags]) + p)
    return Target("esp_decrypt", fuzz.corpus, fuzz.run, (EspDrop,), generate=fuzz.generate)


# -- batches -----------------------------------------------------------------------------


def encode_batch(packets: Sequence[bytes]) -> bytes:
    """Length-prefixed packets (at most 64 KiB each, as from a socket or the SAs)."""
    return b"".join(_U16.pack(len(p[:0xFFFF])) + p[:0xFFFF] for p in packets)


def decode_batch(data: bytes) -> list[bytes]:
    """At most MAX_BATCH packets: the pumps take that many per wakeup (GRO, recvmmsg)."""
    out, at = [], 0
    while at + 2 <= len(data) and len(out) < MAX_BATCH:
        (size,) = _U16.unpack_from(data, at)
        out.append(data[at + 2 : at + 2 + size])
        at += 2 + size
    return out


class BatchFuzz:
    """decapsulate_batch against a twin database fed the same packets one by one."""

    def __init__(self) -> None:
        self.single = EspFuzz()
        senders = {f: OutboundSA(ESP_SPI + 1, ESP_KEY, ESP_SALT, esn=esp_config(f)[0],
                                 encr=esp_config(f)[1]) for f in range(4)}  # fmt: skip
        inner = udp_packet("198.51.100.200", "203.0.113.200", b"u")
        self.other = {f: [senders[f].encrypt(inner, 4) for _ in range(3)] for f in range(4)}
        self.corpus = [
            bytes([f]) + encode_batch(self.single.packets[f] + self.other[f]) for f in range(4)
        ]
        self.used = 0
        self.twins: dict[int, tuple[SADatabase, SADatabase]] = {}

    def generate(self, rng: random.Random) -> bytes:
        flags = rng.randrange(4)
        if rng.random() < 0.2:
            base = self.corpus[flags]
            return bytes(mutate(rng, self.corpus, base))
        pool = self.single.packets[flags] + self.other[flags]
        batch = []
        for _ in range(rng.choice((1, 2, 3, 4, 8, 16))):
            roll = rng.random()
            if roll < 0.5:
                batch.append(rng.choice(pool))  # consecutive runs, replays
            else:
                batch.append(self.single.packet(rng, flags))
        return bytes([flags]) + encode_batch(batch)

    def run(self, data: bytes) -> bool:
        if not data:
            raise EspDrop(DropReason.MALFORMED)
        flags, packets = data[0] & 3, decode_batch(data[1:])
        if flags not in self.twins or self.used >= 64:
            self.used = 0
            self.twins[flags] = (database(*esp_config(flags)), database(*esp_config(flags)))
        self.used += 1
        batched, one_by_one = self.twins[flags]
        expected: list[bytes | DropReason] = []
        for p in packets:
            try:
                expected.append(one_by_one.decapsulate(p))
            except EspDrop as drop:
                expected.append(drop.reason)
        arena = bytearray(b"".join(packets))  # views into one buffer, as from UdpSocket
        views, at = [], 0
        for p in packets:
            views.append(memoryview(arena)[at : at + len(p)])
            at += len(p)
        opened, dropped = batched.decapsulate_batch(views, memoryview(bytearray(at + 64)))
        assert [bytes(p) for p in opened] == [e for e in expected if isinstance(e, bytes)]
        assert dropped == [e for e in expected if isinstance(e, DropReason)]
        assert batched.snapshot() == one_by_one.snapshot()
        return bool(opened)


def batch_target() -> Target:
    fuzz = BatchFuzz()
    assert all(fuzz.run(c) for c in fuzz.corpus)
    return Target("esp_open_batch", fuzz.corpus, fuzz.run, (EspDrop,), generate=fuzz.generate)


# -- UDP port 4500 ------------------------------------------------------------------------


def _demux(data: bytes) -> bool:
    kind, payload = classify(data)
    if kind is UdpKind.IKE:
        peek_header(payload)  # what the IKE side does first
        peek_header(data)  # the session tolerates the marker too
    elif kind is UdpKind.ESP:
        assert payload is data
    else:
        assert kind is UdpKind.KEEPALIVE and payload == b""
    return True


def udp_target() -> Target:
    corpus = [NAT_KEEPALIVE, NON_ESP_MARKER, NON_ESP_MARKER + bytes(28), bytes(1), bytes(3)]
    corpus += [NON_ESP_MARKER + m for m in ike_corpus()[:20]]
    corpus += esp_packets(0) + esp_packets(3)
    return Target("udp_demux", corpus, _demux, (EspDrop, ParseError))


# -- TUN offload ----------------------------------------------------------------------------


def offload_streams() -> list[list[bytes]]:
    mss = 1348

    def stream(start: int, sizes: list[int], **kw: object) -> list[bytes]:
        out, seq = [], start
        for size in sizes:
            out.append(tcp_segment(seq, size, **kw))  # type: ignore[arg-type]
            seq += size
        return out

    v4 = stream(1000, [mss] * 6 + [500])
    v4[-1] = tcp_segment(1000 + 6 * mss, 500, flags=0x18)  # PSH ends the group
    udp = udp_packet("198.51.100.1", "203.0.113.1", b"x")
    mixed = [*stream(5000, [100, 100, 40], sport=40001), udp, *stream(5240, [100], sport=40001)]
    return [
        v4,
        stream(7, [mss] * 4, v6=True),
        stream(2**32 - 2000, [1000, 1000, 1000]),  # the sequence number wraps
        stream(1, [64] * 8, ts=False),
        mixed,
        [*stream(1, [100] * 3), *stream(1, [100] * 3, sport=40002), *stream(301, [100])],
        stream(1, [0, 100, 0]),  # pure ACKs in between
    ]


class OffloadFuzz:
    def __init__(self) -> None:
        self.streams = offload_streams()
        self.corpus = [encode_batch(s) for s in self.streams]
        self.segments = [p for s in self.streams for p in s]

    def generate(self, rng: random.Random) -> bytes:
        if rng.random() < 0.3:
            return bytes(mutate(rng, self.corpus))
        batch = list(rng.choice(self.streams))
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            i = rng.randrange(len(batch))
            roll = rng.random()
            if roll < 0.6:
                batch[i] = bytes(mutate(rng, self.segments, batch[i]))
            elif roll < 0.75:
                del batch[i]
            elif roll < 0.9:
                batch.insert(i, batch[i])  # a duplicate
            else:
                batch.insert(i, batch.pop())  # out of order
            if not batch:
                break
        return encode_batch(batch)

    def run(self, data: bytes) -> bool:
        packets = decode_batch(data)
        arena = bytearray(b"".join(packets))  # views into one buffer, as from the SAs
        views, at = [], 0
        for p in packets:
            views.append(memoryview(arena)[at : at + len(p)])
            at += len(p)
        writes = coalesce(views)
        seen = [id(p) for _iov, originals in writes for p in originals]
        assert sorted(seen) == sorted(id(v) for v in views), "a packet lost or written twice"
        for iov, originals in writes:
            size = sum(len(b) for b in iov[1:])
            if len(originals) == 1:
                assert bytes(iov[0]) == PLAIN_HDR and size == len(originals[0])
            else:
                _flags, _gso, hlen, seg, _start, _off = VNET_HDR.unpack(bytes(iov[0]))
                payload = sum(len(p) - hlen for p in originals)
                assert size == hlen + payload and seg > 0 and size <= 65535
        return any(len(originals) > 1 for _iov, originals in writes)


def offload_target() -> Target:
    fuzz = OffloadFuzz()
    assert fuzz.run(fuzz.corpus[0])  # the genuine stream merges
    return Target("tun_offload", fuzz.corpus, fuzz.run, (), generate=fuzz.generate)


TARGETS = {
    "esp_decrypt": esp_target,
    "esp_open_batch": batch_target,
    "udp_demux": udp_target,
    "tun_offload": offload_target,
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    profile(name, TARGETS[name])
