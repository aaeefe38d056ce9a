"""scapy's independent ESP implementation as the oracle, both directions.

scapy (``scapy.layers.ipsec.SecurityAssociation``, 2.8) takes the AES-GCM
KEYMAT as ``crypt_key = key || salt`` and, in tunnel mode, wraps the inner
packet in ``tunnel_header`` with next header 4 or 41; with ``nat_t_header``
it puts a UDP header between the outer IP and ESP (RFC 3948). Its IVs are
random (``os.urandom(8)``), which our receiver must accept: the IV is read
from the wire, only our sender uses IV = sequence number. Its ESN support
needs seq-high passed in (``esn=``): it does not infer it.
"""

from __future__ import annotations

import logging
import struct

import pytest

logging.getLogger("scapy").setLevel(logging.ERROR)  # silence scapy's import-time chatter

from scapy.layers.inet import ICMP, IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402

from tunneld.dataplane.sa import InboundSA, OutboundSA  # noqa: E402
from tunneld.dataplane.udpencap import UdpKind, classify  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SALT = bytes.fromhex("5a17c0de")
KEYS = {"aes128": bytes(range(1, 17)), "aes256": bytes(range(33, 65))}
SPI = 0x7E57AB1E
OUTER = IP(src="192.0.2.1", dst="192.0.2.2")
NAT_T = UDP(sport=4500, dport=4500)


def inner_packets() -> list[bytes]:
    return [
        raw(IP(src="198.51.100.5", dst="203.0.113.7") / ICMP(id=7, seq=1) / (b"x" * 56)),
        raw(IP(src="198.51.100.5", dst="203.0.113.7") / UDP(sport=1, dport=2) / (b"y" * 1301)),
        raw(IPv6(src="2001:db8:a::5", dst="2001:db8:b::7") / UDP(sport=3, dport=4) / b"z"),
    ]


def scapy_sa(key: bytes, **kw: object) -> SecurityAssociation:
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo="AES-GCM",
        crypt_key=key + SALT,
        tunnel_header=OUTER,
        nat_t_header=NAT_T,
        **kw,
    )


def esp_bytes_from(outer: IP) -> bytes:
    """The UDP payload of a scapy IP/UDP/ESP packet, run through our demux."""
    datagram = IP(raw(outer))
    payload = raw(datagram[UDP].payload)
    kind, esp = classify(payload)
    assert kind is UdpKind.ESP
    return bytes(esp)


@pytest.mark.parametrize("key_name", list(KEYS))
def test_scapy_decrypts_what_tunneld_sealed(key_name: str) -> None:
    key = KEYS[key_name]
    out = OutboundSA(SPI, key, SALT)
    oracle = scapy_sa(key)
    for inner in inner_packets():
        nh = 41 if inner[0] >> 4 == 6 else 4
        packet = IP(raw(OUTER / NAT_T / Raw(out.encrypt(inner, nh))))
        assert packet.haslayer(ESP)
        decrypted = oracle.decrypt(packet)
        assert raw(decrypted) == inner


@pytest.mark.parametrize("key_name", list(KEYS))
def test_tunneld_decrypts_what_scapy_sealed(key_name: str) -> None:
    key = KEYS[key_name]
    oracle = scapy_sa(key)
    inb = InboundSA(SPI, key, SALT)
    for seq, inner in enumerate(inner_packets(), start=1):
        sealed = oracle.encrypt(IP(inner) if inner[0] >> 4 == 4 else IPv6(inner))
        esp = esp_bytes_from(sealed)
        assert struct.unpack(">II", esp[:8]) == (SPI, seq)
        nh = 41 if inner[0] >> 4 == 6 else 4
        assert inb.decrypt(esp) == (nh, inner)
    assert inb.packets == 3


@pytest.mark.parametrize("key_name", list(KEYS))
def test_esn_both_directions_across_2_32(key_name: str) -> None:
    key = KEYS[key_name]
    inner = inner_packets()[0]
    # tunneld -> scapy: scapy is told seq-high explicitly.
    out = OutboundSA(SPI, key, SALT, esn=True, initial_seq=2**32 + 9)
    packet = IP(raw(OUTER / NAT_T / Raw(out.encrypt(inner, 4))))
    assert raw(scapy_sa(key, esn_en=True, esn=1).decrypt(packet)) == inner
    # scapy -> tunneld: seq-high 0 on a fresh window, then across into subspace 1.
    inb = InboundSA(SPI, key, SALT, esn=True, replay_window=64)
    low = scapy_sa(key, esn_en=True, esn=0, seq_num=2**31)
    assert inb.decrypt(esp_bytes_from(low.encrypt(IP(inner)))) == (4, inner)
    first = scapy_sa(key, esn_en=True, esn=0, seq_num=2**32 - 1)
    assert inb.decrypt(esp_bytes_from(first.encrypt(IP(inner)))) == (4, inner)
    high = scapy_sa(key, esn_en=True, esn=1, seq_num=3)
    assert inb.decrypt(esp_bytes_from(high.encrypt(IP(inner)))) == (4, inner)
    assert inb.window.top == 2**32 + 3
