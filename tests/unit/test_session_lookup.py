"""A responder that asks a peer lookup at IKE_AUTH (issue 10): the configuration comes
from the identity the initiator claims (IDi), its address and its TSi, and AUTH is
then verified with that configuration. Nothing is installed for a refused initiator."""

from __future__ import annotations

import ipaddress

import pytest
from sessionpair import (
    ADDR_I,
    GW_I,
    GW_R,
    SITE_I,
    SessionPair,
    config_pair,
    make_ca,
    psk,
    pubkey,
    with_,
)

from ike.auth import Identity
from ike.constants import NotifyType
from ike.errors import LocalError
from ike.events import ChildSaUp, IkeSaUp
from ike.proposals import parse_ike_proposal
from ike.sessionconfig import PeerQuery, SessionConfig


def run(pair: SessionPair) -> SessionPair:
    pair.start()
    pair.run()
    return pair


def refused(pair: SessionPair) -> str:
    for side in "ir":
        assert not pair.of(side, IkeSaUp) and not pair.of(side, ChildSaUp)
        assert pair.down(side).notify is NotifyType.AUTHENTICATION_FAILED
    reason: str = pair.down("r").reason
    return reason


def test_lookup_is_asked_with_what_the_initiator_claims_and_its_config_is_used() -> None:
    i_cfg, r_cfg = config_pair()
    quarter = ipaddress.ip_network("198.51.100.64/26")
    found = with_(r_cfg, remote_ts=(quarter,), name="found")
    asked: list[PeerQuery] = []

    def lookup(query: PeerQuery) -> SessionConfig | str:
        asked.append(query)
        return found

    template = with_(r_cfg, remote_id=None, name="template")  # IKE_SA_INIT's view
    pair = run(SessionPair(i_cfg, template, lookup=lookup))
    (query,) = asked
    assert query.idi == Identity.parse(GW_I) and query.idr == Identity.parse(GW_R)
    assert query.remote_addr == (ADDR_I[0], 4500) and query.tsi == (SITE_I,)  # NAT-T port
    assert pair.child_up("r").remote_ts == (quarter,)  # narrowed by the looked-up config
    assert pair.responders[0].config is found


def test_a_refusal_is_authentication_failed_with_the_reason() -> None:
    i_cfg, r_cfg = config_pair()
    pair = run(SessionPair(i_cfg, r_cfg, lookup=lambda q: f"nobody is '{q.idi}'"))
    assert f"nobody is '{GW_I}'" in refused(pair)


def test_the_identity_is_still_proven_with_the_config_found() -> None:
    """The lookup trusts the claimed IDi; AUTH against the entry's CA decides."""
    i_cfg, r_cfg = config_pair()
    other = with_(r_cfg, auth=pubkey(GW_R, trust=make_ca("Other CA", seed=99)))
    pair = run(SessionPair(i_cfg, r_cfg, lookup=lambda q: other))
    assert "no trusted CA" in refused(pair)


def test_the_config_found_must_use_the_peers_auth_method() -> None:
    i_cfg, r_cfg = config_pair()
    pair = run(SessionPair(i_cfg, r_cfg, lookup=lambda q: with_(r_cfg, auth=psk())))
    assert "not the one configured" in refused(pair)


def test_the_config_found_must_accept_the_ike_proposal_already_selected() -> None:
    """IKE_SA_INIT chose from every candidate's proposals; the entry found must allow it."""
    i_cfg, r_cfg = config_pair()
    narrow = with_(r_cfg, ike_proposals=(parse_ike_proposal("aes128gcm16-prfsha384-ecp384"),))
    pair = run(SessionPair(i_cfg, r_cfg, lookup=lambda q: narrow))
    assert "is not configured for peer identity" in refused(pair)


def test_a_lookup_naming_another_identity_is_our_bug_not_an_admission() -> None:
    """Defence in depth: a configuration for someone else is never used for IDi."""
    i_cfg, r_cfg = config_pair()
    wrong = with_(r_cfg, remote_id=Identity.parse("someone-else.example.org"))
    pair = SessionPair(i_cfg, r_cfg, lookup=lambda q: wrong)
    pair.start()
    with pytest.raises(LocalError, match=r"returned one for 'someone-else\.example\.org'"):
        pair.run()
    assert not pair.of("r", IkeSaUp) and not pair.of("r", ChildSaUp)
