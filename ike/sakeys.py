"""The SK_e/SK_a keys of one IKE SA, handed out for one purpose only: the
daemon's opt-in ``save_keys`` debugging aid, which writes them where Wireshark
can decrypt a capture with them (as strongSwan's save-keys plugin does).

Nothing else in tunneld needs these keys outside :mod:`ike`; the value is
frozen and its repr shows the (public) SPIs, never a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ike.constants import TransformType
from ike.exchanges.context import SaContext


@dataclass(frozen=True, repr=False, eq=False)
class IkeSaKeys:
    """What a decryption table needs for one IKE SA (RFC 7296 §2.14).

    ``encr`` is the ENCR transform ID and ``encr_key_bits`` its KEY_LENGTH
    attribute (None for ciphers without one). With an AEAD cipher ``integ`` is
    None (no INTEG transform, or INTEG NONE), SK_ai/SK_ar are empty and each
    SK_e is key | salt (RFC 5282 §7.1), exactly as derived.
    """

    spi_i: bytes
    spi_r: bytes
    encr: int
    encr_key_bits: int | None
    integ: int | None
    sk_ei: bytes
    sk_er: bytes
    sk_ai: bytes
    sk_ar: bytes

    @property
    def spis(self) -> tuple[bytes, bytes]:
        return self.spi_i, self.spi_r

    def __repr__(self) -> str:
        return f"IkeSaKeys({self.spi_i.hex()}/{self.spi_r.hex()}, <redacted>)"

    __str__ = __repr__


def ike_sa_keys(ctx: SaContext) -> IkeSaKeys | None:
    """The keys of the IKE SA ``ctx`` describes, or None before IKE_SA_INIT derived them."""
    proposal = ctx.ike_proposal
    if ctx.keys is None or proposal is None or not any(ctx.spi_r):
        return None
    integ = proposal.get(TransformType.INTEG)
    return IkeSaKeys(
        spi_i=ctx.spi_i,
        spi_r=ctx.spi_r,
        encr=proposal.encr.id,
        encr_key_bits=proposal.encr.key_length,
        integ=integ.id if integ is not None and integ.id != 0 else None,  # 0: INTEG NONE
        sk_ei=ctx.keys.sk_ei,
        sk_er=ctx.keys.sk_er,
        sk_ai=ctx.keys.sk_ai,
        sk_ar=ctx.keys.sk_ar,
    )
