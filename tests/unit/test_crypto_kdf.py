"""PRF, prf+, SKEYSEED, IKE and Child SA keys, AUTH octets (RFC 7296 §2.13-§2.18).

Vectors:
- RFC 4231 §4.2/§4.3 (HMAC-SHA-256/384/512 test cases 1 and 2).
- NIST CAVS "KDF135 IKEv2" SHA-1 count 0 ([g^ir length = 256], [DKM length = 1056]):
  SKEYSEED, DKM, DKM(Child SA), DKM(Child SA D-H), SKEYSEED(Rekey); as kept
  in libreswan programs/cavp/test.acvp.ikev2.run.
- NIST IKEv2 SHA-256 samples as kept in NSS gtests
  (security/nss/gtests/common/testvectors/ike-sha256-vectors.h, cases 6-10):
  SKEYSEED, prf+ to 132/32/15 octets, rekey SKEYSEED.
prf+ is also cross-checked against an independent stdlib ``hmac`` rendering.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac

import pytest

from ike.constants import PrfId
from ike.crypto import (
    PRF_PLUS_MAX_BLOCKS,
    ChildKeys,
    IkeKeys,
    Prf,
    auth_octets,
    derive_child_keys,
    derive_ike_keys,
    ike_keymat,
    prf_plus,
    psk_auth,
    rekey_skeyseed,
    skeyseed,
)
from ike.errors import LocalError


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- RFC 4231 --------------------------------------------------------------------

RFC4231 = [
    # test case 1: key = 0x0b * 20, data = "Hi There"
    (
        PrfId.HMAC_SHA2_256,
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    # test case 2: key = "Jefe", data = "what do ya want for nothing?"
    (
        PrfId.HMAC_SHA2_256,
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        PrfId.HMAC_SHA2_384,
        b"Jefe",
        b"what do ya want for nothing?",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
        "8e2240ca5e69e2c78b3239ecfab21649",
    ),
    (
        PrfId.HMAC_SHA2_512,
        b"Jefe",
        b"what do ya want for nothing?",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
]


@pytest.mark.parametrize(("prf_id", "key", "data", "mac"), RFC4231)
def test_prf_rfc4231(prf_id: PrfId, key: bytes, data: bytes, mac: str) -> None:
    prf = Prf(prf_id)
    assert prf(key, data) == h(mac)
    assert prf.output_len == prf.preferred_key_len == len(h(mac))


def test_prf_rejects_unknown_and_reprs_plainly() -> None:
    with pytest.raises(LocalError):
        Prf(99)  # type: ignore[arg-type]
    assert repr(Prf(PrfId.HMAC_SHA2_256)) == "Prf(HMAC_SHA2_256)"
    assert Prf(PrfId.HMAC_SHA2_256) == Prf(PrfId.HMAC_SHA2_256) != Prf(PrfId.HMAC_SHA2_384)


# --- prf+ ------------------------------------------------------------------------


def _prf_plus_reference(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """§2.13 written out with the stdlib hmac module, as an independent oracle."""
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = std_hmac.new(key, block + seed + bytes([n]), hash_name).digest()
        out += block
        n += 1
    return out[:length]


@pytest.mark.parametrize(
    ("prf_id", "hash_name"),
    [
        (PrfId.HMAC_SHA2_256, "sha256"),
        (PrfId.HMAC_SHA2_384, "sha384"),
        (PrfId.HMAC_SHA2_512, "sha512"),
    ],
)
@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 100, 1000])
def test_prf_plus_matches_reference(prf_id: PrfId, hash_name: str, length: int) -> None:
    key, seed = b"k" * 40, b"seed material"
    assert prf_plus(Prf(prf_id), key, seed, length) == _prf_plus_reference(
        hash_name, key, seed, length
    )


def test_prf_plus_iteration_limit() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    limit = PRF_PLUS_MAX_BLOCKS * prf.output_len  # §2.13: 255 blocks
    full = prf_plus(prf, b"k", b"s", limit)
    assert len(full) == limit == 255 * 32
    assert full == _prf_plus_reference("sha256", b"k", b"s", limit)
    with pytest.raises(LocalError):
        prf_plus(prf, b"k", b"s", limit + 1)
    with pytest.raises(LocalError):
        prf_plus(prf, b"k", b"s", -1)


# --- NIST CAVS KDF135 IKEv2, SHA-1, COUNT = 0 -----------------------------------

CAVS_SHA1 = {
    "ni": "32b50d5f4a3763f3",
    "nr": "9206a04b26564cb1",
    "gir": "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52",
    "gir_new": "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330",
    "spii": "34c9e7c188868785",
    "spir": "3ff77d760d2b2199",
    "skeyseed": "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7",
    "dkm": "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a0"
    "62768b76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b7"
    "02c979fa280870d2ed41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e42"
    "49520a441a81157435a7a56cc4",
    "dkm_child": "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cda"
    "bd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb"
    "35cf5580b1e521a8fe20754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b"
    "3f510b1c0a22f3e664994d234cb4",
    "dkm_child_dh": "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c662"
    "32eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4"
    "a5080d7d4b5666023a8bbb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901"
    "227cffc06e27899c7054d56fd74c",
    "skeyseed_rekey": "63e81194946ebd05df7df5ebf5d8750056bf1f1d",
}


def _v(name: str) -> bytes:
    return h(CAVS_SHA1[name])


def test_cavs_sha1_skeyseed_and_dkm() -> None:
    prf = Prf(PrfId.HMAC_SHA1)
    seed = skeyseed(prf, _v("ni"), _v("nr"), _v("gir"))
    assert seed == _v("skeyseed")
    dkm = prf_plus(prf, seed, _v("ni") + _v("nr") + _v("spii") + _v("spir"), 132)
    assert dkm == _v("dkm")


def test_cavs_sha1_derive_ike_keys_splits_dkm_in_order() -> None:
    # SHA-1: SK_d/SK_p 20 octets; AES-256-GCM: SK_e 32 + 4 salt, no SK_a.
    # 20 + 0 + 0 + 36 + 36 + 20 + 20 = 132 = the CAVS DKM length.
    keys = derive_ike_keys(
        PrfId.HMAC_SHA1,
        ni=_v("ni"),
        nr=_v("nr"),
        g_ir=_v("gir"),
        spi_i=_v("spii"),
        spi_r=_v("spir"),
        encr_key_len=32,
    )
    dkm = _v("dkm")
    assert keys.sk_d == dkm[:20]
    assert keys.sk_ai == keys.sk_ar == b""
    assert keys.sk_ei == dkm[20:56]
    assert keys.sk_er == dkm[56:92]
    assert keys.sk_pi == dkm[92:112]
    assert keys.sk_pr == dkm[112:132]


def test_cavs_sha1_child_keymat_and_rekey() -> None:
    prf = Prf(PrfId.HMAC_SHA1)
    sk_d = _v("dkm")[:20]
    # 132 octets = 2 x (62-octet key + 4-octet salt), initiator->responder first.
    child = derive_child_keys(prf, sk_d, _v("ni"), _v("nr"), key_len=62)
    assert child.key_ir + child.salt_ir + child.key_ri + child.salt_ri == _v("dkm_child")
    assert len(child.salt_ir) == len(child.salt_ri) == 4
    child_dh = derive_child_keys(prf, sk_d, _v("ni"), _v("nr"), 62, g_ir_new=_v("gir_new"))
    joined = child_dh.key_ir + child_dh.salt_ir + child_dh.key_ri + child_dh.salt_ri
    assert joined == _v("dkm_child_dh")
    rekeyed = rekey_skeyseed(prf, sk_d, _v("gir_new"), _v("ni"), _v("nr"))
    assert rekeyed == _v("skeyseed_rekey")


# --- NIST IKEv2 SHA-256 samples (NSS ike-sha256-vectors.h) --------------------------

NSS_NI, NSS_NR = h("3f302be1abcb28e1"), h("8c332ee006064c9b")
NSS_SPII, NSS_SPIR = h("40dac39e1e1a8640"), h("8619a1cf9a6e4c07")
NSS_GIR = h("0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29")
NSS_SKEYSEED = h("5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe")
NSS_DKM = h(
    "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531"
    "188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b"
    "8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74a"
    "d405c588662c14a04d0d36aa4ab55e90f8986d12d4aad"
)
NSS_GIR_NEW = h("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c")
NSS_SKEYSEED_REKEY = h("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398")


def test_nist_sha256_skeyseed_prf_plus_rekey() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    assert skeyseed(prf, NSS_NI, NSS_NR, NSS_GIR) == NSS_SKEYSEED
    seed = NSS_NI + NSS_NR + NSS_SPII + NSS_SPIR
    assert len(NSS_DKM) == 132
    for length in (132, 32, 15):
        assert prf_plus(prf, NSS_SKEYSEED, seed, length) == NSS_DKM[:length]
    assert rekey_skeyseed(prf, NSS_DKM[:32], NSS_GIR_NEW, NSS_NI, NSS_NR) == NSS_SKEYSEED_REKEY


def test_nist_sha256_ike_keymat_layout() -> None:
    # AES-128-GCM: 32 + 0 + 0 + 20 + 20 + 32 + 32 = 136 octets; the first 132 are the DKM.
    keys = ike_keymat(
        Prf(PrfId.HMAC_SHA2_256),
        NSS_SKEYSEED,
        ni=NSS_NI,
        nr=NSS_NR,
        spi_i=NSS_SPII,
        spi_r=NSS_SPIR,
        encr_key_len=16,
    )
    stream = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er + keys.sk_pi
    stream += keys.sk_pr
    assert len(stream) == 136
    assert stream[:132] == NSS_DKM
    assert [len(k) for k in (keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr)] == [
        32,
        20,
        20,
        32,
        32,
    ]


def test_integ_keys_come_between_sk_d_and_sk_e() -> None:
    # §2.14 order with a separate integrity transform (not used by the profile,
    # but the layout must not silently shift): SK_d | SK_ai | SK_ar | SK_ei ...
    prf = Prf(PrfId.HMAC_SHA2_256)
    keys = ike_keymat(
        prf, b"seed", ni=b"n" * 8, nr=b"m" * 8, spi_i=bytes(8), spi_r=bytes(8),
        encr_key_len=16, salt_len=0, integ_key_len=32,
    )  # fmt: skip
    stream = prf_plus(prf, b"seed", b"n" * 8 + b"m" * 8 + bytes(16), 32 + 64 + 32 + 64)
    assert keys.sk_ai == stream[32:64]
    assert keys.sk_ar == stream[64:96]
    assert keys.sk_ei == stream[96:112]
    with pytest.raises(LocalError):
        ike_keymat(prf, b"s", ni=b"n", nr=b"m", spi_i=b"short", spi_r=bytes(8), encr_key_len=16)


def test_ike_keys_role_helpers() -> None:
    keys = IkeKeys(b"d", b"", b"", b"ei", b"er", b"pi", b"pr")
    assert keys.outbound_sk_e(True) == keys.inbound_sk_e(False) == b"ei"
    assert keys.outbound_sk_e(False) == keys.inbound_sk_e(True) == b"er"
    assert keys.own_sk_p(True) == keys.peer_sk_p(False) == b"pi"
    assert keys.own_sk_p(False) == keys.peer_sk_p(True) == b"pr"


def test_child_keys_order_and_roles() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    child = derive_child_keys(prf, b"d" * 32, b"ni", b"nr", key_len=32)
    keymat = prf_plus(prf, b"d" * 32, b"ninr", 72)
    # §2.17 + RFC 4106 §8.1: (key | salt) initiator->responder, then responder->initiator.
    assert (child.key_ir, child.salt_ir) == (keymat[:32], keymat[32:36])
    assert (child.key_ri, child.salt_ri) == (keymat[36:68], keymat[68:72])
    assert child.outbound(True) == child.inbound(False) == (child.key_ir, child.salt_ir)
    assert child.outbound(False) == child.inbound(True) == (child.key_ri, child.salt_ri)
    # PFS: g^ir (new) goes in front of the nonces.
    pfs = derive_child_keys(prf, b"d" * 32, b"ni", b"nr", 16, g_ir_new=b"GIR")
    assert pfs.key_ir == prf_plus(prf, b"d" * 32, b"GIRninr", 16)
    with pytest.raises(LocalError):
        derive_child_keys(prf, b"d", b"ni", b"nr", key_len=0)


# --- AUTH octets and PSK (§2.15) -----------------------------------------------------


def test_auth_octets_layout() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    message, nonce, sk_p = b"IKE_SA_INIT bytes", b"N" * 32, b"P" * 32
    id_body = bytes([2, 0, 0, 0]) + b"gw.example.org"  # ID_FQDN, RESERVED, data
    expected = message + nonce + std_hmac.new(sk_p, id_body, hashlib.sha256).digest()
    assert auth_octets(message, nonce, prf, sk_p, id_body) == expected


def test_psk_auth_uses_key_pad() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    inner = std_hmac.new(b"secret", b"Key Pad for IKEv2", hashlib.sha256).digest()
    expected = std_hmac.new(inner, b"octets", hashlib.sha256).digest()
    assert psk_auth(prf, b"secret", b"octets") == expected
    assert psk_auth(prf, b"secreT", b"octets") != expected


# --- secrets stay out of repr ------------------------------------------------------------


def test_key_holders_redact_repr() -> None:
    keys = derive_ike_keys(
        PrfId.HMAC_SHA2_256, ni=NSS_NI, nr=NSS_NR, g_ir=NSS_GIR, spi_i=NSS_SPII,
        spi_r=NSS_SPIR, encr_key_len=32,
    )  # fmt: skip
    child = derive_child_keys(Prf(PrfId.HMAC_SHA2_256), keys.sk_d, NSS_NI, NSS_NR, 32)
    for holder, secrets in (
        (keys, [keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]),
        (child, [child.key_ir, child.key_ri, child.salt_ir, child.salt_ri]),
    ):
        text = repr(holder) + str(holder) + repr([holder]) + f"{holder!r}"
        assert "<redacted>" in text
        for secret in secrets:
            assert secret.hex() not in text.lower()
            assert repr(secret) not in text
    assert repr(keys) == "IkeKeys(<redacted>)"
    assert repr(child) == "ChildKeys(<redacted>)"
    assert isinstance(child, ChildKeys)
