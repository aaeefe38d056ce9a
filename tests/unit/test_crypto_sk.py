"""SkCipher: the SK payload AEAD (RFC 5282 AES-GCM, RFC 7634 ChaCha20-Poly1305)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ike.constants import EncrId
from ike.crypto import SkCipher
from ike.errors import IntegrityError, LocalError


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4 (AES-128,
# 96-bit IV, 60-octet plaintext, 20-octet AAD). Its IV cafebabe|facedbaddecaf888
# is exactly salt | SK IV, so it pins the nonce construction of RFC 5282 §4.
GCM_TC4 = {
    "key": "feffe9928665731c6d6a8f9467308308",
    "salt": "cafebabe",
    "iv": "facedbaddecaf888",
    "pt": "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    "aad": "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    "ct": "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
    "tag": "5bc94fbc3221a5db94fae95ae7121a47",
}


def test_gcm16_known_answer() -> None:
    v = GCM_TC4
    sk = SkCipher(EncrId.AES_GCM_16, h(v["key"]) + h(v["salt"]))
    sealed = sk.seal(h(v["iv"]), h(v["aad"]), h(v["pt"]))
    assert sealed == h(v["ct"]) + h(v["tag"])
    assert sk.open(h(v["iv"]), h(v["aad"]), sealed) == h(v["pt"])
    assert (sk.iv_len, sk.icv_len) == (8, 16)


@pytest.mark.parametrize(("encr_id", "icv_len"), [(EncrId.AES_GCM_8, 8), (EncrId.AES_GCM_12, 12)])
def test_truncated_gcm_icv(encr_id: EncrId, icv_len: int) -> None:
    # RFC 4106 §6 / RFC 5282: the short ICVs are the leading octets of the tag.
    v = GCM_TC4
    sk = SkCipher(encr_id, h(v["key"]) + h(v["salt"]))
    sealed = sk.seal(h(v["iv"]), h(v["aad"]), h(v["pt"]))
    assert sealed == h(v["ct"]) + h(v["tag"])[:icv_len]
    assert sk.icv_len == icv_len
    assert sk.open(h(v["iv"]), h(v["aad"]), sealed) == h(v["pt"])
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(IntegrityError):
        sk.open(h(v["iv"]), h(v["aad"]), tampered)


def test_chacha20_poly1305_known_answer() -> None:
    # RFC 8439 §2.8.2 AEAD vector; its nonce 07000000 | 4041424344454647 is
    # salt | IV as RFC 7634 §2 builds it.
    key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    sk = SkCipher(EncrId.CHACHA20_POLY1305, key + h("07000000"))
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one"
        b" tip for the future, sunscreen would be it."
    )
    aad, iv = h("50515253c0c1c2c3c4c5c6c7"), h("4041424344454647")
    sealed = sk.seal(iv, aad, plaintext)
    assert sealed[:16] == h("d31a8d34648e60db7b86afbc53ef7ec2")
    assert sealed[-16:] == h("1ae10b594f09e26a7e902ecbd0600691")
    assert sk.open(iv, aad, sealed) == plaintext


@pytest.mark.parametrize(
    ("encr_id", "key_len"),
    [
        (EncrId.AES_GCM_16, 16),
        (EncrId.AES_GCM_16, 24),
        (EncrId.AES_GCM_16, 32),
        (EncrId.AES_GCM_8, 32),
        (EncrId.CHACHA20_POLY1305, 32),
    ],
)
def test_round_trip_and_tamper(encr_id: EncrId, key_len: int) -> None:
    sk = SkCipher(encr_id, bytes(range(key_len + 4)))
    iv, aad, plaintext = b"\x00" * 7 + b"\x01", b"header|sk-header", b"inner payloads" * 5
    sealed = sk.seal(iv, aad, plaintext)
    assert len(sealed) == len(plaintext) + sk.icv_len
    assert sk.open(iv, aad, sealed) == plaintext
    for i in (0, len(sealed) // 2, len(sealed) - 1):  # ciphertext and ICV octets
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(IntegrityError):
            sk.open(iv, aad, bytes(bad))
    with pytest.raises(IntegrityError):
        sk.open(iv, aad + b"x", sealed)  # header changed
    with pytest.raises(IntegrityError):
        sk.open(b"\x00" * 7 + b"\x02", aad, sealed)  # other IV
    with pytest.raises(IntegrityError):
        sk.open(iv, aad, sealed[: sk.icv_len - 1])  # shorter than the ICV
    with pytest.raises(IntegrityError):
        sk.open(iv[:4], aad, sealed)
    other_salt = SkCipher(encr_id, bytes(range(key_len)) + b"salt")
    with pytest.raises(IntegrityError):
        other_salt.open(iv, aad, sealed)


def test_empty_plaintext_still_authenticated() -> None:
    sk = SkCipher(EncrId.AES_GCM_16, bytes(36))
    sealed = sk.seal(bytes(8), b"aad", b"")
    assert len(sealed) == 16
    assert sk.open(bytes(8), b"aad", sealed) == b""
    with pytest.raises(IntegrityError):
        sk.open(bytes(8), b"aaD", sealed)


def test_bad_construction() -> None:
    with pytest.raises(LocalError):
        SkCipher(EncrId.AES_GCM_16, bytes(20 + 4))  # 20-octet AES key
    with pytest.raises(LocalError):
        SkCipher(EncrId.CHACHA20_POLY1305, bytes(16 + 4))
    with pytest.raises(LocalError):
        SkCipher(EncrId.AES_CBC, bytes(36))
    with pytest.raises(LocalError):
        SkCipher(EncrId.AES_GCM_16, bytes(36)).seal(bytes(12), b"", b"x")


def test_repr_hides_key_and_salt() -> None:
    key_with_salt = h("00112233445566778899aabbccddeeff") + h("a1b2c3d4")
    sk = SkCipher(EncrId.AES_GCM_16, key_with_salt)
    text = repr(sk)
    assert text == "SkCipher(AES_GCM_16, 128-bit, <redacted>)"
    assert "00112233" not in text and "a1b2c3d4" not in text


@given(st.binary(max_size=64), st.binary(max_size=80))
def test_open_of_garbage_only_raises_integrity_error(iv: bytes, data: bytes) -> None:
    sk = SkCipher(EncrId.AES_GCM_16, bytes(36))
    with pytest.raises(IntegrityError):
        sk.open(iv, b"aad", data)
