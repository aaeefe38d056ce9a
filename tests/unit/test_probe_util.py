"""The namespace tests' UDP prober (tests/netns/probe_util.py) counts what it claims.

A prober that missed a loss, a duplicate or a corrupted datagram would let the
tunnel tests pass with a broken tunnel; its bookkeeping is checked here, without
sockets.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PATH = Path(__file__).resolve().parents[1] / "netns" / "probe_util.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe_util", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load()
TOKEN = b"\x01" * 8


def test_datagrams_have_their_size_and_a_per_sequence_pattern() -> None:
    a, b = probe.datagram(TOKEN, 7, 1372), probe.datagram(TOKEN, 8, 1372)
    assert len(a) == len(b) == 1372 and a[16:] != b[16:]
    assert probe._intact(a) and probe._intact(probe.datagram(TOKEN, 0, 16))


def test_altered_datagrams_are_not_intact() -> None:
    d = bytearray(probe.datagram(TOKEN, 300, 512))
    d[400] ^= 1
    assert not probe._intact(bytes(d))
    assert not probe._intact(probe.datagram(TOKEN, 300, 512)[:-1] + b"\x00")
    assert not probe._intact(b"PRB1")  # shorter than the header
    assert not probe._intact(b"XXXX" + probe.datagram(TOKEN, 1, 64)[4:])


def test_tally_counts_loss_duplicates_reordering_and_corruption() -> None:
    tally = probe._Tally(6, TOKEN)
    for seq in (0, 2, 1, 2, 5):  # 3 and 4 lost, 2 twice, 1 after 2
        tally.add(probe.datagram(TOKEN, seq, 64))
    tally.add(probe.datagram(b"\x02" * 8, 3, 64))  # another run's probe is not ours
    tally.add(probe.datagram(TOKEN, 99, 64))  # beyond the count
    tally.add(b"garbage")
    assert (tally.received, tally.unique, tally.reordered, tally.corrupt) == (5, 4, 1, 3)
    assert tally.count - tally.unique == 2  # what run_send reports as lost
    assert tally.received - tally.unique == 1  # ... and as duplicated
