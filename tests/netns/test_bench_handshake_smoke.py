"""Smoke test of the handshake benchmark (`netns-scripts/bench.sh handshake` runs
tools/bench_handshake.py, docs/performance.md): a few spokes from strongSwan
against a tunneld hub, two batches, the documented JSON, nothing left behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not Path("/usr/lib/ipsec/charon").exists() or shutil.which("swanctl") is None,
        reason="strongSwan (charon, swanctl) not installed",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PEERS = 6


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def test_rate_mode_reports_every_handshake_and_cleans_up() -> None:
    prefix = f"hs{secrets.token_hex(3)}"
    argv = [sys.executable, "-m", "tools.bench_handshake", "--peers", str(PEERS)]
    argv += ["--batches", "2", "--addresses", "3", "--timeout", "40", "--json"]
    proc = subprocess.run(
        [*argv, "--prefix", prefix], capture_output=True, text=True, timeout=150, check=False
    )
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.splitlines()[-1])
        rate = result["rate"]
        assert [b["established"] for b in rate["per_batch"]] == [PEERS, PEERS]
        assert all(b["sas_per_s"] > 0 and b["cpu_ms_per_sa"] > 0 for b in rate["per_batch"])
        assert set(rate["rss_mb_after_handshakes"]) == {str(PEERS), str(2 * PEERS)}
        spokes = rate["responder_counters"]["reception"]["hubs"][0]["spokes"]
        assert spokes == PEERS  # the same identities came back: no new spoke each time
        assert rate["responder_counters"]["ike_dispatch"]["dispatch_errors"] == 0
    finally:
        assert _namespaces(prefix) == []
