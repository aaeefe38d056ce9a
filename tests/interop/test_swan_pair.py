"""Two strongSwan gateways against each other in the lab namespaces.

This proves netns-scripts/strongswan.sh and the StrongSwan helper, so that the
tunneld interop tests only have to replace one side.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers.certs import GW_A, GW_B, lab_pki
from tests.helpers.sitelab import SITE_A_NET, SITE_B_HOST, SITE_B_NET, WAN_A, WAN_B, Lab
from tests.helpers.swan import (
    SCRIPT,
    StrongSwan,
    SwanConfig,
    SwanError,
    charons_using,
    pid_alive,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns]


def _pair_configs(auth: str, tmp_path: Path) -> tuple[SwanConfig, SwanConfig]:
    """(gateway A, gateway B): mirrored connections, X25519, AES-256-GCM."""
    if auth == "pubkey":
        pki = lab_pki(tmp_path / "pki")
        cred_a = {"cert": pki[GW_A].cert, "key": pki[GW_A].key, "ca": pki[GW_A].ca}
        cred_b = {"cert": pki[GW_B].cert, "key": pki[GW_B].key, "ca": pki[GW_B].ca}
    else:
        psk = tmp_path / "psk.txt"
        psk.touch(mode=0o600)
        psk.write_text(secrets.token_urlsafe(24) + "\n")
        cred_a = cred_b = {"psk_file": psk}
    a = SwanConfig(WAN_A, WAN_B, GW_A, GW_B, SITE_A_NET, SITE_B_NET, auth, **cred_a)  # type: ignore[arg-type]
    b = SwanConfig(WAN_B, WAN_A, GW_B, GW_A, SITE_B_NET, SITE_A_NET, auth, **cred_b)  # type: ignore[arg-type]
    return a, b


def _only(items: list[dict[str, object]]) -> dict[str, object]:
    assert len(items) == 1, items
    return items[0]


def _start_pair(
    auth: str, strongswan: Callable[[str], StrongSwan], tmp_path: Path
) -> tuple[StrongSwan, StrongSwan]:
    cfg_a, cfg_b = _pair_configs(auth, tmp_path)
    gwa, gwb = strongswan("gwa"), strongswan("gwb")
    gwb.start(cfg_b)
    gwa.start(cfg_a)
    gwa.initiate()
    return gwa, gwb


def _assert_spis_mirror(gwa: StrongSwan, gwb: StrongSwan) -> tuple[str, str]:
    child_a, child_b = _only(gwa.child_sas()), _only(gwb.child_sas())
    assert child_a["spi-in"] == child_b["spi-out"]
    assert child_a["spi-out"] == child_b["spi-in"]
    assert child_a["spi-in"] != child_a["spi-out"]
    return str(child_a["spi-in"]), str(child_a["spi-out"])


@pytest.mark.parametrize("auth", ["pubkey", "psk"])
def test_pair_establishes_carries_traffic_rekeys_and_stops(
    auth: str, lab: Lab, strongswan: Callable[[str], StrongSwan], tmp_path: Path
) -> None:
    # Without a tunnel the gateways have no route to the far site.
    assert lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0

    gwa, gwb = _start_pair(auth, strongswan, tmp_path)

    ike_a, ike_b = _only(gwa.list_sas_raw()), _only(gwb.list_sas_raw())
    for ike, initiator in ((ike_a, "yes"), (ike_b, None)):
        assert ike["state"] == "ESTABLISHED"
        assert ike.get("initiator") == initiator
        assert (ike["encr-alg"], ike["encr-keysize"]) == ("AES_GCM_16", "256")
        assert (ike["prf-alg"], ike["dh-group"]) == ("PRF_HMAC_SHA2_256", "CURVE_25519")
        assert ike["local-port"] == ike["remote-port"] == "4500"  # encap = yes
    assert (ike_a["local-id"], ike_a["remote-id"]) == (GW_A, GW_B)
    assert ike_a["initiator-spi"] == ike_b["initiator-spi"]
    assert ike_a["responder-spi"] == ike_b["responder-spi"]
    child = _only(gwa.child_sas())
    assert (child["encr-alg"], child["encr-keysize"], child["encap"]) == (
        "AES_GCM_16",
        "256",
        "yes",
    )
    assert (child["mode"], child["protocol"]) == ("TUNNEL", "ESP")
    assert (child["local-ts"], child["remote-ts"]) == ([SITE_A_NET], [SITE_B_NET])
    spis = _assert_spis_mirror(gwa, gwb)

    # kernel-netlink routes the far site into libipsec's TUN, in table 220.
    routes = lab.exec("gwa", "ip", "route", "show", "table", "220").stdout
    assert f"{SITE_B_NET} dev ipsec0" in routes
    assert lab.ping("a", SITE_B_HOST, count=3) == 3
    assert int(str(_only(gwb.child_sas())["packets-in"])) >= 3

    gwa.rekey_child()
    gwa.wait_for(lambda: len(gwa.child_sas()) == 1 and len(gwb.child_sas()) == 1, what="rekey")
    new_spis = _assert_spis_mirror(gwa, gwb)
    assert set(new_spis).isdisjoint(spis)
    assert lab.ping("a", SITE_B_HOST, count=2) == 2
    assert int(str(_only(gwb.child_sas())["packets-in"])) >= 2

    # An IKE SA rekey moves the Child SA to the new IKE SA untouched.
    old_ike_spis = (ike_a["initiator-spi"], ike_a["responder-spi"])
    gwa.rekey_ike()
    gwa.wait_for(
        lambda: len(gwa.list_sas_raw()) == len(gwb.list_sas_raw()) == 1, what="old IKE SA gone"
    )
    ike_a = _only(gwa.list_sas_raw())
    assert (ike_a["initiator-spi"], ike_a["responder-spi"]) != old_ike_spis
    assert _assert_spis_mirror(gwa, gwb) == new_spis
    if auth == "psk":  # the PSK never reaches a log or the script's output
        psk = (tmp_path / "psk.txt").read_text().strip()
        for text in (gwa.log_text(), gwb.log_text(), (gwa.directory / "charon.stdout").read_text()):
            assert psk not in text and psk.encode().hex() not in text

    pids = [gwa.started_pid, gwb.started_pid]
    assert charons_using(gwa.directory) == [pids[0]]
    gwa.stop()
    gwb.stop()
    assert not any(pid_alive(pid) for pid in pids if pid is not None)
    assert charons_using(gwa.directory) == charons_using(gwb.directory) == []
    for role in ("gwa", "gwb"):
        assert lab.exec(role, "ip", "link", "show", "ipsec0").returncode != 0
    assert "charon.vici" in os.listdir(gwa.directory)  # stop removes nothing


def test_terminate_closes_both_sides(
    lab: Lab, strongswan: Callable[[str], StrongSwan], tmp_path: Path
) -> None:
    gwa, gwb = _start_pair("psk", strongswan, tmp_path)
    assert gwb.list_sas_raw()
    gwa.terminate()
    gwb.wait_for(lambda: not gwb.list_sas_raw(), timeout=5, what="peer DELETE")
    assert gwa.list_sas_raw() == []
    assert "received DELETE for IKE_SA" in gwb.log_text()
    assert lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0


def test_libipsec_refuses_esn(
    lab: Lab, strongswan: Callable[[str], StrongSwan], tmp_path: Path
) -> None:
    # libipsec 5.9.8 selects an ESN proposal, then cannot install the SA:
    # interop peers of tunneld must propose no ESN (the default here).
    cfg_a, cfg_b = _pair_configs("psk", tmp_path)
    gwa, gwb = strongswan("gwa"), strongswan("gwb")
    gwb.start(replace(cfg_b, esn="yes"))
    gwa.start(replace(cfg_a, esn="yes"))
    with pytest.raises(SwanError):
        gwa.initiate(timeout=5)
    assert "ESN not supported" in gwb.log_text()
    assert gwa.child_sas() == []
    assert _only(gwa.list_sas_raw())["state"] == "ESTABLISHED"  # only the Child SA failed


def test_failed_start_leaves_no_charon(
    lab: Lab, strongswan: Callable[[str], StrongSwan], tmp_path: Path
) -> None:
    cfg_a, _ = _pair_configs("psk", tmp_path)
    gwa = strongswan("gwa")
    with pytest.raises(SwanError, match="load-all failed"):
        gwa.start(replace(cfg_a, ike="aes256gcm16-nosuchprf-x25519"))
    assert "charon exited" not in gwa.log_text()
    assert (gwa.directory / "charon.vici").exists()  # charon did start...
    assert charons_using(gwa.directory) == []  # ...and the script stopped it


def test_start_refuses_missing_namespace(tmp_path: Path) -> None:
    psk = tmp_path / "psk.txt"
    psk.write_text("not used\n")
    proc = subprocess.run(
        [str(SCRIPT), "start", "--ns", f"hsw{secrets.token_hex(3)}-none", "--dir", str(tmp_path),
         "--local-addr", WAN_A, "--remote-addr", WAN_B, "--local-id", GW_A, "--remote-id", GW_B,
         "--local-ts", SITE_A_NET, "--remote-ts", SITE_B_NET, "--auth", "psk",
         "--psk-file", str(psk)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no network namespace" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psk.txt"]


def test_stop_without_daemon_is_a_no_op(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [str(SCRIPT), "stop", "--dir", str(tmp_path)], capture_output=True, timeout=10, check=False
    )
    assert proc.returncode == 0
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []
