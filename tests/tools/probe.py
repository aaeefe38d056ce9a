"""Sequence-numbered UDP probes through a tunnel, counted per direction; TCP stream checks.

    python -m tests.tools.probe echo --bind ADDR --port N [--token HEX] [--idle S] [--timeout S]
    python -m tests.tools.probe send --to ADDR --port N --count N [--bind ADDR] [--token HEX]
                                     [--rate PPS] [--window N] [--stall S] [--linger S]
                                     [--sizes 64,1372 | 30-1372] [--block N] [--gap S]
    python -m tests.tools.probe tcp-sink --bind ADDR --port N
    python -m tests.tools.probe tcp-send --to ADDR --port N --bytes N

(Only the standard library: it also runs as a plain script, ``python
.../tests/tools/probe.py``, inside ``ip netns exec``.)

``echo`` (the far site) prints ``READY`` once bound and sends the first intact
copy of every probe straight back: so the probes cross A -> B (``forward``)
and the echoes B -> A (``reverse``), one datagram each way per probe. A
duplicate is counted, never echoed, so each direction's figures are exact:
a reverse duplicate can only have been made on the way back. The sender ends
with a FIN probe (carrying the count it sent); the echo answers it with its
forward tally (JSON, also printed on its stdout) and exits shortly after.
It also exits after ``--idle`` quiet seconds (once probes came) or at
``--timeout``.

``send`` (the near site) prints one JSON report::

    {"role": "sender", "count", "send_errors", "stalls", "send_seconds",
     "total_seconds", "udp_bytes", "lost" (round trip),
     "started_at" (wall clock), "gaps": [[from, to], ...] (seconds since the start
     without any echo for more than --gap seconds: outages and how long they lasted),
     "forward": {direction} | null (the echo's tally; null if its FIN answer never came),
     "reverse": {direction}}
    direction = {"sent", "received", "unique", "lost", "duplicated", "reordered", "corrupt"}

``received`` counts intact probes of this run (duplicates included),
``corrupt`` everything else that arrived (altered, truncated, another run's),
``reordered`` first arrivals below the highest sequence number already seen.

Probe: ``MAGIC | token (16) | seq (8) | length (2) | filler`` (big endian), the filler a
function of the sequence number, so that a datagram altered on the way (a
data path reusing a buffer too early) is counted corrupt. The token is random
per run (or ``--token``): a capture of the underlay that contains it has
seen plaintext. Sizes (UDP payload bytes): ``--sizes 64,512,1372`` in turn,
or ``--sizes 30-1372`` every size of the range in a fixed order (every ESP
padding length occurs); ``--block N`` keeps each size for N probes in a row
(runs of equal sizes: UDP GSO on the gateways). 1372 is the most that fits
the tunnel's 1400-byte MTU in one IPv4/UDP packet.

Pacing: ``--rate PPS`` sends probe n at ``n / PPS`` seconds (``--rate 1000``:
one per millisecond; 0: as fast as the window allows), and at most
``--window`` probes are ever unanswered, so the sender is clocked by the
echoes and no socket buffer on the path can overflow: a loss reported here
is the path's, never the tool's. When the window is full and no echo comes
for ``--stall`` seconds, the probes in flight release their slots (so that
one loss does not stop the run; they still count as lost unless their echo
turns up later). At the end the sender waits for late echoes until
``--linger`` quiet seconds have passed.

``tcp-sink`` accepts one TCP connection and prints ``{"bytes", "sha256"}`` of
what it received; ``tcp-send`` sends a deterministic stream (SHAKE-128 of the
size) and prints the same two fields for what it sent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"PRB2"
TOKEN_LEN = 16
HEADER = struct.Struct(f"!4s{TOKEN_LEN}sQH")  # magic, run token, sequence number, length
FIN_SEQ = (1 << 64) - 1  # a FIN probe: its filler is the count sent (8 bytes)
_COUNT = struct.Struct("!Q")
MIN_SIZE = HEADER.size
MAX_SIZE = 1400 - 20 - 8  # the tunnel's 1400-byte MTU less the IPv4 and UDP headers
MAX_SEQ = 1 << 24  # per-run bookkeeping is one byte per sequence number
_PATTERN = bytes(range(256)) * (65536 // 256 + 2)
SOCKET_BUFFER = 4 << 20
# Linux <asm-generic/socket.h>; the socket module names them only from Python 3.12
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
FIN_TRIES = 5
ECHO_AFTER_FIN = 1.0  # seconds the echo keeps answering repeated FINs


# --- the probes ---------------------------------------------------------------


def datagram(token: bytes, seq: int, size: int) -> bytes:
    """Probe number ``seq`` of the run ``token``: exactly ``size`` bytes."""
    if not MIN_SIZE <= size <= len(_PATTERN) - 256:
        raise ValueError(f"probe size {size} below {MIN_SIZE} or too large")
    start = seq % 256
    return HEADER.pack(MAGIC, token, seq, size) + _PATTERN[start : start + size - HEADER.size]


def fin(token: bytes, count: int) -> bytes:
    return HEADER.pack(MAGIC, token, FIN_SEQ, HEADER.size + _COUNT.size) + _COUNT.pack(count)


def parse(data: bytes) -> tuple[bytes, int] | None:
    """(token, seq) of an intact probe or FIN, else None."""
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        return None
    _, token, seq, length = HEADER.unpack_from(data)
    if length != len(data):  # truncated or padded on the way
        return None
    if seq == FIN_SEQ:
        return (token, seq) if len(data) == HEADER.size + _COUNT.size else None
    return (token, seq) if data == datagram(token, seq, len(data)) else None


def parse_sizes(spec: str) -> list[int]:
    """``"64,1372"``: these sizes in turn; ``"30-1372"``: every size of the range, shuffled
    by a fixed stride (7919 is prime, so each occurs once per cycle)."""
    if "-" in spec:
        low, high = (int(x) for x in spec.split("-", 1))
        span = high - low + 1
        if span < 1:
            raise ValueError(f"empty size range {spec!r}")
        sizes = [low + (i * 7919) % span for i in range(span)]
    else:
        sizes = [int(x) for x in spec.split(",")]
    for size in sizes:
        if not MIN_SIZE <= size <= 65507:
            raise ValueError(f"probe size {size} outside {MIN_SIZE}..65507")
    return sizes


def size_of(seq: int, sizes: Sequence[int], block: int = 1) -> int:
    return sizes[(seq // block) % len(sizes)]


def udp_bytes(count: int, sizes: Sequence[int], block: int = 1) -> int:
    """UDP payload bytes of probes 0..count-1 (to check byte counters against)."""
    return sum(size_of(seq, sizes, block) for seq in range(count))


@dataclass
class Tally:
    """What arrived in one direction. ``token`` None: adopt the first intact probe's."""

    token: bytes | None = None
    received: int = 0
    unique: int = 0
    reordered: int = 0
    corrupt: int = 0
    _seen: bytearray = field(default_factory=bytearray, repr=False)
    _highest: int = -1

    def record(self, data: bytes) -> int | None:
        """Count one datagram; its sequence number if it is the first copy, else None."""
        parsed = parse(data)
        if parsed is not None and self.token is None and parsed[1] != FIN_SEQ:
            self.token = parsed[0]
        if parsed is None or parsed[0] != self.token or not 0 <= parsed[1] < MAX_SEQ:
            self.corrupt += 1
            return None
        seq = parsed[1]
        self.received += 1
        if seq >= len(self._seen):
            self._seen.extend(bytes(max(seq + 1 - len(self._seen), len(self._seen))))
        if self._seen[seq]:
            return None
        self._seen[seq] = 1
        self.unique += 1
        if seq < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, seq)
        return seq

    def report(self, sent: int | None) -> dict[str, int | None]:
        return {
            "sent": sent,
            "received": self.received,
            "unique": self.unique,
            "lost": None if sent is None else sent - self.unique,
            "duplicated": self.received - self.unique,
            "reordered": self.reordered,
            "corrupt": self.corrupt,
        }


# --- sockets --------------------------------------------------------------------


def _udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:  # as root the *FORCE options ignore net.core.[rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    """Every datagram queued now (unconnected socket: ICMP errors are not reported)."""
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65535))
        except BlockingIOError:
            return out


def _emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)


# --- the echo -------------------------------------------------------------------


@dataclass
class Echo:
    tally: Tally
    echoed: int = 0
    echo_errors: int = 0
    sent: int | None = None  # from the sender's FIN

    def report(self) -> dict[str, Any]:
        return {
            "role": "echo",
            "forward": self.tally.report(self.sent),
            "echoed": self.echoed,
            "echo_errors": self.echo_errors,
        }

    def handle(self, sock: socket.socket, data: bytes, src: Any) -> bool:
        """Echo a first copy, answer a FIN; True for a FIN of this run."""
        parsed = parse(data)
        if parsed is not None and parsed[1] == FIN_SEQ:
            if self.tally.token not in (None, parsed[0]):
                self.tally.corrupt += 1
                return False
            self.sent = _COUNT.unpack_from(data, HEADER.size)[0]
            with contextlib.suppress(OSError):
                sock.sendto(json.dumps(self.report()).encode(), src)
            return True
        if self.tally.record(data) is not None:
            try:
                sock.sendto(data, src)
                self.echoed += 1
            except OSError:  # no way back: the sender counts it lost
                self.echo_errors += 1
        return False


