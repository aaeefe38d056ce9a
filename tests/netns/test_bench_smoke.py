"""Smoke tests of the benchmark (`python -m tools.bench`, docs/performance.md).

The quick mode runs end to end through plain routing and tunneld and reports numbers
in the documented JSON shape; a SIGTERM in the middle of a run tears everything down.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.bench", *args]


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def test_quick_json_reports_plain_and_tunneld() -> None:
    prefix = f"bs{secrets.token_hex(3)}"
    argv = _bench("--quick", "--json", "--configs", "plain,tunneld", "--prefix", prefix)
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _namespaces(prefix) == []

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["rounds"], report["duration_s"]) == (1, 3)
    assert report["tunneld_mode"] == "daemon"  # the real daemon, with its IKEv2 handshake
    assert list(report["configs"]) == ["plain", "tunneld"]
    for name, config in report["configs"].items():
        assert isinstance(config["mbps"], float) and config["mbps"] > 0, name
        assert isinstance(config["rtt_ms"], float) and config["rtt_ms"] > 0, name
        assert len(config["mbps_per_round"]) == 1, name
    # Each configuration really took its own path: the underlay MTU vs the tunnel's.
    assert report["configs"]["plain"]["mtu"] == 1500
    assert report["configs"]["tunneld"]["mtu"] < 1500
    configs = report["configs"]
    expected = configs["tunneld"]["mbps"] / configs["plain"]["mbps"]
    assert report["ratios"]["tunneld/plain"] == pytest.approx(expected, rel=1e-3)
    assert "tunneld (daemon)" in proc.stdout


def test_sigterm_mid_run_tears_everything_down() -> None:
    prefix = f"bs{secrets.token_hex(3)}"
    argv = _bench("--configs", "openvpn", "--rounds", "1", "--duration", "30", "--prefix", prefix)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pids = _wait_for_gateway_processes(prefix, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert _namespaces(prefix) == []
    assert [pid for pid in pids if _is_openvpn(pid)] == []


def _is_openvpn(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"openvpn\0")
    except OSError:
        return False


def _wait_for_gateway_processes(prefix: str, proc: subprocess.Popen[bytes]) -> list[str]:
    """The pids of the OpenVPN processes in both gateways, once both are running."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pids = []
        for gateway in ("gwa", "gwb"):
            out = subprocess.run(
                ["ip", "netns", "pids", f"{prefix}-{gateway}"], capture_output=True, text=True
            )
            pids += [pid for pid in out.stdout.split() if _is_openvpn(pid)]
        if len(pids) >= 2:
            return pids
        time.sleep(0.2)
    pytest.fail(f"OpenVPN never ran in both gateways (bench exit {proc.poll()})")


@pytest.mark.soak  # ~40 s: plain and tunneld, each set up, pinged idle and under a stream
def test_latency_mode_reports_overheads_in_json() -> None:
    prefix = f"lt{secrets.token_hex(3)}"
    argv = _bench("--latency", "--quick", "--json", "--configs", "plain,tunneld")
    argv += ["--pings", "50", "--prefix", prefix]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _namespaces(prefix) == []

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mode"] == "latency" and report["pings"] == 50
    plain, tunneld = report["configs"]["plain"], report["configs"]["tunneld"]
    assert plain["idle_p50_overhead_ms"] == 0.0
    assert tunneld["idle_p50_ms"] > 0 and tunneld["load_p99_ms"] > 0
    assert tunneld["idle_p50_overhead_ms"] == pytest.approx(
        tunneld["idle_p50_ms"] - plain["idle_p50_ms"], abs=1e-3
    )
    assert tunneld["load_mbps"] > 0 and tunneld["quiet_cpu_pct"] >= 0
    assert tunneld["idle_lost"] < 50 and len(tunneld["per_round"]) == 1
