"""Sequence-numbered UDP probes: count loss, duplicates and reordering end to end.

    python -m tests.tools.probe echo --bind ADDR --port N
    python -m tests.tools.probe send --to ADDR --port N --count 10000 --marker HEX
    python -m tests.tools.probe tcp-sink --bind ADDR --port N
    python -m tests.tools.probe tcp-send --to ADDR --port N --bytes N

``echo`` prints ``READY`` once bound, sends every probe back to its sender,
and counts what it saw; a ``FIN`` datagram makes it answer with its counters
(JSON) and exit. ``send`` sends ``count`` probes and prints one JSON report:
round-trip loss/duplicates/reordering, and the echo's counts for the forward
direction.

Probe payload: marker (16 bytes) | sequence number (8 bytes, big endian) |
the marker repeated up to the probe's size. A capture that finds the marker
has seen plaintext. Sizes change every 500 probes (64, 512, 1372 bytes: 1372
is the most that fits the tunnel's 1400-byte MTU in one IPv4/UDP packet) so
that both small packets and full-size GSO runs are exercised.

``tcp-sink`` accepts one TCP connection and prints ``{"bytes", "sha256"}`` of
what it received; ``tcp-send`` sends a deterministic stream (SHAKE-128 of the
size) and prints the same two fields for what it sent.

Pacing: at most ``--window`` probes are in flight (sent, not yet echoed), so
the sender is clocked by the echoes and socket buffers cannot overflow: a
loss reported here is a loss on the path, not in the tool. A probe not echoed
within ``--wait`` seconds stops holding its slot of the window.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

_SEQ = struct.Struct("!Q")
MARKER_LEN = 16
SIZES = (64, 512, 1372)
SIZE_BLOCK = 500
FIN = b"FIN"


@dataclass
class Counts:
    """What one end saw: unique probes, duplicates, out-of-order, not ours."""

    received: int = 0
    unique: int = 0
    duplicates: int = 0
    reordered: int = 0
    bad: int = 0
    _seen: set[int] = field(default_factory=set, repr=False)
    _highest: int = -1

    def see(self, payload: bytes, marker: bytes) -> None:
        self.received += 1
        if len(payload) < MARKER_LEN + _SEQ.size or not payload.startswith(marker):
            self.bad += 1
            return
        seq = _SEQ.unpack_from(payload, MARKER_LEN)[0]
        if payload != probe_payload(marker, seq):
            self.bad += 1
        elif seq in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(seq)
            self.unique += 1
            if seq < self._highest:
                self.reordered += 1
            self._highest = max(self._highest, seq)

    def report(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def probe_payload(marker: bytes, seq: int) -> bytes:
    size = SIZES[(seq // SIZE_BLOCK) % len(SIZES)]
    head = marker + _SEQ.pack(seq)
    return (head + marker * (size // MARKER_LEN + 1))[:size]


def _udp(addr: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def echo(bind: str, port: int, marker: bytes, timeout: float) -> int:
    sock = _udp(bind)
    sock.bind((bind, port))
    sock.settimeout(timeout)
    print("READY", flush=True)
    counts = Counts()
    while True:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            print(json.dumps({"error": "idle timeout", **counts.report()}), flush=True)
            return 1
        if data == FIN:
            sock.sendto(json.dumps(counts.report()).encode(), peer)
            print(json.dumps(counts.report()), flush=True)
            return 0
        counts.see(data, marker)
        sock.sendto(data, peer)


def send(to: str, port: int, marker: bytes, count: int, window: int, wait: float) -> int:
    sock = _udp(to)
    sock.connect((to, port))
    sock.setblocking(False)
    counts = Counts()
    start = time.monotonic()
    next_seq = written_off = 0
    while next_seq < count:
        while next_seq < count and next_seq - counts.unique - written_off < window:
            sock.send(probe_payload(marker, next_seq))
            next_seq += 1
        if not _drain(sock, counts, marker, wait):
            written_off = next_seq - counts.unique  # stalled: forget what is in flight
    deadline = time.monotonic() + wait
    while counts.unique < count and time.monotonic() < deadline:
        _drain(sock, counts, marker, deadline - time.monotonic())
    elapsed = time.monotonic() - start
    forward = _fin(sock)
    report = {
        "sent": count,
        "lost": count - counts.unique,
        **counts.report(),
        "elapsed_s": round(elapsed, 3),
        "pps": round(count / elapsed),
        "forward": forward,
    }
    print(json.dumps(report), flush=True)
    return 0


def _drain(sock: socket.socket, counts: Counts, marker: bytes, wait: float) -> bool:
    """Receive every echo queued within ``wait`` seconds; False if none came."""
    ready, _, _ = select.select([sock], [], [], max(wait, 0.0))
    if not ready:
        return False
    while True:
        try:
            counts.see(sock.recv(65535), marker)
        except BlockingIOError:
            return True


def _fin(sock: socket.socket) -> dict[str, int] | None:
    """Ask the echo for its counters (a few tries: the FIN itself may be lost)."""
    for _ in range(5):
        sock.send(FIN)
        ready, _, _ = select.select([sock], [], [], 1.0)
        while ready:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            if data.startswith(b"{"):
                result: dict[str, int] = json.loads(data)
                return result
    return None


def tcp_stream(size: int) -> bytes:
    return hashlib.shake_128(str(size).encode()).digest(size)


def tcp_sink(bind: str, port: int, timeout: float) -> int:
    with socket.create_server((bind, port)) as server:
        server.settimeout(timeout)
        print("READY", flush=True)
        conn, _ = server.accept()
        conn.settimeout(timeout)
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)
    return 0


def tcp_send(to: str, port: int, size: int, timeout: float) -> int:
    data = tcp_stream(size)
    with socket.create_connection((to, port), timeout=timeout) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the sink to close: everything arrived
    print(json.dumps({"bytes": size, "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.probe", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--marker", required=True, help=f"{MARKER_LEN} bytes in hex")
    e.add_argument("--timeout", type=float, default=60.0, help="give up after this idle time")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--marker", required=True)
    s.add_argument("--count", type=int, default=10000)
    s.add_argument("--window", type=int, default=64, help="probes in flight at most")
    s.add_argument("--wait", type=float, default=2.0, help="seconds to wait for echoes")
    ts = sub.add_parser("tcp-sink")
    ts.add_argument("--bind", required=True)
    ts.add_argument("--port", type=int, required=True)
    ts.add_argument("--timeout", type=float, default=30.0)
    tc = sub.add_parser("tcp-send")
    tc.add_argument("--to", required=True)
    tc.add_argument("--port", type=int, required=True)
    tc.add_argument("--bytes", type=int, required=True)
    tc.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.cmd == "tcp-sink":
        return tcp_sink(args.bind, args.port, args.timeout)
    if args.cmd == "tcp-send":
        return tcp_send(args.to, args.port, args.bytes, args.timeout)
    marker = bytes.fromhex(args.marker)
    if len(marker) != MARKER_LEN:
        parser.error(f"--marker must be {MARKER_LEN} bytes")
    if args.cmd == "echo":
        return echo(args.bind, args.port, marker, args.timeout)
    return send(args.to, args.port, marker, args.count, args.window, args.wait)


if __name__ == "__main__":
    sys.exit(main())
