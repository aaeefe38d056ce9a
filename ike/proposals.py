"""Proposal strings (strongSwan syntax) <-> transforms, and proposal selection.

A configured proposal is written like strongSwan's: algorithm names joined by
dashes, e.g. ``aes256gcm16-prfsha256-x25519-ecp256`` (one IKE proposal offering
two DH groups) or ``aes256gcm16-esn-noesn`` (one ESP proposal offering ESN on
and off). Several names of one transform type in one string are alternatives
inside a single proposal (RFC 7296 §3.3: "OR" within a type, "AND" across
types).

Selection (responder, RFC 7296 §2.7 and §3.3.6): walk our configured proposals
in preference order; for each, take the first offered proposal of the same
protocol in which every transform type has an acceptable transform; answer with
exactly one transform of each type, under the offered proposal number. The
initiator checks the answer with :func:`verify_reply` (§2.7: "the initiator
MUST check that the accepted offer is consistent with one of its proposals").

Pure module: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from ike import payloads
from ike.constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ike.errors import LocalError, NoProposalChosen


class ProposalSyntaxError(LocalError, ValueError):
    """A configured proposal string is malformed or names an unsupported algorithm."""


@dataclass(frozen=True, slots=True)
class TransformSpec:
    """One transform: type, transform ID and (for AES) the KEY_LENGTH attribute (§3.3.5)."""

    type: TransformType
    id: int
    key_length: int | None = None

    def __str__(self) -> str:
        name = _NAMES.get(self.key)
        if name is None:  # not nameable in a configuration, e.g. INTEG/DH NONE
            name = f"{self.type.name}:{self.id}"
            name += f"/{self.key_length}" if self.key_length is not None else ""
        return name

    @property
    def key(self) -> tuple[int, int, int | None]:
        return (int(self.type), self.id, self.key_length)


# Order of transform types in our proposals and strings (§3.3.2 numbering).
_TYPE_ORDER = (
    TransformType.ENCR,
    TransformType.PRF,
    TransformType.INTEG,
    TransformType.DH,
    TransformType.ESN,
)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A configured proposal: protocol and transforms, grouped by type, in preference order."""

    protocol: ProtocolId
    transforms: tuple[TransformSpec, ...]

    def of_type(self, ttype: TransformType) -> tuple[TransformSpec, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)

    @property
    def types(self) -> frozenset[TransformType]:
        return frozenset(t.type for t in self.transforms)

    @property
    def dh_groups(self) -> tuple[int, ...]:
        return tuple(t.id for t in self.of_type(TransformType.DH))

    def without_dh(self) -> Proposal:
        """The same proposal without DH transforms (Child SA proposals in IKE_AUTH, §1.2)."""
        return Proposal(
            self.protocol, tuple(t for t in self.transforms if t.type != TransformType.DH)
        )

    def __str__(self) -> str:
        return format_proposal(self)

    def __repr__(self) -> str:
        return f"Proposal({self.protocol.name}:{format_proposal(self)})"


# ---------------------------------------------------------------------------
# Algorithm names

_AES_GCM = int(EncrId.AES_GCM_16)

# Canonical names first: format_proposal() uses the first name of each transform.
_CANONICAL: dict[str, TransformSpec] = {
    "aes128gcm16": TransformSpec(TransformType.ENCR, _AES_GCM, 128),  # RFC 4106, RFC 5282
    "aes256gcm16": TransformSpec(TransformType.ENCR, _AES_GCM, 256),
    "chacha20poly1305": TransformSpec(
        TransformType.ENCR, int(EncrId.CHACHA20_POLY1305)
    ),  # RFC 7634
    "prfsha256": TransformSpec(TransformType.PRF, int(PrfId.HMAC_SHA2_256)),  # RFC 4868
    "prfsha384": TransformSpec(TransformType.PRF, int(PrfId.HMAC_SHA2_384)),
    "prfsha512": TransformSpec(TransformType.PRF, int(PrfId.HMAC_SHA2_512)),
    "x25519": TransformSpec(TransformType.DH, int(DhGroup.CURVE25519)),  # RFC 8031
    "ecp256": TransformSpec(TransformType.DH, int(DhGroup.ECP_256)),  # RFC 5903
    "ecp384": TransformSpec(TransformType.DH, int(DhGroup.ECP_384)),
    "ecp521": TransformSpec(TransformType.DH, int(DhGroup.ECP_521)),
    "esn": TransformSpec(TransformType.ESN, int(EsnId.ESN)),
    "noesn": TransformSpec(TransformType.ESN, int(EsnId.NO_ESN)),
}
_ALIASES = {
    "aes128gcm": "aes128gcm16",
    "aes256gcm": "aes256gcm16",
    "curve25519": "x25519",
}
# strongSwan reads a hash name in an AEAD IKE proposal as the PRF (there is no
# integrity algorithm to attach it to); we do the same, for IKE only.
_IKE_HASH_AS_PRF = {"sha256": "prfsha256", "sha384": "prfsha384", "sha512": "prfsha512"}

