"""The data plane between real namespaces: two static-key gateways (lab.sh + static_pair).

1. 10,000 sequence-numbered UDP probes site A -> site B -> site A: none lost,
   none duplicated; meanwhile a capture on the wan bridge sees only UDP 4500
   between the gateways and never the probes' marker bytes.
2. An ESP packet taken from that capture and sent to gateway B again is
   dropped and counted as REPLAY; a forged one (sequence number moved ahead)
   fails the ICV and does not move the replay window.
3. A TCP stream crosses intact while gateway B merges its segments into
   large TUN writes (tunneld.io.offload).
4. Stopping the gateways removes the route and the TUN device.
"""

from __future__ import annotations

import json
import secrets
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.packets import ipv4_packets
from tests.helpers.sitelab import REPO, run
from tests.tools.probe import TOKEN_LEN
from tests.tools.static_pair import stats

pytestmark = pytest.mark.netns

GW_A, GW_B = "192.0.2.1", "192.0.2.2"
HOST_B = "203.0.113.10"
PROBE_PORT = 7777
PROBES = 10_000


# -- capture on the wan bridge ------------------------------------------------------


class Capture:
    """tcpdump on PREFIX-br in PREFIX-wan, full packets, written to a pcap file."""

    def __init__(self, prefix: str, path: Path) -> None:
        self.path = path
        argv = ["ip", "netns", "exec", f"{prefix}-wan", "tcpdump", "-i", f"{prefix}-br"]
        # --immediate-mode: hand over each packet at once, or a capture stopped
        # right after the traffic misses what is still in the kernel's ring
        argv += ["-n", "--immediate-mode", "-U", "-s", "0", "-w", str(path)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": the capture is armed
        assert "listening" in line, line

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        return self.path.read_bytes()


# -- helpers --------------------------------------------------------------------------


def probe_round(prefix: str, token: bytes) -> dict[str, Any]:
    """PROBES probes site A -> site B -> site A, window-paced; sizes change every 500
    probes (64, 512, 1372 bytes) so that small packets and full-size GSO runs both occur."""
    tool = [sys.executable, "-m", "tests.tools.probe"]
    echo = subprocess.Popen(
        [
            *("ip", "netns", "exec", f"{prefix}-b", *tool, "echo", "--bind", HOST_B),
            *("--port", str(PROBE_PORT), "--token", token.hex(), "--timeout", "60"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        sender = run(
            "ip", "netns", "exec", f"{prefix}-a", *tool, "send", "--to", HOST_B,
            "--port", str(PROBE_PORT), "--token", token.hex(), "--count", str(PROBES),
            "--sizes", "64,512,1372", "--block", "500", timeout=120,
        )  # fmt: skip
        report: dict[str, Any] = json.loads(sender.stdout)
        return report
    finally:
        echo.kill()
        echo.wait(timeout=10)


def inject_from_gwa(prefix: str, payload: bytes) -> None:
    """Send ``payload`` to gateway B's UDP 4500 from gateway A's address (another port)."""
    code = (
        "import socket, sys; "
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); "
        "s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[3], 4500))"
    )
    run(
        "ip",
        "netns",
        "exec",
        f"{prefix}-gwa",
        sys.executable,
        "-c",
        code,
        GW_A,
        payload.hex(),
        GW_B,
    )


def inbound_drops(prefix: str, node: str) -> dict[str, int]:
    drops: dict[str, int] = stats(prefix, node)["datapath"]["inbound"]["drops"]
    return drops


def wait_for_drop(prefix: str, node: str, reason: str, count: int) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        drops = inbound_drops(prefix, node)
        if drops.get(reason, 0) >= count or time.monotonic() > deadline:
            return drops
        time.sleep(0.05)


def ping(prefix: str) -> None:
    run("ip", "netns", "exec", f"{prefix}-a", "ping", "-c", "1", "-W", "2", HOST_B)


# -- tests ----------------------------------------------------------------------------


def test_probes_cross_without_loss_and_the_underlay_carries_only_esp(
    static_pair: str, tmp_path: Path
) -> None:
    prefix = static_pair
    token = secrets.token_bytes(TOKEN_LEN)
    capture = Capture(prefix, tmp_path / "wan.pcap")
    try:
        report = probe_round(prefix, token)
    finally:
        pcap = capture.stop()

    print("probe report:", json.dumps(report))
    assert report["forward"] is not None, "the echo did not report"
    for direction in ("forward", "reverse"):
        tally = report[direction]
        counts = [tally[k] for k in ("unique", "lost", "duplicated", "corrupt")]
        assert counts == [PROBES, 0, 0, 0], (direction, report)

    packets = list(ipv4_packets(pcap))
    not_esp = [
        p[:5] for p in packets
        if not (p[2] == 17 and {p[0], p[1]} == {GW_A, GW_B} and p[3] == p[4] == 4500)
    ]  # fmt: skip
    assert not_esp == [], f"non-ESP IPv4 on the underlay: {not_esp[:5]}"
    # A GSO run crosses the bridge as one frame (segmented only where it has to
    # be), so count bytes, not frames: the ESP carried every probe twice.
    esp_bytes = sum(len(p[5]) for p in packets)
    assert esp_bytes > 2 * report["udp_bytes"], (esp_bytes, report["udp_bytes"])
    assert token not in pcap, "probe plaintext seen on the underlay"

    a, b = stats(prefix, "gwa")["datapath"], stats(prefix, "gwb")["datapath"]
    assert a["outbound"]["packets"] >= PROBES and b["inbound"]["packets"] >= PROBES
    assert b["inbound"]["drops"] == {} and a["inbound"]["drops"] == {}
    assert b["tun"]["write_drops"] == 0


def test_replayed_esp_is_dropped_as_replay_and_forgery_as_auth_failed(
    static_pair: str, tmp_path: Path
) -> None:
    prefix = static_pair
    capture = Capture(prefix, tmp_path / "wan.pcap")
    try:
        for _ in range(3):
            ping(prefix)
    finally:
        pcap = capture.stop()
    a_to_b = [p[5] for p in ipv4_packets(pcap) if (p[0], p[1], p[4]) == (GW_A, GW_B, 4500)]
    assert len(a_to_b) >= 3
    assert inbound_drops(prefix, "gwb") == {}

    inject_from_gwa(prefix, a_to_b[0])
    drops = wait_for_drop(prefix, "gwb", "replay", 1)
    assert drops == {"replay": 1}
    sadb = stats(prefix, "gwb")["sadb"]
    assert sadb["drops"]["replay"] == 1
    assert sadb["tunnels"]["static"]["inbound"][0]["drops"]["replay"] == 1

    # Forged: a sequence number far ahead of the window (it is in the AAD, so the
    # ICV fails). Had it moved the window, the next real packets would be replays.
    forged = bytearray(a_to_b[-1])
    forged[4:8] = struct.pack("!I", struct.unpack_from("!I", forged, 4)[0] + 1_000_000)
    inject_from_gwa(prefix, bytes(forged))
    drops = wait_for_drop(prefix, "gwb", "auth_failed", 1)
    assert drops == {"replay": 1, "auth_failed": 1}
    ping(prefix)
    assert inbound_drops(prefix, "gwb") == {"replay": 1, "auth_failed": 1}


def test_tcp_stream_crosses_intact_with_merged_tun_writes(static_pair: str) -> None:
    prefix = static_pair
    tool = [sys.executable, "-m", "tests.tools.probe"]
    sink = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            f"{prefix}-b",
            *tool,
            "tcp-sink",
            "--bind",
            HOST_B,
            "--port",
            "7000",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "READY"
        size = 8 << 20
        sent = run(
            "ip", "netns", "exec", f"{prefix}-a", *tool, "tcp-send", "--to", HOST_B,
            "--port", "7000", "--bytes", str(size), timeout=60,
        )  # fmt: skip
        received = json.loads(sink.stdout.readline())
    finally:
        sink.kill()
        sink.wait(timeout=10)
    assert received == json.loads(sent.stdout)
    b = stats(prefix, "gwb")["datapath"]
    assert b["tun"]["merged_writes"] > 0, b["tun"]
    assert b["tun"]["write_drops"] == 0 and b["inbound"]["drops"] == {}


def test_stopping_the_gateways_removes_route_and_tun(static_pair: str) -> None:
    prefix = static_pair
    ping(prefix)
    assert "203.0.113.0/24 dev tnd0" in run("ip", "-n", f"{prefix}-gwa", "route").stdout
    run(sys.executable, "-m", "tests.tools.static_pair", "down", prefix, "--keep-logs")
    for node, remote in (("gwa", "203.0.113.0/24"), ("gwb", "198.51.100.0/24")):
        assert remote not in run("ip", "-n", f"{prefix}-{node}", "route").stdout
        links = run("ip", "-n", f"{prefix}-{node}", "link").stdout
        assert "tnd0" not in links
        assert run("ip", "netns", "pids", f"{prefix}-{node}").stdout.strip() == ""
    log = Path(f"/run/tunneld-static-pair/{prefix}/gwa.log").read_text()
    assert "route removed" in log and "stopped" in log
    with pytest.raises(AssertionError):
        ping(prefix)  # no tunnel, no route: site B is unreachable again
