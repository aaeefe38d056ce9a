"""Ephemeral Diffie-Hellman for the KE payload: ECP groups and Curve25519.

Wire encodings (what goes into the Key Exchange Data of a KE payload):

- ECP groups 19/20/21 (RFC 5903 §7): ``x || y``, each coordinate as a
  big-endian integer padded to the field length, *without* the 0x04 prefix
  that SEC1 puts in front. The shared secret g^ir is the x coordinate only.
- Curve25519, group 31 (RFC 8031 §2): the 32-byte little-endian u coordinate;
  the shared secret is the 32-byte X25519 output.

Every check on the peer's value (length, point on the curve, non-zero shared
secret) raises a :class:`~ike.errors.PeerError` so the session answers with a
Notify instead of crashing. The private value never leaves this module: it is
not in any repr, exception message or attribute that prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from ike.constants import DhGroup, NotifyType
from ike.entropy import Entropy
from ike.errors import LocalError, ParseError, PeerError


@dataclass(frozen=True, slots=True)
class _EcpGroup:
    curve: ec.EllipticCurve
    coord_len: int  # octets per coordinate (RFC 5903 §7)
    order: int  # n, the order of the base point (RFC 5903 §3)


# Base point orders from RFC 5903 §3.1-§3.3 (identical to FIPS 186-4 D.1.2).
_ECP_GROUPS: dict[DhGroup, _EcpGroup] = {
    DhGroup.ECP_256: _EcpGroup(
        ec.SECP256R1(),
        32,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    DhGroup.ECP_384: _EcpGroup(
        ec.SECP384R1(),
        48,
        int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
            16,
        ),
    ),
    DhGroup.ECP_521: _EcpGroup(
        ec.SECP521R1(),
        66,
        int(
            "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA"
            "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
            16,
        ),
    ),
}

X25519_LEN = 32  # RFC 8031 §2: public values and shared secret are 32 octets

# Extra random octets drawn when picking an ECP scalar so that reducing
# mod (n - 1) leaves a bias below 2**-64 (FIPS 186-4 B.4.1 "extra random bits").
_SCALAR_EXTRA_BYTES = 8

SUPPORTED_GROUPS: tuple[DhGroup, ...] = (*_ECP_GROUPS, DhGroup.CURVE25519)

_PrivateKey = ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey


def public_value_len(group: DhGroup) -> int:
    """Length of the Key Exchange Data for ``group`` (RFC 5903 §7, RFC 8031 §2)."""
    if group is DhGroup.CURVE25519:
        return X25519_LEN
    ecp = _ECP_GROUPS.get(group)
    if ecp is None:
        raise LocalError(f"DH group {group!r} is not supported")
    return 2 * ecp.coord_len


class DhPrivate:
    """One ephemeral DH private value; use once per exchange, then drop."""

    __slots__ = ("_key", "group")

    def __init__(self, group: DhGroup, key: _PrivateKey) -> None:
        self.group = group
        self._key = key

    @classmethod
    def generate(cls, group: DhGroup, entropy: Entropy) -> DhPrivate:
        """A fresh private value drawn from the injected ``entropy``."""
        group = _as_group(group)
        if group is DhGroup.CURVE25519:
            # RFC 7748 §5: any 32 octets are a valid scalar; X25519 clamps them.
            raw = entropy.random_bytes(X25519_LEN)
            return cls(group, x25519.X25519PrivateKey.from_private_bytes(raw))
        ecp = _ECP_GROUPS[group]
        wide = entropy.random_bytes((ecp.order.bit_length() + 7) // 8 + _SCALAR_EXTRA_BYTES)
        scalar = int.from_bytes(wide, "big") % (ecp.order - 1) + 1  # in [1, n-1]
        return cls(group, ec.derive_private_key(scalar, ecp.curve))

    @classmethod
    def from_private_value(cls, group: DhGroup, value: int | bytes) -> DhPrivate:
        """Build from a known private value: for test vectors only.

        ECP groups take the scalar as an int (or big-endian bytes); Curve25519
        takes the 32-byte scalar string of RFC 7748.
        """
        group = _as_group(group)
        if group is DhGroup.CURVE25519:
            if not isinstance(value, bytes) or len(value) != X25519_LEN:
                raise LocalError("a Curve25519 private value is 32 bytes")
            return cls(group, x25519.X25519PrivateKey.from_private_bytes(value))
        ecp = _ECP_GROUPS[group]
        scalar = int.from_bytes(value, "big") if isinstance(value, bytes) else value
        if not 1 <= scalar < ecp.order:
            raise LocalError("ECP private value out of range [1, n-1]")
        return cls(group, ec.derive_private_key(scalar, ecp.curve))

    def public_bytes(self) -> bytes:
        """Our Key Exchange Data for the KE payload."""
        if isinstance(self._key, x25519.X25519PrivateKey):
            return self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        point = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return point[1:]  # RFC 5903 §7: no 0x04 prefix in IKE

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data, after validating it.

        Raises :class:`~ike.errors.ParseError` for a value of the wrong length
        and :class:`~ike.errors.PeerError` (INVALID_SYNTAX) for a point not on
        the curve or an all-zero X25519 result (RFC 6989, RFC 8031 §2.1).
        """
        expected = public_value_len(self.group)
        if len(peer_public) != expected:
            raise ParseError(
                f"KE data for group {self.group.name} is {len(peer_public)} octets,"
                f" expected {expected}"
            )
        if isinstance(self._key, x25519.X25519PrivateKey):
            return _x25519_exchange(self._key, peer_public)
        return _ecdh_exchange(self._key, peer_public)

    def __repr__(self) -> str:
        return f"DhPrivate({self.group.name}, <redacted>)"


def _as_group(group: DhGroup | int) -> DhGroup:
    try:
        group = DhGroup(group)
    except ValueError:
        raise LocalError(f"DH group {group} is not supported") from None
    if group not in SUPPORTED_GROUPS:
        raise LocalError(f"DH group {group.name} is not supported")
    return group


def _ecdh_exchange(key: ec.EllipticCurvePrivateKey, peer_public: bytes) -> bytes:
    try:
        # from_encoded_point checks 0 <= x, y < p and that the point is on
        # the curve: the ECP public value test RFC 6989 §2.3 requires.
        peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, b"\x04" + peer_public)
    except ValueError:
        raise PeerError(
            "peer ECP public value is not a point on the curve", NotifyType.INVALID_SYNTAX
        ) from None
    # RFC 5903 §7: the shared secret is the x coordinate, full field length.
    return key.exchange(ec.ECDH(), peer)


def _x25519_exchange(key: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
    try:
        secret = key.exchange(peer)
    except ValueError:
        # OpenSSL refuses a small-order peer value (all-zero output) itself.
        secret = bytes(X25519_LEN)
    if secret == bytes(X25519_LEN):
        # RFC 8031 §2.1: an all-zero shared secret MUST be rejected.
        raise PeerError(
            "peer X25519 value gives an all-zero shared secret", NotifyType.INVALID_SYNTAX
        )
    return secret
