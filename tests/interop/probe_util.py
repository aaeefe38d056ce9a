"""Sequence-numbered UDP probes through a tunnel: count every loss and duplicate.

    python -m tests.interop.probe_util echo --bind ADDR --port P --count N --run-id R
    python -m tests.interop.probe_util send --bind ADDR --dst ADDR --port P --count N --run-id R

``echo`` runs at the far site: it prints ``ready`` once bound, sends every
probe straight back, and on exit prints its own tally (the A -> B direction)
as one JSON line. ``send`` runs at the near site: it sends probes 0..N-1 and
tallies the echoes (the B -> A direction), also as one JSON line.

Why it cannot lose packets by itself: the sender keeps at most ``window``
probes unanswered (self-clocking on the echoes, like a TCP window), so no
socket buffer on the path ever holds more than ``window`` probes; receive
buffers are enlarged on top. A probe whose echo does not come within
``stall`` seconds releases its window slot (so one loss does not stop the
run), but it still counts as lost unless its echo turns up before the end.

Each probe carries a magic, the run id, its sequence number and its length,
followed by filler derived from the sequence number; the receiver rebuilds
the expected bytes and counts anything else as corrupt. Sizes cycle through
``min_size..max_size`` so that every ESP padding length occurs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

MAGIC = b"HIXP"
HEADER = struct.Struct("!4sIIH")  # magic, run id, sequence number, total length
FIN_SEQ = 0xFFFFFFFF  # a FIN probe ends the echo server's run early
# 1400-byte tunnel MTU (tunneld's default, libipsec's ipsec0) minus IPv4 and UDP headers.
MAX_PAYLOAD = 1400 - 20 - 8
_PATTERN = bytes(range(256)) * ((MAX_PAYLOAD // 256) + 2)
RCVBUF = 4 * 1024 * 1024


def probe_size(seq: int, min_size: int, max_size: int) -> int:
    """Deterministic sizes that walk the whole range (7919 is prime, so all occur)."""
    return min_size + (seq * 7919) % (max_size - min_size + 1)


def make_probe(run_id: int, seq: int, size: int) -> bytes:
    if not HEADER.size <= size <= MAX_PAYLOAD:
        raise ValueError(f"probe size {size} outside {HEADER.size}..{MAX_PAYLOAD}")
    start = seq % 256
    return HEADER.pack(MAGIC, run_id, seq, size) + _PATTERN[start : start + size - HEADER.size]


def parse_probe(data: bytes, run_id: int) -> int | None:
    """The sequence number of an intact probe of this run, else None."""
    if len(data) < HEADER.size:
        return None
    magic, rid, seq, size = HEADER.unpack_from(data)
    if magic != MAGIC or rid != run_id or size != len(data):
        return None
    if seq != FIN_SEQ and data != make_probe(run_id, seq, size):
        return None
    return int(seq)


@dataclass
class Tally:
    """What one end saw: every sequence number 0..count-1 exactly once is the goal."""

    count: int
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    corrupt: int = 0
    reordered: int = 0  # arrivals below the highest sequence number seen so far
    elapsed: float = 0.0
    _seen: bytearray = field(default_factory=bytearray, repr=False)
    _highest: int = -1

    def __post_init__(self) -> None:
        self._seen = bytearray(self.count)

    def record(self, seq: int | None) -> bool:
        """Count one datagram; True if it is a first arrival."""
        self.received += 1
        if seq is None or not 0 <= seq < self.count:
            self.corrupt += 1
            return False
        if seq < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, seq)
        if self._seen[seq]:
            self.duplicates += 1
            return False
        self._seen[seq] = 1
        self.unique += 1
        return True

    @property
    def lost(self) -> int:
        return self.count - self.unique

    def report(self, **extra: object) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {**out, "lost": self.lost, **extra}


def _socket(bind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((bind, port))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65535))
        except BlockingIOError:
            return out


def echo(bind: str, port: int, count: int, run_id: int, idle: float, timeout: float) -> Tally:
    """Echo every probe back; stop on FIN, after ``idle`` quiet seconds, or at ``timeout``."""
    tally = Tally(count)
    sock = _socket(bind, port)
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    first = last = None
    done = False
    while not done:
        now = time.monotonic()
        if now > deadline or (last is not None and now - last > idle):
            break
        if not sel.select(0.1):
            continue
        for data, src in _drain(sock):
            seq = parse_probe(data, run_id)
            if seq == FIN_SEQ:
                done = True
                continue
            last = time.monotonic()
            first = first or last
            tally.record(seq)
            with contextlib.suppress(OSError):  # no way back: the sender counts it lost
                sock.sendto(data, src)
    tally.elapsed = round((last or 0.0) - (first or 0.0), 3)
    return tally


@dataclass(frozen=True)
class SendOptions:
    count: int
    run_id: int
    window: int = 32
    stall: float = 0.25  # seconds without an echo before the window slides on
    grace: float = 1.0  # seconds to wait for late echoes at the end
    min_size: int = HEADER.size
    max_size: int = MAX_PAYLOAD


def send(bind: str, dst: str, port: int, opts: SendOptions) -> dict[str, object]:
    """Send probes 0..count-1 with at most ``window`` unanswered; tally the echoes."""
    tally = Tally(opts.count)
    sock = _socket(bind, 0)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    start = time.monotonic()
    sent = inflight = stalls = send_errors = 0
    quiet_since = time.monotonic()
    while tally.unique < opts.count:
        while sent < opts.count and inflight < opts.window:
            size = probe_size(sent, opts.min_size, opts.max_size)
            try:
                sock.sendto(make_probe(opts.run_id, sent, size), (dst, port))
                inflight += 1
            except OSError:  # e.g. no route while the tunnel is down: a lost probe
                send_errors += 1
            sent += 1
        wait = opts.stall if sent < opts.count else opts.grace
        if sel.select(wait):
            for data, _src in _drain(sock):
                if tally.record(parse_probe(data, opts.run_id)):
                    inflight = max(0, inflight - 1)
                    quiet_since = time.monotonic()
        elif sent < opts.count:
            stalls, inflight = stalls + 1, 0  # count them lost for pacing; tally decides
        elif time.monotonic() - quiet_since >= opts.grace:
            break
    tally.elapsed = round(time.monotonic() - start, 3)
    fin = HEADER.pack(MAGIC, opts.run_id, FIN_SEQ, HEADER.size)
    for _ in range(3):  # the echo server may stop early; it also stops when idle
        with contextlib.suppress(OSError):
            sock.sendto(fin, (dst, port))
    return tally.report(sent=sent, send_errors=send_errors, stalls=stalls, window=opts.window)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probe_util", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("echo", "send"):
        s = sub.add_parser(name)
        s.add_argument("--bind", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--count", type=int, required=True)
        s.add_argument("--run-id", type=int, required=True)
    e = sub.choices["echo"]
    e.add_argument("--idle", type=float, default=3.0)
    e.add_argument("--timeout", type=float, default=60.0)
    s = sub.choices["send"]
    s.add_argument("--dst", required=True)
    s.add_argument("--window", type=int, default=32)
    s.add_argument("--min-size", type=int, default=HEADER.size)
    s.add_argument("--max-size", type=int, default=MAX_PAYLOAD)
    args = p.parse_args(argv)
    if args.mode == "echo":
        t = echo(args.bind, args.port, args.count, args.run_id, args.idle, args.timeout)
        result = t.report()
    else:
        opts = SendOptions(
            args.count, args.run_id, args.window, min_size=args.min_size, max_size=args.max_size
        )
        result = send(args.bind, args.dst, args.port, opts)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
