"""Sequence-numbered UDP probes through the tunnel: a paced sender and an echo.

    python probe_util.py echo --bind HOST --port PORT [--idle 1.5] [--timeout 60]
    python probe_util.py send --to HOST --port PORT --count N [--rate PPS] [--burst B]
                              [--sizes 64,1372]

Each datagram is ``MAGIC | run token (8) | seq (4, big endian) | pattern``;
its UDP payload size is ``sizes[seq % len(sizes)]`` and the pattern is a
function of the sequence number, so a datagram that arrives altered (a data
path that reuses a buffer too early) is counted as ``corrupt``. The echo sends
every datagram straight back and, once idle (no datagram for ``--idle``
seconds after the first one) or at ``--timeout``, prints one JSON line with
what it saw in the forward direction. The sender prints one JSON line with the
round trip: ``lost`` (sequence numbers never echoed intact), ``duplicated``
(echoes beyond the first per sequence number), ``reordered`` (echoes arriving
below the highest sequence number already seen) and ``udp_bytes`` (the UDP
payload bytes of one pass, to check byte counters against).

Losses must come from the tunnel, never from this tool: both sockets get large
forced buffers, the sender paces itself (``--rate`` in bursts of ``--burst``)
and never has more than ``--window`` probes unanswered, so neither side's
receive buffer can overflow even if the other stalls. Only the standard
library is used, so it runs as a plain script inside ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

MAGIC = b"PRB1"
HEADER = struct.Struct("!4s8sI")  # magic, run token, sequence number
SOCKET_BUFFER = 4 << 20
PATTERN = bytes(range(256)) * 40  # long enough for any probe size below 9000
# Linux <asm-generic/socket.h>; the socket module names them only from Python 3.12
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _socket(bind: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        try:  # as root the *FORCE options ignore net.core.[rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.bind(bind)
    return sock


def datagram(token: bytes, seq: int, size: int) -> bytes:
    """The probe with sequence number ``seq``: ``size`` bytes (at least the header)."""
    start = seq % 256
    return HEADER.pack(MAGIC, token, seq) + PATTERN[start : start + size - HEADER.size]


def _intact(data: bytes) -> bool:
    """Whether ``data`` is a probe exactly as :func:`datagram` built it."""
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        return False
    _, token, seq = HEADER.unpack_from(data)
    return data == datagram(token, seq, len(data))


def _emit(report: dict[str, object]) -> None:
    print(json.dumps(report), flush=True)


# --- the echo (in site B) -------------------------------------------------------


def run_echo(host: str, port: int, idle: float, timeout: float) -> int:
    sock = _socket((host, port))
    seen: dict[int, int] = {}
    received = corrupt = 0
    _emit({"ready": True})
    deadline = time.monotonic() + timeout
    sock.settimeout(max(0.0, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            break
        if not _intact(data):
            corrupt += 1
            continue
        received += 1
        seq = HEADER.unpack_from(data)[2]
        seen[seq] = seen.get(seq, 0) + 1
        sock.sendto(data, addr)
        sock.settimeout(max(0.0, min(idle, deadline - time.monotonic())))
    _emit(
        {
            "role": "echo",
            "received": received,
            "unique": len(seen),
            "duplicated": received - len(seen),
            "corrupt": corrupt,
            "max_seq": max(seen, default=-1),
        }
    )
    return 0


# --- the sender (in site A) ------------------------------------------------------


class _Tally:
    """What came back, per sequence number."""

    def __init__(self, count: int, token: bytes) -> None:
        self.count = count
        self.token = token
        self.echoes = bytearray(count)  # saturating per-seq echo count
        self.received = self.unique = self.reordered = self.corrupt = 0
        self.highest = -1

    def add(self, data: bytes) -> None:
        if not _intact(data):
            self.corrupt += 1
            return
        _, token, seq = HEADER.unpack_from(data)
        if token != self.token or seq >= self.count:
            self.corrupt += 1
            return
        self.received += 1
        if self.echoes[seq] == 0:
            self.unique += 1
        self.echoes[seq] = min(255, self.echoes[seq] + 1)
        if seq < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, seq)


def _drain(sock: socket.socket, tally: _Tally) -> bool:
    """Read every queued echo; True if there was one."""
    got = False
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return got
        tally.add(data)
        got = True


def run_send(args: argparse.Namespace) -> int:
    sock = _socket(("0.0.0.0", 0))
    sock.connect((args.to, args.port))
    sock.setblocking(False)
    token = os.urandom(8)
    tally = _Tally(args.count, token)
    sizes = [max(HEADER.size, int(n)) for n in args.sizes.split(",")]
    start = last_echo = time.monotonic()
    sent = 0
    while sent < args.count:
        # pacing: at most `rate` per second on average, sent `burst` at a time; the
        # window only waits for echoes while they flow (lost probes must not stall it)
        now = time.monotonic()
        allowed = min(args.count, int((now - start) * args.rate) + args.burst)
        stalled = now - last_echo > args.linger
        while sent < allowed and (sent - tally.unique < args.window or stalled):
            try:
                sock.send(datagram(token, sent, sizes[sent % len(sizes)]))
            except BlockingIOError:  # send buffer full: try again after a pause
                break
            sent += 1
        if _drain(sock, tally):
            last_echo = time.monotonic()
        select.select([sock], [], [], args.burst / args.rate)
    send_time = time.monotonic() - start
    last = time.monotonic()
    while tally.unique < args.count and time.monotonic() - last < args.linger:
        if select.select([sock], [], [], args.linger)[0]:
            _drain(sock, tally)
            last = time.monotonic()
    _emit(
        {
            "role": "sender",
            "sent": sent,
            "echoed": tally.received,
            "unique": tally.unique,
            "lost": args.count - tally.unique,
            "duplicated": tally.received - tally.unique,
            "reordered": tally.reordered,
            "corrupt": tally.corrupt,
            "send_seconds": round(send_time, 3),
            "total_seconds": round(time.monotonic() - start, 3),
            "udp_bytes": sum(sizes[i % len(sizes)] for i in range(args.count)),
        }
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--bind", required=True)
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--idle", type=float, default=1.5)
    echo.add_argument("--timeout", type=float, default=60.0)
    send = sub.add_parser("send")
    send.add_argument("--to", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--count", type=int, required=True)
    send.add_argument("--rate", type=float, default=5000.0, help="probes per second")
    send.add_argument("--burst", type=int, default=25)
    send.add_argument("--window", type=int, default=500, help="most probes unanswered")
    send.add_argument("--sizes", default="64", help="UDP payload sizes, in turn (comma-separated)")
    send.add_argument("--linger", type=float, default=1.0, help="idle wait for late echoes")
    args = p.parse_args(argv)
    if args.cmd == "echo":
        return run_echo(args.bind, args.port, args.idle, args.timeout)
    return run_send(args)


if __name__ == "__main__":
    sys.exit(main())