_MODP = "MODP groups are not supported (use ecp256, ecp384 or x25519)"
_UNSUPPORTED = {
    **{
        f"aes{n}": "AES-CBC is not supported (use aes128gcm16 or aes256gcm16)"
        for n in (128, 192, 256)
    },
    **{
        f"aes{n}gcm{icv}": "only 16-octet ICV AES-GCM is supported (aes128gcm16, aes256gcm16)"
        for n in (128, 192, 256)
        for icv in (8, 12, 64, 96)
    },
    "aes192gcm16": "192-bit AES is not supported (use aes128gcm16 or aes256gcm16)",
    "aes192gcm": "192-bit AES is not supported (use aes128gcm16 or aes256gcm16)",
    **{f"modp{n}": _MODP for n in (768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)},
    "x448": "Curve448 is not supported (use x25519)",
    "curve448": "Curve448 is not supported (use x25519)",
    "prfsha1": "PRF_HMAC_SHA1 is not supported (use prfsha256)",
    "prfmd5": "PRF_HMAC_MD5 is not supported (use prfsha256)",
    "3des": "3DES is not supported",
    "sha1": "integrity algorithms are not supported: only AEAD ciphers are",
    "md5": "integrity algorithms are not supported: only AEAD ciphers are",
    "aesxcbc": "integrity algorithms are not supported: only AEAD ciphers are",
}
_ESP_HASH = "integrity algorithms are not supported: ESP is AEAD-only (aes*gcm16, chacha20poly1305)"

_NAMES: dict[tuple[int, int, int | None], str] = {}
for _name, _spec in _CANONICAL.items():
    _NAMES.setdefault(_spec.key, _name)