def run_echo(bind: str, port: int, token: bytes | None, idle: float, timeout: float) -> int:
    sock = _udp(bind, port)
    echo = Echo(Tally(token))
    print("READY", flush=True)
    quit_at, last = time.monotonic() + timeout, None
    while (now := time.monotonic()) < quit_at:
        if last is not None and now - last > idle:
            break
        if not select.select([sock], [], [], min(0.1, quit_at - now))[0]:
            continue
        for data, src in _drain(sock):
            last = time.monotonic()
            if echo.handle(sock, data, src):
                quit_at = min(quit_at, last + ECHO_AFTER_FIN)
    _emit(echo.report())
    return 0


# --- the sender ---------------------------------------------------------------------


@dataclass(frozen=True)
class SendOptions:
    to: str
    port: int
    count: int
    token: bytes
    bind: str | None = None
    rate: float = 0.0  # probes per second; 0: window-paced only
    window: int = 64
    stall: float = 1.0
    linger: float = 1.0
    sizes: tuple[int, ...] = (64, 512, 1372)
    block: int = 1
    gap: float = 0.5  # report silences longer than this


@dataclass
class _Sender:
    opts: SendOptions
    sock: socket.socket
    tally: Tally
    start: float
    sent: int = 0
    written_off: int = 0  # probes that stopped holding a window slot (stalls)
    stalls: int = 0
    send_errors: int = 0
    last_echo: float = 0.0  # the window's clock (a stall resets it)
    last_arrival: float | None = None
    gaps: list[list[float]] = field(default_factory=list)

    def unanswered(self) -> int:
        return max(0, self.sent - self.tally.unique - self.written_off)

    def due(self, now: float) -> int:
        if self.opts.rate <= 0:
            return self.opts.count
        return min(self.opts.count, int((now - self.start) * self.opts.rate) + 1)

    def send_due(self, now: float) -> None:
        opts = self.opts
        while self.sent < self.due(now) and self.unanswered() < opts.window:
            size = size_of(self.sent, opts.sizes, opts.block)
            try:
                self.sock.sendto(datagram(opts.token, self.sent, size), (opts.to, opts.port))
            except BlockingIOError:
                return  # send buffer full: again after the next wait
            except OSError:  # e.g. no route while the tunnel is down: a lost probe
                self.send_errors += 1
            self.sent += 1

    def wait(self, timeout: float) -> None:
        """Up to ``timeout`` seconds for echoes; tally every one queued."""
        if select.select([self.sock], [], [], max(0.0, timeout))[0]:
            for data, _src in _drain(self.sock):
                if self.tally.record(data) is not None:
                    self.arrived(time.monotonic())

    def arrived(self, now: float) -> None:
        """A first copy came back: note the silence before it if it was long."""
        self.last_echo = now
        last = self.start if self.last_arrival is None else self.last_arrival
        if now - last > self.opts.gap:
            self.gaps.append([round(last - self.start, 3), round(now - self.start, 3)])
        self.last_arrival = now

    def step(self) -> None:
        """Send what is due, then wait for an echo or the next probe's time."""
        now = time.monotonic()
        self.send_due(now)
        if self.unanswered() >= self.opts.window:
            if now - self.last_echo >= self.opts.stall:  # window stuck: slide on
                self.written_off += self.unanswered()
                self.stalls += 1
                self.last_echo = now
                return
            self.wait(self.last_echo + self.opts.stall - now)
        elif self.opts.rate > 0:
            self.wait(self.start + self.sent / self.opts.rate - time.monotonic())
        else:
            self.wait(0.001)  # the send buffer was full


def _ask_echo(sender: _Sender) -> dict[str, Any] | None:
    """FIN until the echo answers with its report (the FIN or its answer may be lost)."""
    opts = sender.opts
    for _ in range(FIN_TRIES):
        with contextlib.suppress(OSError):
            sender.sock.sendto(fin(opts.token, opts.count), (opts.to, opts.port))
        until = time.monotonic() + 1.0
        while (left := until - time.monotonic()) > 0:
            if not select.select([sender.sock], [], [], left)[0]:
                break
            for data, _src in _drain(sender.sock):
                if data.startswith(b"{"):
                    with contextlib.suppress(ValueError):
                        report: dict[str, Any] = json.loads(data)
                        return report
                sender.tally.record(data)  # a late echo
    return None


