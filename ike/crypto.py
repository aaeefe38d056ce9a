"""IKEv2 key schedule, SK payload AEAD and AUTH octets (RFC 7296, RFC 5282).

The key schedule, in the order an IKE SA lives through it:

1. IKE_SA_INIT: ``SKEYSEED = prf(Ni | Nr, g^ir)`` (§2.14) and
   ``{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
   prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)`` -> :func:`derive_ike_keys`.
2. Each Child SA: ``KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)`` (§2.17)
   -> :func:`derive_child_keys`.
3. IKE SA rekey: ``SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)`` with
   the *old* SA's PRF (§2.18) -> :func:`rekey_skeyseed`, then
   :func:`ike_keymat` with the new PRF, SPIs and nonces.

With AES-GCM and ChaCha20-Poly1305 there is no integrity transform, so
SK_ai/SK_ar are empty and each SK_e is ``key | 4-octet salt`` (RFC 5282 §7.1,
RFC 7634 §2). Everything here is a pure function of its inputs; every
key-holding object redacts its repr.

DH lives in :mod:`ike.dh`; :class:`DhPrivate` is re-exported here because the
architecture contract names it as part of ``crypto``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike.constants import EncrId, PrfId
from ike.dh import SUPPORTED_GROUPS, DhPrivate, public_value_len
from ike.errors import IntegrityError, LocalError

__all__ = [
    "AEAD_SALT_LEN",
    "PRF_PLUS_MAX_BLOCKS",
    "SK_IV_LEN",
    "SUPPORTED_GROUPS",
    "ChildKeys",
    "DhPrivate",
    "IkeKeys",
    "Prf",
    "SkCipher",
    "auth_octets",
    "derive_child_keys",
    "derive_ike_keys",
    "ike_keymat",
    "prf_plus",
    "psk_auth",
    "public_value_len",
    "rekey_skeyseed",
    "skeyseed",
]

PRF_PLUS_MAX_BLOCKS = 255  # §2.13: the counter octet runs 0x01..0xff
AEAD_SALT_LEN = 4  # RFC 5282 §7.1, RFC 4106 §8.1, RFC 7634 §2
SK_IV_LEN = 8  # RFC 5282 §3.1, RFC 7634 §2: explicit IV in the SK payload
KEY_PAD = b"Key Pad for IKEv2"  # §2.15, 17 ASCII octets, no terminator

_PRF_HASHES: dict[PrfId, hashes.HashAlgorithm] = {
    PrfId.HMAC_SHA1: hashes.SHA1(),  # §3.3.2; kept for the NIST CAVS vectors
    PrfId.HMAC_SHA2_256: hashes.SHA256(),  # RFC 4868
    PrfId.HMAC_SHA2_384: hashes.SHA384(),
    PrfId.HMAC_SHA2_512: hashes.SHA512(),
}


class Prf:
    """An IKEv2 PRF (HMAC-based, §2.13 / RFC 4868): ``prf(key, data)``."""

    __slots__ = ("_hash", "prf_id")

    def __init__(self, prf_id: PrfId) -> None:
        try:
            self.prf_id = PrfId(prf_id)
            self._hash = _PRF_HASHES[self.prf_id]
        except (ValueError, KeyError):
            raise LocalError(f"PRF {prf_id} is not supported") from None

    @property
    def output_len(self) -> int:
        return self._hash.digest_size

    @property
    def preferred_key_len(self) -> int:
        # §2.13 / RFC 4868 §2.1.2: for HMAC PRFs the preferred key length is
        # the output length (the length SK_d, SK_pi and SK_pr get).
        return self._hash.digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        mac = hmac.HMAC(key, self._hash)
        mac.update(data)
        return mac.finalize()

    def __repr__(self) -> str:
        return f"Prf({self.prf_id.name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prf) and other.prf_id == self.prf_id

    def __hash__(self) -> int:
        return hash(self.prf_id)


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """``prf+ (K, S)`` truncated to ``length`` octets (§2.13).

    T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks.
    """
    if length < 0:
        raise LocalError("prf+ length must not be negative")
    blocks = -(-length // prf.output_len)
    if blocks > PRF_PLUS_MAX_BLOCKS:
        raise LocalError(
            f"prf+ cannot produce {length} octets with {prf.prf_id.name}"
            f" (max {PRF_PLUS_MAX_BLOCKS * prf.output_len})"
        )
    out = bytearray()
    block = b""
    for counter in range(1, blocks + 1):
        block = prf(key, block + seed + bytes([counter]))
        out += block
    return bytes(out[:length])


def skeyseed(prf: Prf, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """``SKEYSEED = prf(Ni | Nr, g^ir)`` (§2.14, HMAC PRFs take the full nonces)."""
    return prf(ni + nr, g_ir)


def rekey_skeyseed(prf_old: Prf, sk_d_old: bytes, g_ir_new: bytes, ni: bytes, nr: bytes) -> bytes:
    """``SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)`` for an IKE SA rekey.

    §2.18: the rekeying exchange belongs to the old SA, so its PRF is used
    here; the new SA's keys then come from :func:`ike_keymat` with the new PRF.
    """
    return prf_old(sk_d_old, g_ir_new + ni + nr)


def _redacted(cls_name: str) -> str:
    return f"{cls_name}(<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class IkeKeys:
    """The seven IKE SA keys of §2.14; with AEAD, SK_a* are empty and each SK_e*
    is ``key | salt`` (RFC 5282 §7.1)."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def outbound_sk_e(self, initiator: bool) -> bytes:
        """The SK_e protecting what we send (the original initiator uses SK_ei)."""
        return self.sk_ei if initiator else self.sk_er

    def inbound_sk_e(self, initiator: bool) -> bytes:
        return self.sk_er if initiator else self.sk_ei

    def own_sk_p(self, initiator: bool) -> bytes:
        """SK_p for the AUTH payload we build (§2.15)."""
        return self.sk_pi if initiator else self.sk_pr

    def peer_sk_p(self, initiator: bool) -> bytes:
        return self.sk_pr if initiator else self.sk_pi

    def __repr__(self) -> str:
        return _redacted("IkeKeys")


