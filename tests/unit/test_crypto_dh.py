"""ike.dh / ike.crypto.DhPrivate against RFC 5903 §8, RFC 7748 §5.2/§6.1, RFC 8031 §2.1."""

from __future__ import annotations

import pytest

from ike.constants import DhGroup, NotifyType
from ike.crypto import DhPrivate, public_value_len
from ike.entropy import DeterministicEntropy
from ike.errors import LocalError, ParseError, PeerError


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5903 §8.1, 256-bit random ECP group.
P256 = {
    "i": "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
    "gix": "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
    "giy": "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
    "r": "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
    "grx": "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
    "gry": "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
    "girx": "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
}

# RFC 5903 §8.2, 384-bit random ECP group.
P384 = {
    "i": "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655"
    " E35B5380 41E649EE 3FAEF896 783AB194",
    "gix": "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6"
    " DE3AC808 ACB4BDB4 C88732AE E95F41AA",
    "giy": "9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E"
    " EB9FCFF3 C2C947DA E69B4C63 4573A81C",
    "r": "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942"
    " E0308312 916B8ED2 960E4BD5 5A7448FC",
    "grx": "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D"
    " 0D1AC43A 0336DEF9 6FDA41D0 774A3571",
    "gry": "DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF"
    " F83FA401 42209DFF 5EAAD96D B9E6386C",
    "girx": "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4"
    " D6031355 69B9E9D0 9CF5D4A2 70F59746",
}


@pytest.mark.parametrize(("group", "v"), [(DhGroup.ECP_256, P256), (DhGroup.ECP_384, P384)])
def test_rfc5903_vectors(group: DhGroup, v: dict[str, str]) -> None:
    i = DhPrivate.from_private_value(group, int(v["i"].replace(" ", ""), 16))
    r = DhPrivate.from_private_value(group, int(v["r"].replace(" ", ""), 16))
    # RFC 5903 §7: the KE payload carries x | y without the 0x04 prefix.
    assert i.public_bytes() == h(v["gix"]) + h(v["giy"])
    assert r.public_bytes() == h(v["grx"]) + h(v["gry"])
    # The shared secret is the x coordinate only, both ways round.
    assert i.shared_secret(r.public_bytes()) == h(v["girx"])
    assert r.shared_secret(i.public_bytes()) == h(v["girx"])


# RFC 7748 §5.2: two X25519 function vectors (scalar, u coordinate, output).
X25519_FUNCTION_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "out"), X25519_FUNCTION_VECTORS)
def test_rfc7748_x25519_function(scalar: str, u: str, out: str) -> None:
    key = DhPrivate.from_private_value(DhGroup.CURVE25519, h(scalar))
    assert key.shared_secret(h(u)) == h(out)


