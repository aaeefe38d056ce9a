"""Checksum alternatives for the 48 segments of a 64 KiB TSO super-packet (MSS 1348),
and the whole cut as tunneld.io.segment does it: medians of 5 rounds, us per segment.

    flock /tmp/tunneld-bench.lock python -m tests.tools.bench_tso

docs/performance.md, "TSO on the sending side", quotes it.
"""

from __future__ import annotations

import os
import statistics
import timeit
from collections.abc import Callable

import numpy as np

from tests.helpers.tso import MSS, gso, super_packet
from tunneld.io.segment import CutStats, Cutter, read_room

SEGMENTS = 48
PAYLOAD = os.urandom(MSS * SEGMENTS)
VIEW = memoryview(PAYLOAD)
STARTS = range(0, len(PAYLOAD), MSS)


def from_bytes_mod() -> list[int]:
    return [int.from_bytes(VIEW[a : a + MSS], "big") % 0xFFFF for a in STARTS]


def halving() -> list[int]:
    out = []
    for a in STARTS:
        value, bits = int.from_bytes(VIEW[a : a + MSS], "big"), MSS * 8
        while bits > 32:
            half = (bits >> 5) << 4  # a multiple of 16, about half
            value = (value >> half) + (value & ((1 << half) - 1))
            bits = bits - half + 1
        out.append(value % 0xFFFF)
    return out


def one_int_masks() -> list[int]:
    value, bits = int.from_bytes(PAYLOAD, "big"), MSS * 8
    mask = (1 << bits) - 1
    return [((value >> (bits * (SEGMENTS - 1 - i))) & mask) % 0xFFFF for i in range(SEGMENTS)]


def numpy_reduceat() -> list[int]:
    words = np.frombuffer(PAYLOAD, ">u2")
    bounds = np.arange(0, SEGMENTS * MSS // 2, MSS // 2)
    return np.add.reduceat(words, bounds, dtype=np.uint64).tolist()  # type: ignore[no-any-return]


def numpy_reshape() -> list[int]:
    words = np.frombuffer(PAYLOAD, ">u2").reshape(SEGMENTS, MSS // 2)
    return words.sum(axis=1, dtype=np.uint64).tolist()  # type: ignore[no-any-return]


PACKET = super_packet(SEGMENTS * MSS, "PA")
VNET = gso(PACKET, MSS)
ARENA = memoryview(bytearray(4 * read_room(True, 5)))
CUTTER = Cutter(CutStats())
CUTTER.bind(ARENA)


def whole_cut() -> None:
    """What read_batch_into does after the read: copy in (the read), then the cut."""
    ARENA[0 : len(PACKET)] = PACKET
    spans: list[tuple[int, int]] = []
    CUTTER.cut(VNET, 0, len(PACKET), spans, 5)
    CUTTER.finish()


def main() -> None:
    assert [s % 0xFFFF for s in numpy_reduceat()] == from_bytes_mod() == halving()
    assert one_int_masks() == from_bytes_mod()
    cases: list[Callable[[], object]] = [
        from_bytes_mod, halving, one_int_masks, numpy_reduceat, numpy_reshape, whole_cut,
    ]  # fmt: skip
    for case in cases:
        runs = [
            min(timeit.repeat(case, number=200, repeat=3)) / 200 / SEGMENTS * 1e6 for _ in range(5)
        ]
        rounds = " ".join(f"{r:.2f}" for r in runs)
        print(f"{case.__name__:16s} {statistics.median(runs):6.2f} us/segment  ({rounds})")


if __name__ == "__main__":
    main()
