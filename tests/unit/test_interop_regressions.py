"""Bugs found by running tunneld against strongSwan (tests/interop), reproduced without it.

1. ESP with ChaCha20-Poly1305 (RFC 7634). IKE negotiated it, but the Child
   SA's cipher never reached the data plane, which sealed and opened every
   ESP packet with AES-GCM under the ChaCha20-Poly1305 keys. Two tunneld
   gateways agreed with each other (same wrong cipher on both sides), so only
   strongSwan noticed: "ESP decryption or ICV verification failed" on its
   side, ``auth_failed`` drops on ours. Fixed by carrying the transform in
   ``ChildSaUp.encr`` into ``tunneld.childsas.data_plane_sas`` and
   ``dataplane.esp.new_aead``.

   The packets below were captured on the lab's WAN bridge (tcpdump, UDP 4500)
   with charon 5.9.8 + kernel-libipsec as IKE initiator, and the KEYMAT
   (32-byte key | 4-byte salt per direction) is from charon's log at
   ``chd=4``: throwaway keys of a lab run, not secrets.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from sessionpair import SessionPair, config_pair

from ike.constants import EncrId
from ike.events import ChildSaKeys, ChildSaUp
from tunneld.childsas import data_plane_sas
from tunneld.dataplane import esp
from tunneld.dataplane.sa import DropReason, EspDrop, InboundSA

# charon: "encryption initiator key" (strongSwan -> tunneld) and "responder key".
KEYMAT_I_TO_R = bytes.fromhex(
    "628e3aa815af0ec3c2f9034672165f148b11bd4c9e5f72174d62aac0ba5a4d35349c1620"
)
KEYMAT_R_TO_I = bytes.fromhex(
    "4053ee701479788a10596fa7ab04f4a42c50907e27027e16c145e5633eb7190f2141ddb4"
)
SPI_TUNNELD_IN, SPI_SWAN_IN = 0xED5F6C53, 0x3EA03EEF
# ESP (UDP 4500 payload) from strongSwan: ICMP echo requests 203.0.113.10 -> 198.51.100.10.
# Note libipsec's IV is a counter of its own, not the sequence number.
SWAN_ESP = [
    bytes.fromhex(
        "ed5f6c5300000001c7e0ea62d5866a784f19fef611ef808e2e7a359d0b2dc6c896f16cfd3a408385"
        "b772e7100140f8116946f8e8c8f792a96d2f7fa7a4d8df78166c17cd6728c758a81680ef85603c17"
        "fbfa71a546c0ab3eda6630dacfbd8f5749a49b0583fa2b52704df85d99068504530f8c2b28f2b4ea"
    ),
    bytes.fromhex(
        "ed5f6c5300000002c7e0ea62d5866a7b4c26c61a66b1eea8e353c92b66554af96d290d166b85ac80"
        "e3a309e7f080001cb214d03d5c9c4045d0a976c56ef6d9cb9a086ce11b974e827b37929aa4fd4c80"
        "e8a1fb4f492b0ce3f8ac09d45c94f8dedbf489d24976262ab0304b7f5254abb39685631bf32fdc1d"
    ),
]


def _chacha_child_up() -> ChildSaUp:
    """The ChildSaUp tunneld (the responder) emitted for the captured Child SA."""
    return ChildSaUp(
        inbound_spi=SPI_TUNNELD_IN,
        outbound_spi=SPI_SWAN_IN,
        keys=ChildSaKeys(
            KEYMAT_I_TO_R[:32], KEYMAT_I_TO_R[32:], KEYMAT_R_TO_I[:32], KEYMAT_R_TO_I[32:]
        ),
        encr=EncrId.CHACHA20_POLY1305,
        esn=False,
        local_ts=(ipaddress.ip_network("198.51.100.0/24"),),
        remote_ts=(ipaddress.ip_network("203.0.113.0/24"),),
        algorithms="chacha20poly1305-noesn",
        remote_addr=("192.0.2.2", 4500),
    )


def test_strongswan_chacha20poly1305_packets_decrypt() -> None:
    inbound, _ = data_plane_sas(_chacha_child_up(), replay_window=64)
    for seq, packet in enumerate(SWAN_ESP, start=1):
        next_header, inner = inbound.decrypt(packet)
        assert next_header == esp.NEXT_HEADER_IPV4
        assert len(inner) == 84 and inner[9] == 1  # IPv4 total length, ICMP
        assert (inner[12:16], inner[16:20]) == (
            ipaddress.ip_address("203.0.113.10").packed,
            ipaddress.ip_address("198.51.100.10").packed,
        )
        assert inbound.window.top == seq
    assert inbound.packets == 2 and not any(inbound.drops.values())


def test_the_old_aes_gcm_default_fails_on_strongswans_packet() -> None:
    """What the bug looked like: same keys, AES-GCM instead of the negotiated cipher."""
    wrong = InboundSA(SPI_TUNNELD_IN, KEYMAT_I_TO_R[:32], KEYMAT_I_TO_R[32:])
    with pytest.raises(EspDrop) as caught:
        wrong.decrypt(SWAN_ESP[0])
    assert caught.value.reason is DropReason.AUTH_FAILED


def test_our_chacha20poly1305_packets_open_as_rfc7634_says() -> None:
    """What strongSwan does with its responder KEYMAT: nonce = salt | IV, AAD = SPI | seq."""
    _, outbound = data_plane_sas(_chacha_child_up(), replay_window=64)
    inner = bytes(range(45))  # 45 + 2 needs one padding byte to reach a multiple of 4
    packet = outbound.encrypt(inner, esp.NEXT_HEADER_IPV4)
    spi, seq, iv = struct.unpack_from(">IIQ", packet)
    assert (spi, seq, iv) == (SPI_SWAN_IN, 1, 1)
    key, salt = KEYMAT_R_TO_I[:32], KEYMAT_R_TO_I[32:]
    plaintext = ChaCha20Poly1305(key).decrypt(salt + packet[8:16], packet[16:], packet[:8])
    assert plaintext == inner + bytes((1, 1, esp.NEXT_HEADER_IPV4))


def establish(pair: SessionPair) -> SessionPair:
    pair.start()
    pair.run_until(pair.established)
    return pair


ORACLES = {EncrId.AES_GCM_16: AESGCM, EncrId.CHACHA20_POLY1305: ChaCha20Poly1305}


@pytest.mark.parametrize(
    ("proposal", "encr"),
    [("chacha20poly1305", EncrId.CHACHA20_POLY1305), ("aes128gcm16", EncrId.AES_GCM_16)],
)
def test_child_sa_up_names_the_negotiated_esp_cipher(proposal: str, encr: EncrId) -> None:
    pair = establish(SessionPair(*config_pair(esp=(proposal,))))
    for side in ("i", "r"):
        event = pair.child_up(side)
        assert event.encr is encr
        _, outbound = data_plane_sas(event, replay_window=64)
        packet = outbound.encrypt(b"\x45" + bytes(27), esp.NEXT_HEADER_IPV4)
        oracle = ORACLES[encr](event.keys.outbound_key)
        nonce = event.keys.outbound_salt + packet[8:16]
        assert oracle.decrypt(nonce, packet[16:], packet[:8])[:28] == b"\x45" + bytes(27)


def test_new_aead_refuses_ciphers_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="transform 12 is not supported"):
        esp.new_aead(bytes(32), bytes(4), int(EncrId.AES_CBC))
    with pytest.raises(ValueError, match="ChaCha20-Poly1305 key must be 32 bytes"):
        esp.new_aead(bytes(16), bytes(4), esp.ENCR_CHACHA20_POLY1305)
    assert (esp.ENCR_AES_GCM_16, esp.ENCR_CHACHA20_POLY1305) == (
        EncrId.AES_GCM_16,
        EncrId.CHACHA20_POLY1305,
    )
