"""Human ``tunneld status``: where the peer is now, role, NAT-T, IPv6 in brackets, no None.

The input is the daemon's JSON status (as tests/daemon/test_daemon_memory.py
gets it over the control socket), shaped by hand for the cases an operator
meets: a peer on NAT-T port 4500, a dynamic peer before and after it connects,
IPv6, a half-made IKE SA without a responder SPI or identity yet.
"""

from __future__ import annotations

from typing import Any

from tunneld.cli import format_drops, format_status


def ike_sa(**fields: Any) -> dict[str, Any]:
    sa = {
        "state": "established",
        "role": "initiator",
        "spi_i": "11" * 8,
        "spi_r": "22" * 8,
        "local": "192.0.2.1:4500",
        "remote": "192.0.2.2:4500",
        "algorithms": "aes256gcm16-prfsha256-x25519",
        "remote_id": "gw-b.example.org",
        "nat_t": True,
        "behind_nat": False,
        "superseded": False,
    }
    sa.update(fields)
    return sa


def peer(**fields: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": "gw-b",
        "remote": "192.0.2.2:500",
        "resolved": None,
        "address": "192.0.2.2:4500",
        "state": "established",
        "held_down": None,
        "last_error": None,
        "liveness": {"state": "alive", "last_heard": 1.0, "dpd_delay": 30},
        "ike_sas": [ike_sa()],
        "child_sas": [],
    }
    p.update(fields)
    return p


def status(*peers: dict[str, Any], drops: dict[str, int] | None = None, **extra: Any) -> str:
    st = {
        "gateway": "gw-a",
        "tun": "tun0",
        "uptime": 12.0,
        "peers": list(peers),
        "dataplane": {"drops": drops or {}},
        **extra,
    }
    text = format_status(st)
    assert "None" not in text, text
    return text


def test_the_peer_shows_where_it_is_now_port_4500_and_its_role() -> None:
    text = status(peer())
    assert "peer gw-b [established] remote 192.0.2.2:4500, initiator, NAT-T " in text, text
    assert ":500" not in text


def test_a_nat_on_our_side_is_said() -> None:
    text = status(peer(ike_sas=[ike_sa(role="responder", behind_nat=True)]))
    assert "responder, NAT-T, NAT detected: we are behind a NAT" in text, text


def test_a_peer_elsewhere_than_configured_shows_both() -> None:
    text = status(peer(address="198.51.100.7:61002"))
    assert "remote 198.51.100.7:61002 (configured 192.0.2.2:500)" in text, text


def test_a_dns_name_shows_what_it_resolved_to() -> None:
    text = status(peer(remote="gw-b.example.org:500", resolved="192.0.2.2"))
    assert "remote 192.0.2.2:4500 (gw-b.example.org)," in text, text
    text = status(peer(remote="gw-b.example.org:500", resolved="192.0.2.2", address=None))
    assert "remote gw-b.example.org:500 (192.0.2.2) (not connected)" in text, text


def test_a_dynamic_peer_before_and_after_it_connects() -> None:
    down = peer(remote=None, address=None, state="down", ike_sas=[])
    down["liveness"] = {"state": "down", "last_heard": None, "dpd_delay": 30}
    text = status(down)
    assert "remote dynamic, not connected" in text and "heard never" in text, text
    text = status(peer(remote=None, address="198.51.100.7:4500"))
    assert "remote 198.51.100.7:4500 (dynamic), initiator" in text, text


def test_ipv6_addresses_are_bracketed() -> None:
    v6 = peer(
        remote="2001:db8::2:500",
        address="[2001:db8::2]:4500",
        ike_sas=[ike_sa(remote="2001:db8::2:4500")],
    )
    text = status(v6)
    assert "remote [2001:db8::2]:4500," in text, text
    text = status(peer(remote="2001:db8::2:500", address=None, ike_sas=[]))
    assert "remote [2001:db8::2]:500 (not connected)" in text, text


def test_a_half_made_ike_sa_prints_no_none() -> None:
    half = ike_sa(state="init_sent", spi_r="", algorithms=None, remote_id=None)
    text = status(peer(state="connecting", address=None, ike_sas=[half]))
    assert f"IKE SA {'11' * 8}_i {'0' * 16}_r initiator init_sent" in text, text
    assert "id " not in text


def test_drops_read_as_counts_not_a_dict() -> None:
    assert format_drops({}) == "none"
    assert format_drops({"no_policy": 1, "replay": 0, "auth_failed": 3}) == (
        "3 auth_failed, 1 no_policy"
    )
    text = status(peer(), drops={"no_policy": 1})
    assert "data plane drops: 1 no_policy" in text and "{" not in text


def test_closed_ike_sas_are_counted_not_listed() -> None:
    text = status(peer(closed_ike_sas=2))
    assert "(2 closed IKE SAs kept to answer retransmissions)" in text, text
    assert "closed IKE SA" not in status(peer(closed_ike_sas=0))


def test_deleted_ike_sas_of_the_gateway_are_counted() -> None:
    held = {"held": 3, "answered": 1, "dropped": 0, "evicted": 0}
    text = status(peer(), deleted_ike_sas=held)
    assert "  3 deleted IKE SAs kept to answer retransmissions" in text, text
    none = {"held": 0, "answered": 1, "dropped": 0, "evicted": 0}
    assert "deleted IKE SA" not in status(peer(), deleted_ike_sas=none)
