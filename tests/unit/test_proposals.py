"""Proposal strings and proposal selection (RFC 7296 §2.7, §3.3, §3.3.6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ike import proposals
from ike.constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ike.errors import NoProposalChosen
from ike.payloads import Proposal as WireProposal
from ike.payloads import Transform, TransformAttribute
from ike.proposals import (
    Proposal,
    ProposalSyntaxError,
    TransformSpec,
    accepts_dh_group,
    first_dh_group,
    format_proposal,
    make_offer,
    parse_esp_proposal,
    parse_ike_proposal,
    select_proposal,
    verify_reply,
)

ENCR, PRF, INTEG, DH, ESN = (
    TransformType.ENCR,
    TransformType.PRF,
    TransformType.INTEG,
    TransformType.DH,
    TransformType.ESN,
)
GCM = int(EncrId.AES_GCM_16)
ESP_SPI = b"\x11\x22\x33\x44"


def ike(*names: str) -> list[Proposal]:
    return [parse_ike_proposal(n) for n in names]


def esp(*names: str) -> list[Proposal]:
    return [parse_esp_proposal(n) for n in names]


def wire(
    number: int, protocol: ProtocolId, *transforms: Transform, spi: bytes = b""
) -> WireProposal:
    return WireProposal(number, protocol, tuple(transforms), spi)


# --- parsing -----------------------------------------------------------------


def test_parse_ike_one_proposal_two_groups() -> None:
    p = parse_ike_proposal("aes256gcm16-prfsha256-x25519-ecp256")
    assert p.protocol == ProtocolId.IKE
    assert p.transforms == (
        TransformSpec(ENCR, GCM, 256),
        TransformSpec(PRF, PrfId.HMAC_SHA2_256),
        TransformSpec(DH, DhGroup.CURVE25519),
        TransformSpec(DH, DhGroup.ECP_256),
    )
    assert p.dh_groups == (31, 19)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aes128gcm16-prfsha384-ecp256", "aes128gcm16-prfsha384-ecp256"),
        ("AES256GCM-PRFSHA512-curve25519", "aes256gcm16-prfsha512-x25519"),
        # strongSwan reads a hash in an AEAD IKE proposal as the PRF
        ("aes256gcm16-sha384-ecp384", "aes256gcm16-prfsha384-ecp384"),
        ("chacha20poly1305-prfsha256-ecp521", "chacha20poly1305-prfsha256-ecp521"),
        # transforms come out grouped by type, order within a type kept
        (
            "ecp256-aes128gcm16-x25519-prfsha256-aes256gcm16",
            "aes128gcm16-aes256gcm16-prfsha256-ecp256-x25519",
        ),
    ],
)
def test_ike_parse_format_canonical(text: str, expected: str) -> None:
    assert format_proposal(parse_ike_proposal(text)) == expected


@pytest.mark.parametrize(
    ("text", "esn_ids", "dh"),
    [
        ("aes256gcm16", [EsnId.NO_ESN], ()),  # no ESN keyword: noesn (strongSwan default)
        ("aes128gcm16-esn", [EsnId.ESN], ()),
        ("aes256gcm16-noesn", [EsnId.NO_ESN], ()),
        ("aes256gcm16-esn-noesn", [EsnId.ESN, EsnId.NO_ESN], ()),
        ("aes256gcm16-noesn-esn", [EsnId.NO_ESN, EsnId.ESN], ()),
        ("aes256gcm16-x25519", [EsnId.NO_ESN], (31,)),
    ],
)
def test_parse_esp(text: str, esn_ids: list[int], dh: tuple[int, ...]) -> None:
    p = parse_esp_proposal(text)
    assert p.protocol == ProtocolId.ESP
    assert [t.id for t in p.of_type(ESN)] == esn_ids
    assert p.dh_groups == dh
    assert parse_esp_proposal(format_proposal(p)) == p


def test_chacha_has_no_key_length() -> None:
    (t,) = parse_esp_proposal("chacha20poly1305").of_type(ENCR)
    assert t == TransformSpec(ENCR, EncrId.CHACHA20_POLY1305, None)


@pytest.mark.parametrize(
    ("parse", "text", "fragment"),
    [
        (parse_ike_proposal, "", "empty proposal"),
        (parse_ike_proposal, "aes256gcm16--prfsha256-x25519", "empty algorithm name"),
        (parse_ike_proposal, "aes256gcm16-prfsha256", "no DH group"),
        (parse_ike_proposal, "aes256gcm16-x25519", "no PRF"),
        (parse_ike_proposal, "prfsha256-x25519", "no encryption"),
        (parse_ike_proposal, "aes256gcm16-prfsha256-x25519-esn", "ESP proposals only"),
        (parse_ike_proposal, "aes256gcm16-prfsha256-modp2048", "'modp2048': MODP groups"),
        (parse_ike_proposal, "aes256-sha256-prfsha256-x25519", "'aes256': AES-CBC"),
        (parse_ike_proposal, "aes256gcm12-prfsha256-x25519", "16-octet ICV"),
        (parse_ike_proposal, "aes256gcm16-prfsha256-x25519-x25519", "appears twice"),
        (parse_ike_proposal, "aes256gcm16-curve25519-prfsha256-x25519", "appears twice"),
        (parse_ike_proposal, "aes256gcm16-prfsha265-x25519", "did you mean 'prfsha256'"),
        (parse_ike_proposal, "aes256gcm16-prfsha256-x448", "Curve448"),
        (parse_esp_proposal, "aes256gcm16-prfsha256", "IKE proposals only"),
        (parse_esp_proposal, "aes256gcm16-sha256", "ESP is AEAD-only"),
        (parse_esp_proposal, "esn", "no encryption"),
        (parse_esp_proposal, "aes256gcm16-esm", "did you mean 'esn'"),
        (parse_esp_proposal, "aes192gcm16", "192-bit"),
    ],
)
def test_parse_errors_name_the_token(parse: object, text: str, fragment: str) -> None:
    assert callable(parse)
    with pytest.raises(ProposalSyntaxError, match=fragment.replace("(", r"\(")):
        parse(text)


@given(
    st.lists(
        st.sampled_from(["aes128gcm16", "aes256gcm16", "chacha20poly1305"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    st.lists(
        st.sampled_from(["prfsha256", "prfsha384", "prfsha512"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    st.lists(
        st.sampled_from(["x25519", "ecp256", "ecp384", "ecp521"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
)
def test_ike_roundtrip(encr: list[str], prf: list[str], dh: list[str]) -> None:
    text = "-".join(encr + prf + dh)
    p = parse_ike_proposal(text)
    assert format_proposal(p) == text
    assert parse_ike_proposal(format_proposal(p)) == p


# --- selection (responder) ----------------------------------------------------


def strongswan_ike_offer() -> list[WireProposal]:
    """What charon sends for ike=aes128gcm16-prfsha256-ecp256,aes256gcm16-prfsha384-x25519."""
    return [
        wire(1, ProtocolId.IKE, Transform(ENCR, GCM, 128), Transform(PRF, 5), Transform(DH, 19)),
        wire(2, ProtocolId.IKE, Transform(ENCR, GCM, 256), Transform(PRF, 6), Transform(DH, 31)),
    ]


def test_responder_preference_order_wins_over_offer_order() -> None:
    configured = ike("aes256gcm16-prfsha384-x25519", "aes128gcm16-prfsha256-ecp256")
    chosen = select_proposal(strongswan_ike_offer(), configured)
    assert chosen.number == 2
    assert str(chosen) == "aes256gcm16-prfsha384-x25519"
    assert chosen.encr == TransformSpec(ENCR, GCM, 256)
    assert (chosen.prf, chosen.dh_group) == (PrfId.HMAC_SHA2_384, 31)
    # The other preference picks the other offer.
    chosen = select_proposal(strongswan_ike_offer(), list(reversed(configured)))
    assert (chosen.number, str(chosen)) == (1, "aes128gcm16-prfsha256-ecp256")


def test_no_match_raises_no_proposal_chosen() -> None:
    with pytest.raises(NoProposalChosen) as info:
        select_proposal(strongswan_ike_offer(), ike("aes256gcm16-prfsha256-ecp384"))
    assert info.value.notify == 14  # NO_PROPOSAL_CHOSEN
    assert "aes128gcm16-prfsha256-ecp256" in str(info.value)


def test_key_length_must_match() -> None:
    offer = [
        wire(1, ProtocolId.IKE, Transform(ENCR, GCM, 128), Transform(PRF, 5), Transform(DH, 19))
    ]
    with pytest.raises(NoProposalChosen):
        select_proposal(offer, ike("aes256gcm16-prfsha256-ecp256"))
    no_length = [
        wire(1, ProtocolId.IKE, Transform(ENCR, GCM), Transform(PRF, 5), Transform(DH, 19))
    ]
    with pytest.raises(NoProposalChosen):
        select_proposal(no_length, ike("aes128gcm16-prfsha256-ecp256"))


def test_multiple_dh_groups_our_order_then_ke_group() -> None:
    offer = [
        wire(
            1, ProtocolId.IKE,
            Transform(ENCR, GCM, 256), Transform(PRF, 5),
            Transform(DH, 19), Transform(DH, 20), Transform(DH, 31),
        )
    ]  # fmt: skip
    configured = ike("aes256gcm16-prfsha256-x25519-ecp256")
    assert select_proposal(offer, configured).dh_group == 31
    # The initiator's KE payload uses ECP-256: accept it rather than force INVALID_KE.
    assert select_proposal(offer, configured, prefer_dh=19).dh_group == 19
    # A KE group we do not accept does not override our choice.
    assert select_proposal(offer, configured, prefer_dh=20).dh_group == 31
    # prefer_dh only steers DH: ENCR id 20 must not be mistaken for group 20.
    assert select_proposal(offer, configured, prefer_dh=20).encr.key_length == 256


def test_reply_has_one_transform_per_type_and_our_spi() -> None:
    offer = [
        wire(
            3, ProtocolId.ESP,
            Transform(ENCR, GCM, 128), Transform(ENCR, GCM, 256),
            Transform(ESN, 0), Transform(ESN, 1),
            spi=ESP_SPI,
        )
    ]  # fmt: skip
    chosen = select_proposal(offer, esp("aes256gcm16-esn-noesn"))
    assert chosen.peer_spi == ESP_SPI
    assert chosen.esn is True
    reply = chosen.to_wire(b"\xaa\xbb\xcc\xdd")
    assert reply == WireProposal(
        3, ProtocolId.ESP, (Transform(ENCR, GCM, 256), Transform(ESN, 1)), b"\xaa\xbb\xcc\xdd"
    )


@pytest.mark.parametrize(
    ("offered_esn", "configured", "expected"),
    [
        ([0, 1], "aes256gcm16-esn-noesn", True),
        ([0, 1], "aes256gcm16-noesn-esn", False),
        ([1, 0], "aes256gcm16-noesn", False),
        ([0], "aes256gcm16-esn-noesn", False),
        ([1], "aes256gcm16-esn-noesn", True),
        ([1], "aes256gcm16", None),  # we only do noesn: no match
        ([0], "aes256gcm16-esn", None),
        ([], "aes256gcm16-esn-noesn", None),  # ESN is mandatory for ESP (§3.3.3)
    ],
)
def test_esn_negotiation(offered_esn: list[int], configured: str, expected: bool | None) -> None:
    offer = [
        wire(
            1,
            ProtocolId.ESP,
            Transform(ENCR, GCM, 256),
            *(Transform(ESN, e) for e in offered_esn),
            spi=ESP_SPI,
        )
    ]
    if expected is None:
        with pytest.raises(NoProposalChosen):
            select_proposal(offer, esp(configured))
    else:
        assert select_proposal(offer, esp(configured)).esn is expected


def test_esp_pfs() -> None:
    pfs_offer = [
        wire(
            1,
            ProtocolId.ESP,
            Transform(ENCR, GCM, 256),
            Transform(DH, 31),
            Transform(ESN, 0),
            spi=ESP_SPI,
        )
    ]
    assert select_proposal(pfs_offer, esp("aes256gcm16-x25519")).dh_group == 31
    # We want no PFS, the peer insists on it: no match.
    with pytest.raises(NoProposalChosen):
        select_proposal(pfs_offer, esp("aes256gcm16"))
    # We want PFS, the peer offers none.
    plain = [wire(1, ProtocolId.ESP, Transform(ENCR, GCM, 256), Transform(ESN, 0), spi=ESP_SPI)]
    with pytest.raises(NoProposalChosen):
        select_proposal(plain, esp("aes256gcm16-x25519"))
    # PFS optional in the offer (DH NONE listed): we may decline it, and echo NONE.
    optional = [
        wire(
            1, ProtocolId.ESP,
            Transform(ENCR, GCM, 256), Transform(DH, 31), Transform(DH, 0), Transform(ESN, 0),
            spi=ESP_SPI,
        )
    ]  # fmt: skip
    chosen = select_proposal(optional, esp("aes256gcm16"))
    assert chosen.dh_group is None
    assert chosen.get(DH) == TransformSpec(DH, 0)
    # IKE_AUTH carries no KE: configured PFS proposals are used without DH there.
    assert (
        select_proposal(plain, [p.without_dh() for p in esp("aes256gcm16-x25519")]).dh_group is None
    )


def test_integ_none_with_aead_is_accepted_and_echoed() -> None:
    offer = [
        wire(
            1, ProtocolId.IKE,
            Transform(ENCR, GCM, 256), Transform(PRF, 5),
            Transform(INTEG, IntegId.NONE), Transform(DH, 19),
        )
    ]  # fmt: skip
    chosen = select_proposal(offer, ike("aes256gcm16-prfsha256-ecp256"))
    assert chosen.get(INTEG) == TransformSpec(INTEG, 0)
    real_integ = [
        wire(
            1,
            ProtocolId.IKE,
            Transform(ENCR, GCM, 256),
            Transform(PRF, 5),
            Transform(INTEG, 12),
            Transform(DH, 19),
        )
    ]
    with pytest.raises(NoProposalChosen):
        select_proposal(real_integ, ike("aes256gcm16-prfsha256-ecp256"))


def test_unknown_type_attribute_protocol_and_spi_size() -> None:
    configured = esp("aes256gcm16")
    base = (Transform(ENCR, GCM, 256), Transform(ESN, 0))
    unknown_type = wire(1, ProtocolId.ESP, *base, Transform(6, 1), spi=ESP_SPI)  # RFC 9370 ADDKE1
    ah = wire(2, ProtocolId.AH, *base, spi=ESP_SPI)
    short_spi = wire(3, ProtocolId.ESP, *base, spi=b"\x01\x02")
    odd_attr = Transform(ENCR, GCM, 256, (TransformAttribute(99, 1),))
    attributed = wire(4, ProtocolId.ESP, odd_attr, Transform(ESN, 0), spi=ESP_SPI)
    with pytest.raises(NoProposalChosen):
        select_proposal([unknown_type, ah, short_spi, attributed], configured)
    # A transform with an unknown attribute is skipped, its siblings still count (§3.3.6).
    mixed = wire(
        5, ProtocolId.ESP, odd_attr, Transform(ENCR, GCM, 256), Transform(ESN, 0), spi=ESP_SPI
    )
    assert select_proposal([attributed, mixed], configured).number == 5


def test_first_acceptable_offer_for_our_best_proposal() -> None:
    offers = [
        wire(1, ProtocolId.ESP, Transform(ENCR, GCM, 128), Transform(ESN, 0), spi=ESP_SPI),
        wire(2, ProtocolId.ESP, Transform(ENCR, GCM, 256), Transform(ESN, 0), spi=ESP_SPI),
        wire(
            3,
            ProtocolId.ESP,
            Transform(ENCR, GCM, 256),
            Transform(ESN, 1),
            Transform(ESN, 0),
            spi=ESP_SPI,
        ),
    ]
    assert select_proposal(offers, esp("aes256gcm16-esn-noesn", "aes128gcm16")).number == 2


# --- offers and replies (initiator) -------------------------------------------


def test_make_offer_numbers_from_one() -> None:
    offer = make_offer(esp("aes256gcm16-esn-noesn", "chacha20poly1305"), ESP_SPI)
    assert [o.number for o in offer] == [1, 2]
    assert all(o.spi == ESP_SPI and o.protocol == ProtocolId.ESP for o in offer)
    assert offer[0].transforms == (Transform(ENCR, GCM, 256), Transform(ESN, 1), Transform(ESN, 0))


def test_offer_select_verify_roundtrip() -> None:
    initiator = ike("aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-x25519-ecp384")
    responder = ike("aes256gcm16-prfsha384-ecp384-x25519")
    chosen = select_proposal(make_offer(initiator), responder)
    verified = verify_reply([chosen.to_wire()], initiator)
    assert verified == chosen
    assert str(verified) == "aes256gcm16-prfsha384-ecp384"


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ([], "carries 0 proposals"),
        (
            [wire(3, ProtocolId.ESP, Transform(ENCR, GCM, 256), Transform(ESN, 0), spi=ESP_SPI)],
            "#3",
        ),
        (  # two ESN transforms: the responder did not choose
            [
                wire(
                    1,
                    ProtocolId.ESP,
                    Transform(ENCR, GCM, 256),
                    Transform(ESN, 0),
                    Transform(ESN, 1),
                    spi=ESP_SPI,
                )
            ],
            "one usable transform per type",
        ),
        (  # a key length we never offered
            [wire(1, ProtocolId.ESP, Transform(ENCR, GCM, 128), Transform(ESN, 0), spi=ESP_SPI)],
            "does not fit",
        ),
        (  # ESN missing
            [wire(1, ProtocolId.ESP, Transform(ENCR, GCM, 256), spi=ESP_SPI)],
            "does not fit",
        ),
        (  # a type we never offered
            [
                wire(
                    1,
                    ProtocolId.ESP,
                    Transform(ENCR, GCM, 256),
                    Transform(ESN, 0),
                    Transform(DH, 19),
                    spi=ESP_SPI,
                )
            ],
            "does not fit",
        ),
    ],
)
def test_verify_reply_rejects(answer: list[WireProposal], fragment: str) -> None:
    with pytest.raises(NoProposalChosen, match=fragment):
        verify_reply(answer, esp("aes256gcm16-esn-noesn", "chacha20poly1305"))


def test_dh_helpers() -> None:
    configured = esp("aes256gcm16", "aes256gcm16-ecp384-x25519")
    assert first_dh_group(configured) == 20
    assert first_dh_group(esp("aes256gcm16")) is None
    assert accepts_dh_group(configured, 31)
    assert not accepts_dh_group(configured, 19)


# --- the memo of matches (a hub answers the same offer thousands of times) -----


def test_a_repeated_offer_is_matched_once_with_its_own_spi() -> None:
    configured = esp("aes256gcm16")
    transforms = (Transform(ENCR, GCM, 256), Transform(ESN, 0))
    first = select_proposal([wire(1, ProtocolId.ESP, *transforms, spi=ESP_SPI)], configured)
    again = select_proposal([wire(2, ProtocolId.ESP, *transforms, spi=b"\x55" * 4)], configured)
    assert again.transforms is first.transforms  # the memo's answer, not a new match
    assert (again.number, again.peer_spi) == (2, b"\x55" * 4)  # the offer's own, per call
    # The same content against another configured proposal, or a DH preference, is
    # matched on its own: an ESN-only configuration refuses what NO_ESN accepted.
    with pytest.raises(NoProposalChosen):
        select_proposal([wire(1, ProtocolId.ESP, *transforms, spi=ESP_SPI)], esp("aes256gcm16-esn"))
    offer = [wire(1, ProtocolId.IKE, Transform(ENCR, GCM, 256), Transform(PRF, 5),
                  Transform(DH, 19), Transform(DH, 31))]  # fmt: skip
    both = ike("aes256gcm16-prfsha256-x25519-ecp256")
    assert select_proposal(offer, both).dh_group == 31
    assert select_proposal(offer, both, prefer_dh=19).dh_group == 19
    assert len(proposals._MATCHES) <= proposals._MATCHES_MAX


def test_hostile_offers_do_not_grow_the_memo() -> None:
    configured = esp("aes256gcm16")
    for n in range(3 * proposals._MATCHES_MAX):  # each a new content: misses only
        offer = wire(1, ProtocolId.ESP, Transform(ENCR, GCM, n % 65536), spi=ESP_SPI)
        with pytest.raises(NoProposalChosen):
            select_proposal([offer], configured)
        assert len(proposals._MATCHES) <= proposals._MATCHES_MAX
    # offers carrying attribute values (up to the message size) are never kept
    attributed = Transform(ENCR, GCM, 256, (TransformAttribute(99, b"\x00" * 4000),))
    proposals._MATCHES.clear()
    with pytest.raises(NoProposalChosen):
        select_proposal([wire(1, ProtocolId.ESP, attributed, spi=ESP_SPI)], configured)
    assert not proposals._MATCHES
