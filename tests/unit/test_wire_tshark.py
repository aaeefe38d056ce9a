"""Wireshark (tshark) as an independent oracle for the SK payload with AES-GCM-16.

tunneld seals an IKE_AUTH request with ``encrypt_message``; tshark, given the
SK_e key and salt through its ``ikev2_decryption_table``, must verify the ICV
(RFC 5282: nonce = salt || IV, AAD = IKE header || SK header) and dissect the
inner payloads as we meant them.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from ike.constants import (
    AuthMethod,
    EncrId,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from ike.errors import IntegrityError
from ike.payloads import (
    AuthPayload,
    IdPayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
)
from ike.wire import Message, decrypt_message, encrypt_message

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

SPI_I = bytes.fromhex("5151515151515151")
SPI_R = bytes.fromhex("7272727272727272")
KEY = bytes(range(100, 132))  # a test key, AES-256
SALT = bytes.fromhex("0a0b0c0d")
GCM_256_16 = "AES-GCM-256 with 16 octet ICV [RFC5282]"  # wireshark's name for it
FIELDS = [
    "isakmp.id.data.fqdn",
    "isakmp.auth.method",
    "isakmp.auth.data",
    "isakmp.prop.protoid",
    "isakmp.spi",
    "isakmp.tf.id.encr",
    "isakmp.tf.id.esn",
    "isakmp.ts.start_ipv4",
    "isakmp.ts.end_ipv4",
    "isakmp.notify.msgtype",
    "isakmp.enc.pad_length",
    "_ws.expert",
]


class Gcm:
    iv_len = 8
    icv_len = 16

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead, self._salt = AESGCM(key), salt

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, ct_and_icv, aad)
        except InvalidTag:
            raise IntegrityError("SK ICV mismatch") from None


REQUEST = Message(
    spi_i=SPI_I,
    spi_r=SPI_R,
    exchange_type=ExchangeType.IKE_AUTH,
    flags=HeaderFlag.INITIATOR,
    message_id=1,
    payloads=[
        IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"left.example.org"),
        AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(range(32))),
        SaPayload(
            (
                Proposal(
                    1,
                    ProtocolId.ESP,
                    (
                        Transform(TransformType.ENCR, EncrId.AES_GCM_16, key_length=256),
                        Transform(TransformType.ESN, EsnId.NO_ESN),
                    ),
                    spi=bytes.fromhex("c1c2c3c4"),
                ),
            )
        ),
        TsPayload(
            PayloadType.TSi,
            (TrafficSelector.from_network(ipaddress.IPv4Network("198.51.100.0/24")),),
        ),
        TsPayload(
            PayloadType.TSr,
            (TrafficSelector.from_network(ipaddress.IPv4Network("203.0.113.0/25")),),
        ),
        NotifyPayload(NotifyType.INITIAL_CONTACT),
    ],
)


def tshark_fields(datagram: bytes, key: bytes, tmp_path: Path) -> list[str]:
    pcap = tmp_path / "sk.pcap"
    frame = Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=500, dport=500)
    wrpcap(str(pcap), [frame / datagram])
    # Wireshark's UAT record: SPIi, SPIr, SK_ei, SK_er (key || salt), cipher, SK_ai, SK_ar, integ.
    sk_e = (key + SALT).hex()
    uat = f'{SPI_I.hex()},{SPI_R.hex()},{sk_e},{sk_e},"{GCM_256_16}",,,"NONE [RFC4306]"'
    cmd = ["tshark", "-r", str(pcap), "-o", f"uat:ikev2_decryption_table:{uat}", "-T", "fields"]
    cmd += ["-E", "separator=|"] + [arg for f in FIELDS for arg in ("-e", f)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return out.rstrip("\n").split("|")


def test_tshark_verifies_and_dissects_our_sk_payload(tmp_path: Path) -> None:
    datagram = encrypt_message(REQUEST, Gcm(KEY, SALT), bytes.fromhex("0000000000000001"), 3)
    got = dict(zip(FIELDS, tshark_fields(datagram, KEY, tmp_path), strict=True))
    assert got == {
        "isakmp.id.data.fqdn": "left.example.org",
        "isakmp.auth.method": "2",
        "isakmp.auth.data": bytes(range(32)).hex(),
        "isakmp.prop.protoid": "3",
        "isakmp.spi": "c1c2c3c4",
        "isakmp.tf.id.encr": "20",
        "isakmp.tf.id.esn": "0",
        "isakmp.ts.start_ipv4": "198.51.100.0,203.0.113.0",
        "isakmp.ts.end_ipv4": "198.51.100.255,203.0.113.127",
        "isakmp.notify.msgtype": "16384",
        "isakmp.enc.pad_length": "3",
        "_ws.expert": "",  # no "Integrity Checksum Data is incorrect", no malformation
    }
    assert decrypt_message(datagram, Gcm(KEY, SALT)) == REQUEST


def test_tshark_rejects_the_icv_under_another_key(tmp_path: Path) -> None:
    # The same oracle must be able to say no, or the test above proves nothing.
    datagram = encrypt_message(REQUEST, Gcm(KEY, SALT), bytes.fromhex("0000000000000002"))
    got = dict(zip(FIELDS, tshark_fields(datagram, bytes(32), tmp_path), strict=True))
    assert "Integrity Checksum Data is incorrect" in got["_ws.expert"]
    assert got["isakmp.id.data.fqdn"] == ""
