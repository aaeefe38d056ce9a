"""The UDP probe tool (tests/tools/probe.py) counts exactly what it claims to.

A probe that missed a loss, a duplicate or a corrupted datagram would let every
tunnel test pass with a broken tunnel. Its bookkeeping is checked here without
sockets; the last tests run the real command line in a namespace of their own
and inject losses in each direction with nftables, which must be counted to
the datagram, and check that ``--rate`` paces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tools.probe import (
    FIN_SEQ,
    HEADER,
    MAX_SIZE,
    Echo,
    SendOptions,
    Tally,
    _Sender,
    datagram,
    fin,
    parse,
    parse_sizes,
    size_of,
    udp_bytes,
)
from tools.lab import unique_prefix

REPO = Path(__file__).resolve().parents[2]
TOKEN, OTHER = b"\x01" * 16, b"\x02" * 16


def test_probes_have_their_size_and_a_per_sequence_filler() -> None:
    a, b = datagram(TOKEN, 7, 1372), datagram(TOKEN, 8, 1372)
    assert len(a) == len(b) == 1372 and a[HEADER.size :] != b[HEADER.size :]
    assert parse(a) == (TOKEN, 7) and parse(datagram(TOKEN, 0, HEADER.size)) == (TOKEN, 0)
    assert parse(fin(TOKEN, 5000)) == (TOKEN, FIN_SEQ)
    with pytest.raises(ValueError):
        datagram(TOKEN, 1, HEADER.size - 1)


def test_altered_truncated_and_foreign_datagrams_do_not_parse() -> None:
    d = bytearray(datagram(TOKEN, 300, 512))
    d[400] ^= 1
    assert parse(bytes(d)) is None  # altered filler
    assert parse(datagram(TOKEN, 300, 512)[:-1]) is None  # truncated: filler of another size
    assert parse(datagram(TOKEN, 300, 512)[:20]) is None  # shorter than the header
    assert parse(b"XXXX" + datagram(TOKEN, 1, 64)[4:]) is None
    assert parse(fin(TOKEN, 1) + b"\x00") is None


def test_size_lists_ranges_and_blocks() -> None:
    assert [size_of(s, parse_sizes("64,1372")) for s in range(4)] == [64, 1372, 64, 1372]
    assert [size_of(s, [64, 512], block=2) for s in range(5)] == [64, 64, 512, 512, 64]
    walk = parse_sizes(f"{HEADER.size}-{MAX_SIZE}")
    assert sorted(walk) == list(range(HEADER.size, MAX_SIZE + 1))  # every size, once
    assert walk[:3] != sorted(walk)[:3]  # not in ascending order
    assert udp_bytes(5, [64, 1372]) == 3 * 64 + 2 * 1372
    for bad in ("29", "100-99", "70000", "x"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_tally_counts_loss_duplicates_reordering_and_corruption() -> None:
    tally = Tally(TOKEN)
    firsts = [tally.record(datagram(TOKEN, seq, 64)) for seq in (0, 2, 1, 2, 5)]
    assert firsts == [0, 2, 1, None, 5]  # 3 and 4 lost, 2 twice, 1 after 2
    assert tally.record(datagram(OTHER, 3, 64)) is None  # another run's probe
    assert tally.record(b"garbage") is None
    altered = bytearray(datagram(TOKEN, 4, 64))
    altered[-1] ^= 0xFF
    assert tally.record(bytes(altered)) is None
    assert tally.report(6) == {
        "sent": 6, "received": 5, "unique": 4, "lost": 2,
        "duplicated": 1, "reordered": 1, "corrupt": 3,
    }  # fmt: skip
    assert tally.report(None)["lost"] is None


def test_tally_without_a_token_adopts_the_first_intact_probes() -> None:
    tally = Tally()
    tally.record(b"PRB2 not a probe")
    tally.record(datagram(OTHER, 10, 100))
    tally.record(datagram(TOKEN, 11, 100))
    assert (tally.token, tally.unique, tally.corrupt) == (OTHER, 1, 2)
    tally.record(datagram(OTHER, 200_000, 100))  # far ahead: the bookkeeping grows
    assert tally.unique == 2


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)


def test_echo_returns_first_copies_only_and_answers_fin_with_its_tally() -> None:
    sock, echo = FakeSocket(), Echo(Tally())
    src = ("198.51.100.10", 40000)
    for seq in (0, 1, 1, 3):
        assert not echo.handle(sock, datagram(TOKEN, seq, 64), src)  # type: ignore[arg-type]
    assert not echo.handle(sock, fin(OTHER, 4), src)  # type: ignore[arg-type]
    assert [parse(d) for d, _ in sock.sent] == [(TOKEN, 0), (TOKEN, 1), (TOKEN, 3)]
    assert echo.handle(sock, fin(TOKEN, 4), src)  # type: ignore[arg-type]
    answer = json.loads(sock.sent[-1][0])
    assert answer == echo.report() and answer["echoed"] == 3
    assert answer["forward"] == {
        "sent": 4, "received": 4, "unique": 3, "lost": 1,
        "duplicated": 1, "reordered": 0, "corrupt": 1,
    }  # fmt: skip


def test_sender_reports_silences_longer_than_the_gap() -> None:
    opts = SendOptions("203.0.113.10", 9000, 10, TOKEN, gap=0.5)
    sender = _Sender(opts, FakeSocket(), Tally(TOKEN), start=100.0)  # type: ignore[arg-type]
    for t in (100.2, 100.6, 101.0, 103.5, 103.6, 104.2):
        sender.arrived(t)
    assert sender.gaps == [[1.0, 3.5], [3.6, 4.2]]
    assert sender.last_echo == 104.2


# --- the real command line, in a namespace of our own ---------------------------------


@pytest.fixture
def probe_ns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    ns = unique_prefix("hrn") + "-probe"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run_pair(ns: str, port: int, *send_args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Echo and sender on 127.0.0.1 in ``ns``: (the sender's report, the echo's)."""
    tool = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.tools.probe"]
    echo = subprocess.Popen(
        [*tool, "echo", "--bind", "127.0.0.1", "--port", str(port), "--idle", "2"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        sender = subprocess.run(
            [*tool, "send", "--to", "127.0.0.1", "--port", str(port), *send_args],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        out, _ = echo.communicate(timeout=10)
    finally:
        if echo.poll() is None:
            echo.kill()
            echo.wait()
    return json.loads(sender.stdout), json.loads(out)


@pytest.mark.netns
def test_injected_losses_are_counted_exactly_in_each_direction(probe_ns: str) -> None:
    """Every 100th probe toward the echo and every 50th echo back are dropped:
    20 of 2,000 forward, 39 of the 1,980 echoes back; paced at 2,000 per second."""
    port = 9100
    rules = f"""table inet hrnprobe {{
        chain in {{
            type filter hook input priority 0;
            udp dport {port} numgen inc mod 100 == 99 drop
            udp sport {port} numgen inc mod 50 == 49 drop
        }}
    }}
    """
    subprocess.run(
        ["ip", "netns", "exec", probe_ns, "nft", "-f", "-"], input=rules, text=True, check=True
    )
    sender, echo = run_pair(
        probe_ns, port, "--count", "2000", "--rate", "2000", "--window", "256",
        "--sizes", f"{HEADER.size}-{MAX_SIZE}", "--linger", "0.5",
    )  # fmt: skip
    forward = {"sent": 2000, "received": 1980, "unique": 1980, "lost": 20}
    assert {k: sender["forward"][k] for k in forward} == forward, sender
    reverse = {"sent": 1980, "received": 1941, "unique": 1941, "lost": 39}
    assert {k: sender["reverse"][k] for k in reverse} == reverse, sender
    assert sender["lost"] == 59 and sender["send_errors"] == 0
    for direction in (sender["forward"], sender["reverse"]):
        assert direction["duplicated"] == direction["corrupt"] == direction["reordered"] == 0
    assert echo["forward"] == sender["forward"] and echo["echoed"] == 1980
    assert 0.99 <= sender["send_seconds"] < 3.0, sender  # probe n leaves at n / rate


@pytest.mark.netns
def test_window_pacing_alone_loses_nothing(probe_ns: str) -> None:
    sender, _ = run_pair(probe_ns, 9101, "--count", "5000", "--window", "16", "--block", "500")
    assert sender["lost"] == 0 and sender["stalls"] == 0, sender
    assert sender["forward"]["unique"] == sender["reverse"]["unique"] == 5000
    assert sender["udp_bytes"] == udp_bytes(5000, [64, 512, 1372], 500)
