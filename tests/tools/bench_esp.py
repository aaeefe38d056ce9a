"""Micro-benchmark of the ESP hot path: packets/s per direction, one CPU core.

Usage: ``python tests/tools/bench_esp.py [--packets N] [--size BYTES] [--runs R]``

Measures, for inner IPv4 packets of ``--size`` bytes (1400 by default):

- ``OutboundSA.encrypt`` / ``InboundSA.decrypt`` (codec + AES-GCM + replay);
- ``SADatabase.encapsulate`` / ``decapsulate`` (plus selector lookup and
  the inbound policy check), bytes in and out;
- ``SADatabase.encapsulate_batch`` / ``decapsulate_batch``: the zero-copy
  calls the packet pumps make, one per batch of 64 (sealing into one send
  buffer, opening into one TUN buffer, back to back).

Each figure is the best of ``--runs`` runs (the machine is shared; the best
run is the least disturbed one). No I/O is involved.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from tests.helpers.packets import ipv4
from tunneld.dataplane import esp
from tunneld.dataplane.sa import InboundSA, OutboundSA
from tunneld.dataplane.sadb import SADatabase

KEY = bytes(range(16))
SALT = b"\x00\x01\x02\x03"
SPI = 0x10203040


def inner_packet(size: int) -> bytes:
    return ipv4("198.51.100.1", "203.0.113.1", bytes(size - 20), ident=1)


def best_rate(run: Callable[[], None], count: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def bench_pair(
    seal: Callable[[bytes], object], open_: Callable[[bytes], object], produce: Callable[[], bytes],
    inner: bytes, count: int, runs: int,
) -> tuple[float, float]:  # fmt: skip
    """Rates of ``seal(inner)`` and of ``open_`` over packets made by ``produce``."""

    def seal_chunk() -> None:
        for _ in range(count):
            seal(inner)  # the result is dropped at once, as after a send

    encrypt_rate = best_rate(seal_chunk, count, runs)
    chunks = iter([[produce() for _ in range(count)] for _ in range(runs)])

    def open_chunk() -> None:
        for packet in next(chunks):
            open_(packet)

    return encrypt_rate, best_rate(open_chunk, count, runs)


def bench_sa(inner: bytes, count: int, runs: int) -> tuple[float, float]:
    timed = OutboundSA(SPI, KEY, SALT)
    producer = OutboundSA(SPI, KEY, SALT)
    inb = InboundSA(SPI, KEY, SALT)
    return bench_pair(
        lambda data: timed.encrypt(data, 4),
        inb.decrypt,
        lambda: producer.encrypt(inner, 4),
        inner,
        count,
        runs,
    )


def bench_sadb(inner: bytes, count: int, runs: int) -> tuple[float, float]:
    a, b = SADatabase(), SADatabase()
    a.add_tunnel("t", ("192.0.2.2", 4500), ["198.51.100.0/24"], ["203.0.113.0/24"])
    b.add_tunnel("t", ("192.0.2.1", 4500), ["203.0.113.0/24"], ["198.51.100.0/24"])
    a.install_next("t", OutboundSA(SPI, KEY, SALT))
    a.promote("t")
    b.add_inbound("t", InboundSA(SPI + 1, KEY, SALT))
    producer = OutboundSA(SPI + 1, KEY, SALT)
    return bench_pair(
        a.encapsulate,
        b.decapsulate,
        lambda: producer.encrypt(inner, 4),
        inner,
        count,
        runs,
    )


def bench_sadb_into(inner: bytes, count: int, runs: int) -> tuple[float, float]:
    """The pumps' calls: packets sealed back to back into one buffer, opened into another."""
    a, b = SADatabase(), SADatabase()
    a.add_tunnel("t", ("192.0.2.2", 4500), ["198.51.100.0/24"], ["203.0.113.0/24"])
    b.add_tunnel("t", ("192.0.2.1", 4500), ["203.0.113.0/24"], ["198.51.100.0/24"])
    b.add_inbound("t", InboundSA(SPI, KEY, SALT, replay_window=1 << 20))
    size, length, count = len(inner), esp.sealed_len(len(inner)), count - count % 64
    stride = size + esp.TRAILER_MAX
    plain = memoryview(bytearray(64 * stride))  # one batch of 64 inner packets, as read
    spans = [(i * stride, size) for i in range(64)]
    for start, _ in spans:
        plain[start : start + size] = inner
    out = memoryview(bytearray(64 * length))  # the pump's send buffer, reused every batch
    sealed = memoryview(bytearray(length * count))  # kept for the opener (not timed)
    opened = memoryview(bytearray(64 * length))  # the pump's TUN buffer, reused too

    def seal_chunk(keep: bool = False) -> None:
        a.install_next("t", OutboundSA(SPI, KEY, SALT))  # a fresh SA: seq 1 .. count
        a.promote("t")
        encapsulate = a.encapsulate_batch
        for first in range(0, length * count, 64 * length):
            encapsulate(plain, spans, out)
            if keep:
                sealed[first : first + 64 * length] = out

    batches = [
        [sealed[start : start + length] for start in range(first, first + 64 * length, length)]
        for first in range(0, length * count, 64 * length)
    ]

    def open_chunk() -> None:
        decapsulate = b.decapsulate_batch
        for batch in batches:
            decapsulate(batch, opened)

    encrypt_rate = best_rate(seal_chunk, count, runs)
    seal_chunk(keep=True)  # seq 1 .. count again, for the opener
    best = float("inf")
    for _ in range(runs):
        b.remove_inbound(SPI)
        b.add_inbound("t", InboundSA(SPI, KEY, SALT, replay_window=1 << 20))
        began = time.perf_counter()
        open_chunk()
        best = min(best, time.perf_counter() - began)
    return encrypt_rate, count / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    inner = inner_packet(args.size)
    print(f"ESP AES-128-GCM, {args.size}-byte inner packets, best of {args.runs} x {args.packets}")
    benches = (("SA", bench_sa), ("SADatabase", bench_sadb), ("SADB into", bench_sadb_into))
    for label, bench in benches:
        enc, dec = bench(inner, args.packets, args.runs)
        for direction, rate in (("encrypt", enc), ("decrypt", dec)):
            mbit = rate * args.size * 8 / 1e6
            print(f"  {label:10} {direction}: {rate:10,.0f} packets/s  ({mbit:,.0f} Mbit/s inner)")


if __name__ == "__main__":
    main()
