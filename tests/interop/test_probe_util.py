"""The probe tool itself: it must see every loss, duplicate and corruption it claims to.

A tool that reports "0 lost" whatever happens would make the interop tests
worthless, so here losses are injected (nftables, in a namespace of our own)
and must be counted exactly.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.probe_util import HEADER, MAX_PAYLOAD, Tally, make_probe, parse_probe, probe_size

REPO = Path(__file__).resolve().parents[2]


def test_probe_round_trip_and_rejections() -> None:
    probe = make_probe(7, 42, 100)
    assert len(probe) == 100 and parse_probe(probe, 7) == 42
    assert parse_probe(probe, 8) is None  # another run
    flipped = probe[:50] + bytes((probe[50] ^ 1,)) + probe[51:]
    assert parse_probe(flipped, 7) is None  # altered filler
    assert parse_probe(probe[:-1], 7) is None  # truncated
    assert parse_probe(b"xx", 7) is None
    with pytest.raises(ValueError):
        make_probe(7, 1, MAX_PAYLOAD + 1)


def test_sizes_cover_the_whole_range() -> None:
    sizes = {probe_size(seq, HEADER.size, MAX_PAYLOAD) for seq in range(MAX_PAYLOAD)}
    assert sizes == set(range(HEADER.size, MAX_PAYLOAD + 1))


def test_tally_counts_duplicates_reordering_corruption_and_losses() -> None:
    tally = Tally(5)
    for seq in (0, 2, 1, 2, None, 9):
        tally.record(seq)
    report = tally.report()
    assert (report["unique"], report["lost"], report["duplicates"]) == (3, 2, 1)
    assert (report["reordered"], report["corrupt"], report["received"]) == (1, 2, 6)


@pytest.fixture
def probe_ns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    ns = f"hix{secrets.token_hex(3)}-probe"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.netns
def test_injected_losses_are_counted_exactly(probe_ns: str) -> None:
    """Every 100th probe toward the echo is dropped: 20 of 2,000, seen by both ends."""
    port, count, run_id = 9100, 2000, secrets.randbits(32)
    rules = f"""table inet hixprobe {{
        chain in {{
            type filter hook input priority 0;
            udp dport {port} numgen inc mod 100 == 99 drop
        }}
    }}
    """
    subprocess.run(["ip", "netns", "exec", probe_ns, "nft", "-f", "-"], input=rules.encode(),
                   check=True)  # fmt: skip
    common = ["--port", str(port), "--count", str(count), "--run-id", str(run_id)]
    module = [sys.executable, "-m", "tests.interop.probe_util"]
    netns = ["ip", "netns", "exec", probe_ns]
    echo = subprocess.Popen(
        [*netns, *module, "echo", "--bind", "127.0.0.1", *common, "--idle", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
        sender = subprocess.run(
            [*netns, *module, "send", "--bind", "127.0.0.1", "--dst", "127.0.0.1", *common],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        out, _ = echo.communicate(timeout=10)
    finally:
        if echo.poll() is None:
            echo.kill()
            echo.wait()
    at_echo, at_sender = json.loads(out), json.loads(sender.stdout)
    for tally in (at_echo, at_sender):
        assert (tally["unique"], tally["lost"], tally["duplicates"]) == (1980, 20, 0), tally
        assert tally["corrupt"] == 0
    assert at_sender["sent"] == count
