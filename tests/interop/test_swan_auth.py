"""tunneld against strongSwan: authentication methods and DH groups, each way; refusals.

The matrix (tunneld on gw-a, charon + kernel-libipsec on gw-b): ECDSA P-256
certificates, Ed25519 certificates (both from `tunneld pki`, the Ed25519/X25519
cells through its command line with ``--key-type ed25519``) and a pre-shared key, each
with X25519 and with ECP-256 as the IKE SA's DH group, each side initiating.
The ECDSA/X25519 cells are test_tunneld_swan.py's main pairings. Every cell
brings the tunnel up, pings, sends 1,000 probes each way (nothing lost) and
checks that `tunneld status --json` and `swanctl --list-sas` agree
(pairing.assert_agree, packet counters included).

Then the refusals: a strongSwan peer whose certificate comes from a CA
tunneld does not trust, one that claims another identity (a valid
certificate from the right CA for gw-z.example.org), and one with another
pre-shared key. Each ends in AUTHENTICATION_FAILED, seen in tunneld's
``last_error`` and in charon's log, and no tunnel.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.helpers.pairing import (
    IKE,
    Initiator,
    Pair,
    Setup,
    assert_agree,
    check_traffic,
    wait_until,
)
from tests.helpers.sitelab import SITE_B_HOST, WAN_B
from tests.helpers.swan import SwanConfig
from tunneld import pki

pytestmark = [pytest.mark.interop, pytest.mark.netns]

ECP256 = "aes256gcm16-prfsha256-ecp256"
GROUPS = {"x25519": IKE, "ecp256": ECP256}


def _cell(auth: str, group: str, initiator: Initiator) -> Setup:
    return Setup(
        initiator,
        auth="psk" if auth == "psk" else "pubkey",
        key_type="ed25519" if auth == "ed25519" else "ecdsa",
        # `tunneld pki init-ca/issue --key-type ed25519` (the library it runs for the rest)
        pki_via_cli=(auth, group) == ("ed25519", "x25519"),
        tunneld_ike=(GROUPS[group],),
        swan={"ike": GROUPS[group]},
        expect_ike=GROUPS[group],
    )


MATRIX = {
    f"{auth}-{group}-{who}": _cell(auth, group, initiator)
    for auth in ("ecdsa", "ed25519", "psk")
    for group in ("x25519", "ecp256")
    for who, initiator in (("tunneld", "tunneld"), ("swan", "swanctl"))
    if (auth, group) != ("ecdsa", "x25519")  # test_tunneld_swan.py
}


@pytest.mark.parametrize("setup", list(MATRIX.values()), ids=list(MATRIX))
def test_authentication_and_dh_group_matrix(
    setup: Setup,
    swan_pair: Callable[..., Pair],
) -> None:
    pair = swan_pair(setup)
    check_traffic(pair)
    assert_agree(pair, counters=True)
    log = pair.swan.log_text()
    if setup.auth == "psk":
        assert "with pre-shared key successful" in log
    else:  # RFC 7427 signatures both ways, with the key type of the certificates
        method = "ED25519" if setup.key_type == "ed25519" else "ECDSA_WITH_SHA256_DER"
        assert f"authentication of '{pair.ids[0]}' with {method} successful" in log
        assert f"authentication of '{pair.ids[1]}' (myself) with {method} successful" in log


# -- refusals ---------------------------------------------------------------------------

Refusal = Literal["other-ca", "wrong-id", "wrong-psk"]

# What tunneld's last_error says, per refusal and per side that refuses.
TUNNELD_REFUSES = {
    "other-ca": "no trusted CA issued 'CN=gw-b': a trusted CA has the issuer's name but not its key"
    " (issuer 'CN=tunneld lab CA' key id ",
    "wrong-id": "peer identity 'gw-z.example.org' with AUTH method 14 is not configured",
    "wrong-psk": "AUTHENTICATION_FAILED",
}


def _rogue(kind: Refusal, work: Path, config: SwanConfig) -> SwanConfig:
    """gw-b's configuration with the flaw ``kind``."""
    rogue = work / "rogue"
    if kind == "other-ca":  # the same CA name and leaf identities, another key
        pki.init_ca(rogue / "ca", "tunneld lab CA")
        leaf = pki.issue(rogue / "ca", "gw-b", rogue, dns=["gw-b.example.org"], ips=[WAN_B])
        return replace(config, cert=leaf.certificate, key=leaf.key)
    if kind == "wrong-id":  # a certificate tunneld's CA really issued, for another gateway
        leaf = pki.issue(work / "pki" / "ca", "gw-z", rogue, dns=["gw-z.example.org"], ips=[WAN_B])
        return replace(config, cert=leaf.certificate, key=leaf.key, local_id="gw-z.example.org")
    psk = rogue / "psk.txt"
    psk.parent.mkdir(parents=True, exist_ok=True)
    psk.write_text(secrets.token_urlsafe(24) + "\n")
    return replace(config, psk_file=psk)


@pytest.mark.parametrize(
    ("kind", "initiator"),
    [
        ("other-ca", "tunneld"),
        ("other-ca", "swanctl"),
        ("wrong-id", "tunneld"),
        ("wrong-id", "swanctl"),
        ("wrong-psk", "swanctl"),
    ],
)
def test_a_peer_that_cannot_authenticate_is_refused(
    kind: Refusal,
    initiator: Initiator,
    swan_pair: Callable[..., Pair],
) -> None:
    setup = Setup(initiator, auth="psk" if kind == "wrong-psk" else "pubkey")
    pair = swan_pair(setup, alter_swan=lambda config, work: _rogue(kind, work, config), wait=False)
    if initiator == "swanctl":
        out = pair.swan.swanctl("--initiate", "--child", "net", "--timeout", "5", check=False)
        assert out.returncode != 0 and "received AUTHENTICATION_FAILED notify error" in out.stdout
    wait_until(lambda: failure(pair.peer()) is not None, 10, "tunneld's last_error")
    peer = pair.peer()
    assert peer["child_sas"] == [] and peer["counters"]["ike_sas_established"] == 0
    assert "AUTHENTICATION_FAILED" in failure(peer)
    _assert_refusal_logged(pair, kind)
    assert not [sa for sa in pair.swan.list_sas_raw() if sa["state"] == "ESTABLISHED"]
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0


def failure(peer: dict[str, Any]) -> str | None:
    """Our own attempt's failure is last_error; a responder's refusal of an initiator
    that never authenticated is kept apart (it could be anyone's spoof)."""
    found: str | None = peer["last_error"] or peer["last_unauthenticated_failure"]
    return found


def _assert_refusal_logged(pair: Pair, kind: Refusal) -> None:
    """Who refused: tunneld checks charon's AUTH (and says so in an AUTHENTICATION_FAILED
    notify), except that charon, as responder, refuses first an IDr that is not its own."""
    peer, log = pair.peer(), pair.swan.log_text()
    charon_refuses = kind == "wrong-id" and pair.setup.tunneld_initiates
    if charon_refuses:
        assert "generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in log
        assert "peer refused IKE_AUTH: AUTHENTICATION_FAILED" in failure(peer)
        return
    assert TUNNELD_REFUSES[kind] in failure(peer)
    if pair.setup.tunneld_initiates:  # RFC 7296 §2.21.2: the initiator tells the responder
        assert "[ N(AUTH_FAILED) ]" in log and "parsed INFORMATIONAL request" in log
    else:
        assert "parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in log