def run_send(opts: SendOptions) -> dict[str, Any]:
    family_host = opts.bind or ("::" if ":" in opts.to else "0.0.0.0")
    sock = _udp(family_host, 0)
    started_at, start = time.time(), time.monotonic()
    sender = _Sender(opts, sock, Tally(opts.token), start, last_echo=start)
    while sender.sent < opts.count:
        sender.step()
    send_seconds = time.monotonic() - start
    while sender.tally.unique < opts.count and time.monotonic() - sender.last_echo < opts.linger:
        sender.wait(sender.last_echo + opts.linger - time.monotonic())
    total_seconds = time.monotonic() - start
    echo = _ask_echo(sender)
    sock.close()
    return {
        "role": "sender",
        "count": opts.count,
        "lost": opts.count - sender.tally.unique,
        "send_errors": sender.send_errors,
        "stalls": sender.stalls,
        "send_seconds": round(send_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "udp_bytes": udp_bytes(opts.count, opts.sizes, opts.block),
        "started_at": started_at,
        "gaps": sender.gaps,
        "forward": None if echo is None else echo["forward"],
        "reverse": sender.tally.report(None if echo is None else echo["echoed"]),
    }


# --- TCP ----------------------------------------------------------------------------


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
    _emit({"bytes": total, "sha256": digest.hexdigest()})
    return 0


def tcp_send(to: str, port: int, size: int, timeout: float) -> int:
    data = tcp_stream(size)
    with socket.create_connection((to, port), timeout=timeout) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the sink to close: everything arrived
    _emit({"bytes": size, "sha256": hashlib.sha256(data).hexdigest()})
    return 0


# --- command line -------------------------------------------------------------------


def _token(text: str | None) -> bytes | None:
    if text is None:
        return None
    token = bytes.fromhex(text)
    if len(token) != TOKEN_LEN:
        raise argparse.ArgumentTypeError(f"--token must be {TOKEN_LEN} bytes in hex")
    return token


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.tools.probe", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--token", help=f"{TOKEN_LEN} bytes in hex (default: the first probe's)")
    e.add_argument("--idle", type=float, default=5.0, help="quit after this quiet time")
    e.add_argument("--timeout", type=float, default=120.0, help="quit after this time")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--bind", help="local address (default: any)")
    s.add_argument("--token", help=f"{TOKEN_LEN} bytes in hex (default: random)")
    s.add_argument("--rate", type=float, default=0.0, help="probes per second (0: window only)")
    s.add_argument("--window", type=int, default=64, help="most probes unanswered")
    s.add_argument("--stall", type=float, default=1.0, help="full window, no echo: slide on")
    s.add_argument("--linger", type=float, default=1.0, help="quiet time to wait at the end")
    s.add_argument("--sizes", default="64,512,1372", help="'A,B,C' in turn or 'MIN-MAX'")
    s.add_argument("--block", type=int, default=1, help="probes in a row of one size")
    s.add_argument("--gap", type=float, default=0.5, help="report silences longer than this")
    for name in ("tcp-sink", "tcp-send"):
        t = sub.add_parser(name)
        t.add_argument("--bind" if name == "tcp-sink" else "--to", required=True)
        t.add_argument("--port", type=int, required=True)
        t.add_argument("--timeout", type=float, default=30.0)
    sub.choices["tcp-send"].add_argument("--bytes", type=int, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "tcp-sink":
        return tcp_sink(args.bind, args.port, args.timeout)
    if args.cmd == "tcp-send":
        return tcp_send(args.to, args.port, args.bytes, args.timeout)
    try:
        token = _token(args.token)
        sizes = parse_sizes(args.sizes) if args.cmd == "send" else []
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    if args.cmd == "echo":
        return run_echo(args.bind, args.port, token, args.idle, args.timeout)
    opts = SendOptions(
        args.to, args.port, args.count, token or os.urandom(TOKEN_LEN), bind=args.bind,
        rate=args.rate, window=args.window, stall=args.stall, linger=args.linger,
        sizes=tuple(sizes), block=args.block, gap=args.gap,
    )  # fmt: skip
    _emit(run_send(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
