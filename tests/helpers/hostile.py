"""The attacker's side of tests/netns/test_hostile_netns.py (issue #9, "Hostile networks").

The attacker sits in the lab's WAN namespace with an address of its own on
the bridge (:data:`ATTACKER`) and sends spoofed datagrams through a raw
socket: floods with tests/tools/flood.py (:class:`Flood`), a handful of
crafted IKE datagrams with this module's own ``send`` command
(:func:`spoof`), run as ``python -m tests.helpers.hostile send`` inside the
namespace. What the tests measure from outside the daemons lives here too:
a gateway's resident memory (:func:`rss_kb`), its status polled in the
background (:class:`StatusPoller`), TCP throughput through the tunnel
(:func:`iperf`, per-second intervals) and captures of the IKE datagrams on a
bridge port (:class:`Capture`, :func:`ike_datagrams`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ATTACKER = "192.0.2.99"  # the attacker's own address on the WAN bridge (lab.sh: PREFIX-br)
NON_ESP_MARKER = bytes(4)  # RFC 3948 §2.2: IKE on the NAT-T port
IPERF_PORT = 5201


# --- the attacker -------------------------------------------------------------------------


def arm_attacker(lab: Any) -> None:
    """Give the WAN namespace :data:`ATTACKER` on its bridge (idempotent)."""
    bridge = f"{lab.prefix}-br"
    shown = lab.run("wan", "ip", "-4", "-o", "addr", "show", "dev", bridge).stdout
    if ATTACKER not in shown:
        lab.run("wan", "ip", "addr", "add", f"{ATTACKER}/24", "dev", bridge)


@dataclass
class Flood:
    """tests/tools/flood.py running in the WAN namespace; ``result()`` is its JSON line plus
    the wall-clock window in which it sent (``window``)."""

    proc: subprocess.Popen[str]
    launched: float
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, lab: Any, *args: str) -> Flood:
        proc = lab.popen(
            "wan", sys.executable, "-m", "tests.tools.flood", *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        return cls(proc, time.time())

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        if not self.report:
            out, err = self.proc.communicate(timeout=timeout)
            ended = time.time()
            assert self.proc.returncode == 0, f"flood failed: {err}"
            self.report = json.loads(out.strip().splitlines()[-1])
            self.report["window"] = (ended - self.report["seconds"], ended)
        return self.report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def spoof(
    lab: Any, datagrams: list[bytes], *, src: str, dst: str, sport: int, dport: int,
    marker: bool = False, gap: float = 0.0,
) -> int:  # fmt: skip
    """Send ``datagrams`` from ``src:sport`` (spoofed) to ``dst:dport`` out of the WAN
    namespace; ``marker``: prefix the non-ESP marker (IKE on port 4500). Returns how many."""
    argv = ["send", "--src", src, "--dst", dst, "--sport", str(sport), "--dport", str(dport)]
    argv += ["--gap", str(gap)] + (["--marker"] if marker else [])
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns("wan"), sys.executable, "-m", __name__, *argv],
        input="".join(d.hex() + "\n" for d in datagrams),
        capture_output=True, text=True, timeout=60 + gap * len(datagrams), cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def _send_main(args: argparse.Namespace) -> int:
    from tests.helpers.packets import udp_packet

    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    sent = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        payload = (NON_ESP_MARKER if args.marker else b"") + bytes.fromhex(line.strip())
        raw.sendto(udp_packet(args.src, args.dst, payload, args.sport, args.dport), (args.dst, 0))
        sent += 1
        if args.gap:
            time.sleep(args.gap)
    print(sent)
    return 0


# --- the gateways, seen from outside ----------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process (``ip netns exec`` execs tunneld: the Popen's pid is its pid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Sample:
    at: float
    rss_kb: int
    status: dict[str, Any]


class StatusPoller:
    """Polls a gateway's status (control socket) and RSS every ``interval`` seconds in a
    thread, keeping every sample; a failed poll (a restarting gateway) is skipped."""

    def __init__(self, gw: Any, interval: float = 0.25) -> None:
        self.gw = gw
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                status = self.gw.status()
                self.samples.append(Sample(time.time(), rss_kb(self.gw.proc.pid), status))
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


# --- throughput ---------------------------------------------------------------------------


@dataclass
class IperfRun:
    """One iperf3 TCP stream site A -> site B: per-second intervals in wall-clock time."""

    intervals: list[tuple[float, float, float]]  # (start, end, Mbit/s)
    retransmits: int | None

    def during(self, start: float, end: float) -> list[float]:
        """Mbit/s of the intervals that lie wholly inside [start, end]."""
        return [mbps for a, b, mbps in self.intervals if a >= start and b <= end]


def _listening(lab: Any, port: int) -> bool:
    out = lab.run("b", "ss", "-Htln", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


def iperf(lab: Any, host: str, seconds: int, port: int = IPERF_PORT) -> IperfRun:
    """``seconds`` of one TCP stream from site A to ``host`` (site B), reported per second
    (the first second of slow start left out: ``-O 1``)."""
    server = lab.popen(
        "b", "iperf3", "-s", "-1", "-B", host, "-p", str(port),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while not _listening(lab, port):
            assert time.monotonic() < deadline, "iperf3 server not listening"
            time.sleep(0.05)
        launched = time.time()
        client = lab.run(
            "a", "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-O", "1", "-i", "1",
            "-J", "--connect-timeout", "3000", check=False, timeout=seconds + 30,
        )  # fmt: skip
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    report = json.loads(client.stdout)
    assert "error" not in report, report["error"]
    # iperf3 starts its clock when the connection is up (a millisecond after launch here);
    # the omitted second (-O 1) comes first
    origin = launched + 1.0
    intervals = [
        (origin + i["sum"]["start"], origin + i["sum"]["end"], i["sum"]["bits_per_second"] / 1e6)
        for i in report["intervals"]
        if not i["sum"].get("omitted")
    ]
    retransmits = report["end"].get("sum_sent", {}).get("retransmits")
    return IperfRun(intervals, retransmits)


# --- captures -------------------------------------------------------------------------------


class Capture:
    """tcpdump on one port of the WAN bridge (``PREFIX-wa``: what gw-a sends and receives;
    frames forwarded between ports never pass the bridge device itself). ``sent_by_gateway``:
    only the frames that gateway sends (``-Q in`` on its bridge port), never the attacker's
    spoofed ones on their way to it."""

    def __init__(
        self, lab: Any, path: Path, port: str = "wa", *, sent_by_gateway: bool = False
    ) -> None:
        self.path = path
        direction = ["-Q", "in"] if sent_by_gateway else []
        self.proc = lab.popen(
            "wan", "tcpdump", "-i", f"{lab.prefix}-{port}", *direction, "-nn", "-U",
            "--immediate-mode", "-s", "0", "-w", str(path), "udp",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": the capture is armed
        assert b"listening" in line, line

    def stop(self) -> bytes:
        time.sleep(0.2)  # the last datagram is on the wire
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        return self.path.read_bytes()


@dataclass(frozen=True)
class IkeDatagram:
    src: str
    dst: str
    sport: int
    dport: int
    data: bytes  # the IKE message (the non-ESP marker stripped)


def ike_datagrams(pcap: bytes) -> list[IkeDatagram]:
    """The IKE datagrams of a capture: UDP 500, or 4500 with the non-ESP marker; not ESP,
    not NAT keepalives."""
    from tests.helpers.packets import UDP, ipv4_packets

    found = []
    for src, dst, proto, sport, dport, payload in ipv4_packets(pcap):
        if proto != UDP:
            continue
        if 500 in (sport, dport):
            found.append(IkeDatagram(src, dst, sport, dport, payload))
        elif 4500 in (sport, dport) and payload[:4] == NON_ESP_MARKER and len(payload) > 4:
            found.append(IkeDatagram(src, dst, sport, dport, payload[4:]))
    return found


# --- python -m tests.helpers.hostile send ... -------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.hostile")
    sub = parser.add_subparsers(dest="cmd", required=True)
    send = sub.add_parser("send", help="hex datagrams on stdin, one a line, spoofed")
    send.add_argument("--src", required=True)
    send.add_argument("--dst", required=True)
    send.add_argument("--sport", type=int, required=True)
    send.add_argument("--dport", type=int, required=True)
    send.add_argument("--marker", action="store_true", help="prefix the non-ESP marker")
    send.add_argument("--gap", type=float, default=0.0, help="seconds between datagrams")
    return _send_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