def test_rfc7748_diffie_hellman() -> None:
    # RFC 7748 §6.1.
    alice = DhPrivate.from_private_value(
        DhGroup.CURVE25519, h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = DhPrivate.from_private_value(
        DhGroup.CURVE25519, h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_bytes() == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_bytes() == h(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.shared_secret(bob.public_bytes()) == shared
    assert bob.shared_secret(alice.public_bytes()) == shared


@pytest.mark.parametrize(
    "small_order_u",
    [
        bytes(32),  # u = 0
        (1).to_bytes(32, "little"),  # u = 1
        # u = p - 1 ... encodings of points of small order (RFC 7748 §7 list)
        h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
)
def test_rfc8031_all_zero_shared_secret_rejected(small_order_u: bytes) -> None:
    key = DhPrivate.generate(DhGroup.CURVE25519, DeterministicEntropy(1))
    with pytest.raises(PeerError) as info:
        key.shared_secret(small_order_u)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("group", [DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521])
def test_ecp_point_not_on_curve_rejected(group: DhGroup) -> None:
    key = DhPrivate.generate(group, DeterministicEntropy(2))
    public = bytearray(DhPrivate.generate(group, DeterministicEntropy(3)).public_bytes())
    public[-1] ^= 1  # y no longer fits x
    with pytest.raises(PeerError) as info:
        key.shared_secret(bytes(public))
    assert info.value.notify == NotifyType.INVALID_SYNTAX
    with pytest.raises(PeerError):
        key.shared_secret(bytes(len(public)))  # (0, 0) is not on any of the curves


def test_ecp_coordinate_equal_to_prime_rejected() -> None:
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF  # RFC 5903 §3.1
    key = DhPrivate.generate(DhGroup.ECP_256, DeterministicEntropy(4))
    valid = DhPrivate.generate(DhGroup.ECP_256, DeterministicEntropy(5)).public_bytes()
    # x + p is the same residue but not a valid encoding.
    x = int.from_bytes(valid[:32], "big")
    if x + p < 2**256:
        with pytest.raises(PeerError):
            key.shared_secret((x + p).to_bytes(32, "big") + valid[32:])
    with pytest.raises(PeerError):
        key.shared_secret(p.to_bytes(32, "big") + valid[32:])


@pytest.mark.parametrize("group", [DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.CURVE25519])
def test_wrong_length_is_parse_error(group: DhGroup) -> None:
    key = DhPrivate.generate(group, DeterministicEntropy(6))
    good = DhPrivate.generate(group, DeterministicEntropy(7)).public_bytes()
    for bad in (good[:-1], good + b"\x00", b"", b"\x04" + good):
        with pytest.raises(ParseError):
            key.shared_secret(bad)


@pytest.mark.parametrize(
    ("group", "length"),
    [
        (DhGroup.ECP_256, 64),
        (DhGroup.ECP_384, 96),
        (DhGroup.ECP_521, 132),
        (DhGroup.CURVE25519, 32),
    ],
)
def test_generate_is_deterministic_and_agrees(group: DhGroup, length: int) -> None:
    a1 = DhPrivate.generate(group, DeterministicEntropy("a"))
    a2 = DhPrivate.generate(group, DeterministicEntropy("a"))
    b = DhPrivate.generate(group, DeterministicEntropy("b"))
    assert len(a1.public_bytes()) == length == public_value_len(group)
    assert a1.public_bytes() == a2.public_bytes()
    assert a1.public_bytes() != b.public_bytes()
    assert a1.shared_secret(b.public_bytes()) == b.shared_secret(a1.public_bytes())


class _Constant:
    def __init__(self, octet: int) -> None:
        self.octet = octet

    def random_bytes(self, n: int) -> bytes:
        return bytes([self.octet]) * n


def test_scalar_mapping_stays_in_range() -> None:
    # All-zero entropy maps to scalar 1, so the public value is the base point G
    # (RFC 5903 §3.1 gx, gy); all-0xff entropy must still give a valid key.
    one = DhPrivate.generate(DhGroup.ECP_256, _Constant(0))
    assert one.public_bytes() == h(
        "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
        "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
    )
    for group in (DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521):
        high = DhPrivate.generate(group, _Constant(0xFF))
        other = DhPrivate.generate(group, DeterministicEntropy(8))
        assert high.shared_secret(other.public_bytes()) == other.shared_secret(high.public_bytes())


def test_unsupported_group_and_bad_private_values() -> None:
    with pytest.raises(LocalError):
        DhPrivate.generate(DhGroup.MODP_2048, DeterministicEntropy(0))
    with pytest.raises(LocalError):
        DhPrivate.generate(99, DeterministicEntropy(0))  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        DhPrivate.from_private_value(DhGroup.ECP_256, 0)
    with pytest.raises(LocalError):
        DhPrivate.from_private_value(
            DhGroup.ECP_256, 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        )
    with pytest.raises(LocalError):
        DhPrivate.from_private_value(DhGroup.CURVE25519, b"short")


def test_repr_hides_private_value() -> None:
    i_hex = P256["i"].replace(" ", "")
    key = DhPrivate.from_private_value(DhGroup.ECP_256, int(i_hex, 16))
    text = repr(key) + str(key)
    assert "ECP_256" in text
    assert i_hex.lower() not in text.lower()
    assert str(int(i_hex, 16)) not in text
    x_scalar = X25519_FUNCTION_VECTORS[0][0]
    text = repr(DhPrivate.from_private_value(DhGroup.CURVE25519, h(x_scalar)))
    assert x_scalar not in text.lower()


@pytest.mark.parametrize("group", [DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521])
def test_group_order_constants(group: DhGroup) -> None:
    # (n - 1)·G = -G: same x as G, other y. This pins the orders that
    # generate() reduces into, so a wrong constant cannot hide.
    from ike.dh import _ECP_GROUPS

    n = _ECP_GROUPS[group].order
    coord = public_value_len(group) // 2
    g = DhPrivate.from_private_value(group, 1).public_bytes()
    minus_g = DhPrivate.from_private_value(group, n - 1).public_bytes()
    assert minus_g[:coord] == g[:coord]
    assert minus_g[coord:] != g[coord:]
    with pytest.raises(LocalError):
        DhPrivate.from_private_value(group, n)