def ike_keymat(
    prf: Prf,
    seed_key: bytes,
    *,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    salt_len: int = AEAD_SALT_LEN,
    integ_key_len: int = 0,
) -> IkeKeys:
    """Split ``prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)`` into the §2.14 keys.

    ``seed_key`` is SKEYSEED (from :func:`skeyseed` or :func:`rekey_skeyseed`).
    ``encr_key_len`` counts the cipher key only; ``salt_len`` octets follow it
    in each SK_e. SK_d and SK_p are the PRF's preferred key length.
    """
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalError("IKE SPIs are 8 octets (§3.1)")
    if min(encr_key_len, salt_len, integ_key_len) < 0:
        raise LocalError("key lengths must not be negative")
    e_len = encr_key_len + salt_len
    p_len = prf.preferred_key_len
    sizes = (p_len, integ_key_len, integ_key_len, e_len, e_len, p_len, p_len)
    stream = prf_plus(prf, seed_key, ni + nr + spi_i + spi_r, sum(sizes))
    parts: list[bytes] = []
    offset = 0
    for size in sizes:
        parts.append(stream[offset : offset + size])
        offset += size
    return IkeKeys(*parts)


def derive_ike_keys(
    prf_id: PrfId,
    *,
    ni: bytes,
    nr: bytes,
    g_ir: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    salt_len: int = AEAD_SALT_LEN,
    integ_key_len: int = 0,
) -> IkeKeys:
    """The keys of a new IKE SA from IKE_SA_INIT (§2.14)."""
    prf = Prf(prf_id)
    return ike_keymat(
        prf,
        skeyseed(prf, ni, nr, g_ir),
        ni=ni,
        nr=nr,
        spi_i=spi_i,
        spi_r=spi_r,
        encr_key_len=encr_key_len,
        salt_len=salt_len,
        integ_key_len=integ_key_len,
    )


@dataclass(frozen=True, slots=True, repr=False)
class ChildKeys:
    """ESP keys of one Child SA (§2.17): ``*_ir`` protect initiator -> responder
    traffic (taken first from KEYMAT), ``*_ri`` responder -> initiator.

    "Initiator" is the initiator of the exchange that created the Child SA
    (for a rekey: of the CREATE_CHILD_SA exchange), not of the IKE SA.
    """

    key_ir: bytes
    salt_ir: bytes
    key_ri: bytes
    salt_ri: bytes

    def outbound(self, initiator: bool) -> tuple[bytes, bytes]:
        """(key, salt) for the SA we send on."""
        return (self.key_ir, self.salt_ir) if initiator else (self.key_ri, self.salt_ri)

    def inbound(self, initiator: bool) -> tuple[bytes, bytes]:
        """(key, salt) for the SA we receive on."""
        return (self.key_ri, self.salt_ri) if initiator else (self.key_ir, self.salt_ir)

    def __repr__(self) -> str:
        return _redacted("ChildKeys")


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    key_len: int,
    salt_len: int = AEAD_SALT_LEN,
    g_ir_new: bytes = b"",
) -> ChildKeys:
    """``KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)`` split for AEAD ESP.

    §2.17: all keys for initiator -> responder come first. For AES-GCM each
    direction takes ``key_len`` key octets then ``salt_len`` salt octets
    (RFC 4106 §8.1; ChaCha20-Poly1305: RFC 7634 §2 / RFC 7634 §3).
    """
    if key_len <= 0 or salt_len < 0:
        raise LocalError("child SA key lengths must be positive")
    per_dir = key_len + salt_len
    keymat = prf_plus(prf, sk_d, g_ir_new + ni + nr, 2 * per_dir)
    first, second = keymat[:per_dir], keymat[per_dir:]
    return ChildKeys(first[:key_len], first[key_len:], second[:key_len], second[key_len:])