def _lookup(token: str, protocol: ProtocolId) -> TransformSpec:
    if protocol == ProtocolId.IKE and token in _IKE_HASH_AS_PRF:
        token = _IKE_HASH_AS_PRF[token]
    token = _ALIASES.get(token, token)
    spec = _CANONICAL.get(token)
    if spec is not None:
        return spec
    if token in _UNSUPPORTED:
        raise ProposalSyntaxError(f"'{token}': {_UNSUPPORTED[token]}")
    if token in _IKE_HASH_AS_PRF:  # ESP: a hash name would be an integrity algorithm
        raise ProposalSyntaxError(f"'{token}': {_ESP_HASH}")
    known = [*_CANONICAL, *_ALIASES]
    near = difflib.get_close_matches(token, known, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise ProposalSyntaxError(f"unknown algorithm '{token}'{hint}")


# ---------------------------------------------------------------------------
# Parsing and formatting


def parse_ike_proposal(text: str) -> Proposal:
    """Parse an IKE proposal: ENCR+ PRF+ DH+ (e.g. ``aes256gcm16-prfsha256-x25519``)."""
    return _parse(text, ProtocolId.IKE)


def parse_esp_proposal(text: str) -> Proposal:
    """Parse an ESP proposal: ENCR+ [DH...] [esn] [noesn]; no ESN keyword means ``noesn``."""
    return _parse(text, ProtocolId.ESP)


def _parse(text: str, protocol: ProtocolId) -> Proposal:
    tokens = text.strip().lower().split("-")
    if tokens == [""]:
        raise ProposalSyntaxError("empty proposal")
    found: list[TransformSpec] = []
    for token in tokens:
        if not token:
            raise ProposalSyntaxError(f"empty algorithm name in '{text}' (doubled or stray '-')")
        spec = _lookup(token, protocol)
        if spec in found:
            raise ProposalSyntaxError(f"'{token}' appears twice in '{text}'")
        found.append(spec)
    _check_types(found, protocol, text)
    if protocol == ProtocolId.ESP and not any(t.type == TransformType.ESN for t in found):
        found.append(_CANONICAL["noesn"])  # strongSwan's default as well
    ordered = tuple(t for ttype in _TYPE_ORDER for t in found if t.type == ttype)
    return Proposal(protocol, ordered)


def _check_types(found: list[TransformSpec], protocol: ProtocolId, text: str) -> None:
    types = {t.type for t in found}
    if protocol == ProtocolId.IKE:
        if TransformType.ESN in types:
            raise ProposalSyntaxError(f"'{text}': esn/noesn apply to ESP proposals only")
        required: tuple[TransformType, ...] = (
            TransformType.ENCR,
            TransformType.PRF,
            TransformType.DH,
        )
    else:
        if TransformType.PRF in types:
            raise ProposalSyntaxError(f"'{text}': a PRF applies to IKE proposals only")
        required = (TransformType.ENCR,)
    names = {
        TransformType.ENCR: "encryption",
        TransformType.PRF: "PRF",
        TransformType.DH: "DH group",
    }
    for ttype in required:
        if ttype not in types:
            raise ProposalSyntaxError(f"'{text}': no {names[ttype]} algorithm")


def format_proposal(proposal: Proposal) -> str:
    """The canonical string of a proposal; ``parse(format(p)) == p``."""
    return "-".join(str(t) for t in proposal.transforms)


# ---------------------------------------------------------------------------
# Offers and selection against the wire representation (ike.payloads.Proposal)


@dataclass(frozen=True, slots=True)
class SelectedProposal:
    """The outcome of a negotiation: one transform per type.

    ``number`` is the proposal number to answer with (§3.3.1: the responder
    echoes the number of the offer it accepted); ``peer_spi`` is the SPI the
    peer put in that offer (for ESP: the SPI we send to). The SA payload we
    answer with carries *our own* SPI (§3.3.1 "the sending entity's SPI"), so
    it is not stored here.
    """

    number: int
    protocol: ProtocolId
    peer_spi: bytes
    transforms: tuple[TransformSpec, ...]

    def get(self, ttype: TransformType) -> TransformSpec | None:
        for t in self.transforms:
            if t.type == ttype:
                return t
        return None

    @property
    def encr(self) -> TransformSpec:
        found = self.get(TransformType.ENCR)
        if found is None:  # impossible for proposals built by this module
            raise LocalError("selected proposal has no encryption transform")
        return found

    @property
    def prf(self) -> int | None:
        found = self.get(TransformType.PRF)
        return None if found is None else found.id

    @property
    def dh_group(self) -> int | None:
        """The DH group, or None when there is none (or it is NONE: no PFS)."""
        found = self.get(TransformType.DH)
        return None if found is None or found.id == DhGroup.NONE else found.id

    @property
    def esn(self) -> bool:
        found = self.get(TransformType.ESN)
        return found is not None and found.id == EsnId.ESN

    def to_wire(self, spi: bytes = b"") -> payloads.Proposal:
        """The single proposal of our answer, carrying our own ``spi`` (§3.3.1)."""
        return payloads.Proposal(self.number, self.protocol, _to_wire(self.transforms), spi)

    def __str__(self) -> str:
        return "-".join(str(t) for t in self.transforms)


@functools.lru_cache(maxsize=256)  # few distinct answers: the configured algorithms'
def _to_wire(transforms: tuple[TransformSpec, ...]) -> tuple[payloads.Transform, ...]:
    """Wire transforms (frozen, so one tuple serves every answer with these algorithms)."""
    return tuple(payloads.Transform(t.type, t.id, t.key_length) for t in transforms)


def make_offer(configured: Sequence[Proposal], spi: bytes = b"") -> tuple[payloads.Proposal, ...]:
    """Initiator side: our proposals numbered from 1 (§3.3.1), all with our ``spi``."""
    return tuple(
        payloads.Proposal(n, p.protocol, _to_wire(p.transforms), spi)
        for n, p in enumerate(configured, start=1)
    )


# §3.3.3: a transform type that may be left out of a proposal, where NONE in an
# offer means "this type may be absent": INTEG with an AEAD cipher (RFC 5282 §8)
# and DH in a Child SA proposal (PFS optional).
_OPTIONAL_TYPES = (TransformType.INTEG, TransformType.DH)
_NONE_ID = {TransformType.INTEG: int(IntegId.NONE), TransformType.DH: int(DhGroup.NONE)}
# §3.3.1 SPI sizes: IKE_SA_INIT has none, an IKE SA rekey carries 8 octets, ESP 4.
_SPI_SIZES = {ProtocolId.IKE: (0, 8), ProtocolId.ESP: (4,)}


def _specs_by_type(offer: payloads.Proposal) -> dict[int, list[tuple[int, int | None]]]:
    grouped: dict[int, list[tuple[int, int | None]]] = {}
    for t in offer.transforms:
        specs = grouped.setdefault(int(t.type), [])
        # §3.3.6: a transform with an attribute we do not understand is
        # unacceptable; other transforms of its type still count.
        if not t.extra_attributes:
            specs.append((int(t.id), t.key_length))
    return grouped


def _pick(
    mine: Sequence[TransformSpec], theirs: list[tuple[int, int | None]], prefer: int | None
) -> TransformSpec | None:
    acceptable = [t for t in mine if (t.id, t.key_length) in theirs]
    for t in acceptable:
        if t.id == prefer:
            return t
    return acceptable[0] if acceptable else None


# _match's answers for offers seen before: every initiator of one make sends the
# same proposals, and matching them field by field was ~4% of a hub's CPU per
# handshake. Keyed by the configured proposal's identity (the entry keeps it
# alive, so the id is not reused while cached) and the offer's content; small
# offers without attribute values only, cleared when full: hostile offers cannot
# grow it.
_MATCHES: dict[tuple[object, ...], tuple[Proposal, tuple[TransformSpec, ...] | None]] = {}
_MATCHES_MAX = 128
_MATCH_MAX_TRANSFORMS = 16


def _match(
    offer: payloads.Proposal, mine: Proposal, prefer_dh: int | None
) -> tuple[TransformSpec, ...] | None:
    """One transform per type if ``offer`` fits ``mine``, else None (memoised)."""
    if len(offer.transforms) > _MATCH_MAX_TRANSFORMS:
        return _match_uncached(offer, mine, prefer_dh)
    key = (id(mine), int(offer.protocol), len(offer.spi), offer.transforms, prefer_dh)
    hit = _MATCHES.get(key)
    if hit is not None and hit[0] is mine:
        return hit[1]
    chosen = _match_uncached(offer, mine, prefer_dh)
    if not any(t.extra_attributes for t in offer.transforms):  # no peer-sized values kept
        if len(_MATCHES) >= _MATCHES_MAX:
            _MATCHES.clear()
        _MATCHES[key] = (mine, chosen)
    return chosen


def _match_uncached(
    offer: payloads.Proposal, mine: Proposal, prefer_dh: int | None
) -> tuple[TransformSpec, ...] | None:
    if int(offer.protocol) != mine.protocol or len(offer.spi) not in _SPI_SIZES[mine.protocol]:
        return None
    theirs = _specs_by_type(offer)
    chosen: list[TransformSpec] = []
    for ttype in mine.types:
        prefer = prefer_dh if ttype == TransformType.DH else None
        pick = _pick(mine.of_type(ttype), theirs.get(int(ttype), []), prefer)
        if pick is None:
            return None
        chosen.append(pick)
    for raw_type, specs in theirs.items():
        if raw_type in (int(t) for t in mine.types):
            continue
        # A type we do not use is acceptable only if the offer allows NONE for it.
        optional = next((t for t in _OPTIONAL_TYPES if t == raw_type), None)
        if optional is None or (_NONE_ID[optional], None) not in specs:
            return None
        chosen.append(TransformSpec(optional, _NONE_ID[optional]))
    return tuple(sorted(chosen, key=lambda t: _TYPE_ORDER.index(t.type)))


def select_proposal(
    offered: Sequence[payloads.Proposal],
    configured: Sequence[Proposal],
    *,
    prefer_dh: int | None = None,
) -> SelectedProposal:
    """Responder side: choose one offer, in our configured preference order (§2.7).

    ``prefer_dh`` is the group of the initiator's KE payload: where both sides
    accept it, it wins over our own group order, sparing an INVALID_KE_PAYLOAD
    round trip (§1.2). Raises :class:`NoProposalChosen` when nothing fits.
    """
    for mine in configured:
        for offer in offered:
            chosen = _match(offer, mine, prefer_dh)
            if chosen is not None:
                return SelectedProposal(offer.number, mine.protocol, bytes(offer.spi), chosen)
    raise NoProposalChosen(
        f"no acceptable proposal among {len(offered)} offered; "
        f"offered: {', '.join(describe_wire(o) for o in offered) or 'none'}; "
        f"configured: {', '.join(format_proposal(p) for p in configured) or 'none'}"
    )


def verify_reply(
    answer: Sequence[payloads.Proposal], offered: Sequence[Proposal]
) -> SelectedProposal:
    """Initiator side: check the responder's SA payload against our offer (§2.7, §3.3.6).

    ``answer`` is the list of proposals in the responder's SA payload: exactly
    one is allowed. ``offered[i]`` was sent as proposal number ``i + 1``. The
    answer must carry one transform of each type of that proposal, each one we
    offered (NONE is accepted for an optional type we left out).
    """
    if len(answer) != 1:
        raise NoProposalChosen(f"reply carries {len(answer)} proposals; exactly 1 is allowed")
    reply = answer[0]
    number = int(reply.number)
    if not 1 <= number <= len(offered):
        raise NoProposalChosen(f"reply names proposal #{number}; we offered {len(offered)}")
    mine = offered[number - 1]
    theirs = _specs_by_type(reply)
    if any(len(v) != 1 for v in theirs.values()):
        raise NoProposalChosen(f"reply needs one usable transform per type: {describe_wire(reply)}")
    chosen = _match(reply, mine, None)
    if chosen is None:
        raise NoProposalChosen(
            f"reply {describe_wire(reply)} does not fit proposal #{number} {format_proposal(mine)}"
        )
    return SelectedProposal(number, mine.protocol, bytes(reply.spi), chosen)


def describe_wire(offer: payloads.Proposal) -> str:
    """Human-readable form of a wire proposal for logs (SPIs are not secret)."""
    parts = []
    for t in offer.transforms:
        name = _NAMES.get((int(t.type), int(t.id), t.key_length)) or _foreign_name(t)
        if name is None:
            name = f"{_enum_name(TransformType, t.type)}:{t.id}"
            name += f"/{t.key_length}" if t.key_length is not None else ""
        parts.append(name)
    return f"#{offer.number} {_enum_name(ProtocolId, offer.protocol)}:" + "-".join(parts)


# Algorithms peers offer that tunneld refuses, named as strongSwan (and the
# refusal messages above) name them, so that a log line saying what a peer
# offered reads "aes256-sha256-modp1024", not transform numbers (IANA
# "IKEv2 Transform Type" registries).
_FOREIGN: dict[tuple[int, int], str] = {
    (int(TransformType.ENCR), 2): "des",
    (int(TransformType.ENCR), 3): "3des",
    (int(TransformType.ENCR), 12): "aes{bits}",
    (int(TransformType.ENCR), 13): "aes{bits}ctr",
    (int(TransformType.ENCR), 18): "aes{bits}gcm8",
    (int(TransformType.ENCR), 19): "aes{bits}gcm12",
    (int(TransformType.ENCR), 20): "aes{bits}gcm16",
    (int(TransformType.PRF), 1): "prfmd5",
    (int(TransformType.PRF), 2): "prfsha1",
    (int(TransformType.PRF), 4): "prfaesxcbc",
    (int(TransformType.PRF), 8): "prfaescmac",
    (int(TransformType.INTEG), 1): "md5",
    (int(TransformType.INTEG), 2): "sha1",
    (int(TransformType.INTEG), 5): "aesxcbc",
    (int(TransformType.INTEG), 12): "sha256",
    (int(TransformType.INTEG), 13): "sha384",
    (int(TransformType.INTEG), 14): "sha512",
    (int(TransformType.DH), 1): "modp768",
    (int(TransformType.DH), 2): "modp1024",
    (int(TransformType.DH), 5): "modp1536",
    (int(TransformType.DH), 14): "modp2048",
    (int(TransformType.DH), 15): "modp3072",
    (int(TransformType.DH), 16): "modp4096",
    (int(TransformType.DH), 24): "modp2048s256",
    (int(TransformType.DH), 32): "x448",
}


def _foreign_name(t: payloads.Transform) -> str | None:
    form = _FOREIGN.get((int(t.type), int(t.id)))
    if form is None or ("{bits}" in form and t.key_length is None):
        return None
    return form.format(bits=t.key_length)


def _enum_name(enum: type[IntEnum], raw: int) -> str:
    try:
        return enum(raw).name
    except ValueError:
        return str(raw)


def first_dh_group(configured: Sequence[Proposal]) -> int | None:
    """The DH group an initiator uses for its KE payload: our most preferred one."""
    for proposal in configured:
        if proposal.dh_groups:
            return proposal.dh_groups[0]
    return None


def accepts_dh_group(configured: Sequence[Proposal], group: int) -> bool:
    """Whether a group a responder asked for (INVALID_KE_PAYLOAD, §1.2) is one we offered."""
    return any(group in p.dh_groups for p in configured)