_GCM_ICV_LEN = {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}
_AES_KEY_LENS = (16, 24, 32)
_CHACHA_KEY_LEN = 32


class SkCipher:
    """AEAD for the Encrypted (SK) payload: RFC 5282 (AES-GCM), RFC 7634 (ChaCha20).

    ``key_with_salt`` is SK_ei or SK_er as derived (key | 4-octet salt).
    The nonce is ``salt | IV`` (RFC 5282 §4, RFC 7634 §2); ``aad`` is the IKE
    header through the SK payload header (RFC 5282 §5.1).
    """

    __slots__ = ("_aead", "_key", "_salt", "encr_id", "icv_len", "iv_len")

    def __init__(self, encr_id: EncrId, key_with_salt: bytes) -> None:
        self.encr_id = EncrId(encr_id)
        self.iv_len = SK_IV_LEN
        key, self._salt = key_with_salt[:-AEAD_SALT_LEN], key_with_salt[-AEAD_SALT_LEN:]
        self._key = key
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        if self.encr_id is EncrId.CHACHA20_POLY1305:
            if len(key) != _CHACHA_KEY_LEN:
                raise LocalError("ChaCha20-Poly1305 takes a 32-octet key plus 4-octet salt")
            self.icv_len = 16  # RFC 7634 §2
            self._aead = ChaCha20Poly1305(key)
        elif self.encr_id in _GCM_ICV_LEN:
            if len(key) not in _AES_KEY_LENS:
                raise LocalError("AES-GCM takes a 16/24/32-octet key plus 4-octet salt")
            self.icv_len = _GCM_ICV_LEN[self.encr_id]
            if self.icv_len == 16:
                self._aead = AESGCM(key)
        else:
            raise LocalError(f"{self.encr_id.name} is not an AEAD the SK payload supports")

    @property
    def key_bits(self) -> int:
        return 8 * len(self._key)

    def seal(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """``ciphertext | ICV`` for the SK payload body after the IV."""
        if len(iv) != self.iv_len:
            raise LocalError(f"SK IV must be {self.iv_len} octets")
        nonce = self._salt + iv
        if self._aead is not None:
            return self._aead.encrypt(nonce, plaintext, aad)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        return ciphertext + encryptor.tag[: self.icv_len]  # RFC 4106 §6: truncated ICV

    def open(self, iv: bytes, aad: bytes, ct_and_icv: bytes) -> bytes:
        """The plaintext, or :class:`~ike.errors.IntegrityError` (drop silently)."""
        if len(iv) != self.iv_len or len(ct_and_icv) < self.icv_len:
            raise IntegrityError("SK payload too short for IV and ICV")
        nonce = self._salt + iv
        try:
            if self._aead is not None:
                return self._aead.decrypt(nonce, ct_and_icv, aad)
            split = len(ct_and_icv) - self.icv_len
            tag = ct_and_icv[split:]
            mode = modes.GCM(nonce, tag, min_tag_length=self.icv_len)
            decryptor = Cipher(algorithms.AES(self._key), mode).decryptor()
            decryptor.authenticate_additional_data(aad)
            return decryptor.update(ct_and_icv[:split]) + decryptor.finalize()
        except InvalidTag:
            raise IntegrityError("SK payload ICV does not verify") from None

    def __repr__(self) -> str:
        return f"SkCipher({self.encr_id.name}, {self.key_bits}-bit, <redacted>)"


def auth_octets(message_bytes: bytes, nonce: bytes, prf: Prf, sk_p: bytes, id_body: bytes) -> bytes:
    """The octets a peer signs or MACs (§2.15).

    ``RealMessage | Nonce | prf(SK_p, IDx')``: for the initiator, its whole
    IKE_SA_INIT request, the responder's nonce Nr and SK_pi; for the responder,
    its IKE_SA_INIT response, Ni and SK_pr. ``id_body`` (IDx') is the ID payload
    without the generic payload header: ID Type | 3 reserved octets | data.
    """
    return message_bytes + nonce + prf(sk_p, id_body)


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH data for method 2: ``prf(prf(Shared Secret, "Key Pad for IKEv2"), octets)``
    (§2.15)."""
    return prf(prf(psk, KEY_PAD), octets)
