"""tunneld against strongSwan 5.9 (charon + kernel-libipsec): the first external check.

tunneld runs on gw-a, charon on gw-b, in the lab of netns-scripts/lab.sh.
The main pairing: ECDSA P-256 certificates from `tunneld pki`, IKE
aes256gcm16-prfsha256-x25519, ESP aes256gcm16 without ESN (libipsec has
none), each side initiating once. Variants change one thing each (cipher,
DH group negotiation, PSK, how charon initiates). In every case the test
checks that:

1. the IKE SA and the Child SA come up on both sides;
2. ping and sequence-numbered UDP probes (tests/tools/probe.py; 10,000 in the main
   pairing) cross from site A to site B and back with nothing lost,
   duplicated or corrupted;
3. `swanctl --list-sas` and `tunneld status --json` agree: the same IKE
   SPIs, Child SA SPIs crosswise, algorithms, identities, selectors, roles,
   and packet counters (what one side sent is what the other received);
4. a DELETE from either side takes the tunnel down on the other.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.interop.certs import GW_A, GW_B, lab_credentials
from tests.interop.sitelab import (
    SITE_A_HOST,
    SITE_A_NET,
    SITE_B_HOST,
    SITE_B_NET,
    WAN_A,
    WAN_B,
    Lab,
)
from tests.interop.swan import StrongSwan, SwanConfig
from tests.tools.probe import MAX_SIZE, MIN_SIZE
from tunneld import control
from tunneld.lab import Gateway, SiteOptions, write_site_configs

pytestmark = [pytest.mark.interop, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes256gcm16"
PROBES = 10_000
PROBE_PORT = 9000

# strongSwan's algorithm names (vici list-sa) -> tunneld's proposal tokens.
SWAN_ENCR = {"AES_GCM_16": "aes{bits}gcm16", "CHACHA20_POLY1305": "chacha20poly1305"}
SWAN_PRF = {"PRF_HMAC_SHA2_256": "prfsha256", "PRF_HMAC_SHA2_384": "prfsha384"}
SWAN_DH = {"CURVE_25519": "x25519", "ECP_256": "ecp256", "ECP_384": "ecp384"}


@dataclass(frozen=True)
class Variant:
    """One pairing. ``initiator``: tunneld (auto = start), charon by start_action = start,
    or charon by `swanctl --initiate`; ``expect_*``: what both sides must report."""

    initiator: Literal["tunneld", "swan-start", "swanctl"]
    auth: Literal["pubkey", "psk"] = "pubkey"
    tunneld_ike: tuple[str, ...] = (IKE,)
    tunneld_esp: tuple[str, ...] = (ESP,)
    swan_ike: str = IKE
    swan_esp: str = ESP
    expect_ike: str = IKE
    expect_esp: str = f"{ESP}-noesn"
    probes: int = PROBES
    invalid_ke: bool = False  # charon must ask for another DH group first

    @property
    def tunneld_initiates(self) -> bool:
        return self.initiator == "tunneld"


VARIANTS = {
    "tunneld-initiates": Variant("tunneld"),
    "swan-initiates": Variant("swan-start"),
    # RFC 7634 in IKE and ESP (the ESP cipher once never reached tunneld's data plane).
    "chacha20poly1305": Variant(
        "swanctl",
        tunneld_ike=("chacha20poly1305-prfsha256-x25519",),
        tunneld_esp=("chacha20poly1305",),
        swan_ike="chacha20poly1305-prfsha256-x25519",
        swan_esp="chacha20poly1305",
        expect_ike="chacha20poly1305-prfsha256-x25519",
        expect_esp="chacha20poly1305-noesn",
        probes=1_000,
    ),
    # tunneld's default proposals: its KE is X25519, charon wants ECP-256 (INVALID_KE_PAYLOAD,
    # RFC 7296 §1.2), and picks AES-256-GCM without ESN from tunneld's ESN/no-ESN offers.
    "tunneld-defaults-ecp256": Variant(
        "tunneld",
        tunneld_ike=("aes256gcm16-prfsha256-x25519-ecp256",),
        tunneld_esp=("aes256gcm16-esn-noesn", "aes128gcm16-esn-noesn"),
        swan_ike="aes256gcm16-prfsha256-ecp256",
        expect_ike="aes256gcm16-prfsha256-ecp256",
        probes=1_000,
        invalid_ke=True,
    ),
    "psk": Variant("swanctl", auth="psk", probes=1_000),
}


@dataclass
class Pair:
    lab: Lab
    tunneld: Gateway
    swan: StrongSwan
    variant: Variant
    ids: tuple[str, str]  # (gw-a's identity, gw-b's identity)


def _swan_config(v: Variant, work: Path, ids: tuple[str, str]) -> SwanConfig:
    if v.auth == "pubkey":
        creds = lab_credentials(work / "pki")[GW_B]  # written by write_site_configs
        cred = {"cert": creds.cert, "key": creds.key, "ca": creds.ca}
    else:
        cred = {"psk_file": work / "psk.txt"}
    return SwanConfig(
        WAN_B, WAN_A, ids[1], ids[0], SITE_B_NET, SITE_A_NET, v.auth, **cred,  # type: ignore[arg-type]
        ike=v.swan_ike, esp=v.swan_esp, esn="no",
        start_action="start" if v.initiator == "swan-start" else "none",
    )  # fmt: skip


def _start_pair(
    v: Variant,
    lab: Lab,
    tmp_path: Path,
    strongswan: Callable[[str], StrongSwan],
    tunneld_gateway: Callable[[str, Path], Gateway],
) -> Pair:
    """tunneld on gw-a, charon on gw-b; the responder starts first, then the initiator."""
    work = tmp_path / "tunneld"
    opts = SiteOptions(
        auth=v.auth,
        ike=v.tunneld_ike,
        esp=v.tunneld_esp,
        auto_a="start" if v.tunneld_initiates else "listen",
    )
    conf_a, _ = write_site_configs(work, lab.prefix, opts)
    # With PSK, write_site_configs uses the underlay addresses as identities.
    ids = (GW_A, GW_B) if v.auth == "pubkey" else (WAN_A, WAN_B)
    if v.auth == "psk":
        # strongswan.sh takes the file's bytes literally, tunneld decodes a 0x prefix:
        # plain text means the same key to both.
        (work / "psk.txt").write_text(secrets.token_urlsafe(24) + "\n")
    gw, swan = tunneld_gateway("gwa", conf_a), strongswan("gwb")
    if v.tunneld_initiates:
        swan.start(_swan_config(v, work, ids))
        gw.start()
    else:
        gw.start()
        _wait_ready(gw)
        swan.start(_swan_config(v, work, ids))  # start_action = start: initiates once loaded
        if v.initiator == "swanctl":
            swan.initiate()
    gw.wait_for_child(timeout=10)
    swan.wait_for(lambda: len(swan.child_sas()) == 1, timeout=5, what="strongSwan Child SA")
    return Pair(lab, gw, swan, v, ids)


def _wait_ready(gw: Gateway, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if gw.status().get("ok"):
                return
        except control.ControlError:
            time.sleep(0.05)
    raise TimeoutError(f"tunneld not ready: {gw.tail_log()}")


def _status_json(gw: Gateway) -> dict[str, Any]:
    """What an operator sees: `tunneld status --json`."""
    out = gw.cli("status", "-s", str(gw.socket), "--json")
    assert out.returncode == 0, out.stderr
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def _only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def _swan_ike_algorithms(sa: dict[str, Any]) -> str:
    encr = SWAN_ENCR[sa["encr-alg"]].format(bits=sa.get("encr-keysize", ""))
    return f"{encr}-{SWAN_PRF[sa['prf-alg']]}-{SWAN_DH[sa['dh-group']]}"


def _swan_esp_algorithms(child: dict[str, Any]) -> str:
    encr = SWAN_ENCR[child["encr-alg"]].format(bits=child.get("encr-keysize", ""))
    return f"{encr}-{'esn' if child.get('esn') == '1' else 'noesn'}"


# -- traffic -------------------------------------------------------------------


def _probe_cmd(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.tools.probe", mode, *args]


def _run_probes(lab: Lab, count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Probes from site A to the echo at site B and back, at most 32 unanswered, sizes
    walking 30..1372 bytes (every ESP padding length): (A -> B tally, B -> A tally)."""
    port = ["--port", str(PROBE_PORT)]
    server = lab.popen(
        "b", *_probe_cmd("echo", "--bind", SITE_B_HOST, *port, "--idle", "3"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"READY"
        sender = lab.exec(
            "a", *_probe_cmd(
                "send", "--bind", SITE_A_HOST, "--to", SITE_B_HOST, *port, "--count", str(count),
                "--window", "32", "--sizes", f"{MIN_SIZE}-{MAX_SIZE}",
            ),
            timeout=60,
        )  # fmt: skip
        assert sender.returncode == 0, sender.stderr
        out, err = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    report = json.loads(sender.stdout)
    assert report["forward"] is not None, report
    assert report["forward"] == json.loads(out)["forward"]  # what the echo printed itself
    return report["forward"], report["reverse"]


def _assert_clean(tally: dict[str, Any], count: int, direction: str) -> None:
    counts = {k: tally[k] for k in ("unique", "lost", "duplicated", "corrupt")}
    assert counts == {"unique": count, "lost": 0, "duplicated": 0, "corrupt": 0}, (
        direction,
        tally,
    )


# -- the test --------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_tunneld_and_strongswan_carry_traffic_and_agree(
    variant: Variant,
    lab: Lab,
    tmp_path: Path,
    strongswan: Callable[[str], StrongSwan],
    tunneld_gateway: Callable[[str, Path], Gateway],
) -> None:
    # Without a tunnel site A cannot reach site B.
    assert lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0
    pair = _start_pair(variant, lab, tmp_path, strongswan, tunneld_gateway)
    gw, swan = pair.tunneld, pair.swan

    assert lab.ping("a", SITE_B_HOST, count=3) == 3
    at_b, at_a = _run_probes(lab, variant.probes)
    _assert_clean(at_b, variant.probes, "site A -> site B")
    _assert_clean(at_a, variant.probes, "site B -> site A")

    status, sas = _status_json(gw), swan.list_sas_raw()
    _assert_same_sas(pair, status, sas)
    # The data plane counters match crosswise: nothing sent was lost on the way.
    child, swan_child = _only(_only(status["peers"])["child_sas"]), swan.child_sas()[0]
    assert child["out"]["packets"] == int(swan_child["packets-in"]) >= variant.probes + 3
    assert child["in"]["packets"] == int(swan_child["packets-out"]) >= variant.probes + 3
    # Nothing strongSwan sent was refused (outbound NO_POLICY may count a packet
    # the kernel writes to the fresh TUN device before IPv6 is off there).
    assert child["drops"] == {} and status["dataplane"]["pumps"]["inbound"]["drops"] == {}
    if variant.invalid_ke:  # the INVALID_KE_PAYLOAD round trip did happen
        assert "DH group CURVE_25519 unacceptable, requesting ECP_256" in swan.log_text()

    if variant.tunneld_initiates:
        _tunneld_stops_and_swan_sees_delete(pair)
    else:
        _swan_terminates_and_tunneld_sees_delete(pair)


def _assert_same_sas(pair: Pair, status: dict[str, Any], sas: list[dict[str, Any]]) -> None:
    v, (id_a, id_b) = pair.variant, pair.ids
    peer = _only(status["peers"])
    ike, swan_ike = _only(peer["ike_sas"]), _only(sas)
    states = (peer["state"], ike["state"], swan_ike["state"])
    assert states == ("established", "established", "ESTABLISHED")
    assert ike["role"] == ("initiator" if v.tunneld_initiates else "responder")
    assert swan_ike.get("initiator") == (None if v.tunneld_initiates else "yes")
    assert (ike["spi_i"], ike["spi_r"]) == (swan_ike["initiator-spi"], swan_ike["responder-spi"])
    assert ike["algorithms"] == _swan_ike_algorithms(swan_ike) == v.expect_ike
    assert (ike["remote_id"], swan_ike["remote-id"], swan_ike["local-id"]) == (id_b, id_a, id_b)
    # strongSwan fakes a NAT (encap = yes): both sides talk on UDP 4500.
    assert ike["nat_t"] is True
    assert (ike["local"], ike["remote"]) == (f"{WAN_A}:4500", f"{WAN_B}:4500")
    assert (swan_ike["local-port"], swan_ike["remote-port"]) == ("4500", "4500")

    child = _only(peer["child_sas"])
    swan_child = _only(list(swan_ike["child-sas"].values()))
    assert _only(ike["child_sas"])["spi_in"] == child["spi_in"]
    assert (child["spi_in"], child["spi_out"]) == (swan_child["spi-out"], swan_child["spi-in"])
    assert child["algorithms"] == _swan_esp_algorithms(swan_child) == v.expect_esp
    assert child["esn"] is False
    modes = (swan_child["state"], swan_child["mode"], swan_child["protocol"])
    assert modes == ("INSTALLED", "TUNNEL", "ESP")
    assert swan_child["encap"] == "yes"
    assert (child["local_ts"], child["remote_ts"]) == ([SITE_A_NET], [SITE_B_NET])
    assert (swan_child["local-ts"], swan_child["remote-ts"]) == ([SITE_B_NET], [SITE_A_NET])


def _tunneld_stops_and_swan_sees_delete(pair: Pair) -> None:
    """SIGTERM: tunneld sends DELETE for the IKE SA; charon removes it and its route."""
    assert pair.tunneld.stop() == 0
    pair.swan.wait_for(lambda: not pair.swan.list_sas_raw(), timeout=5, what="IKE SA deleted")
    assert "received DELETE for IKE_SA" in pair.swan.log_text()
    assert SITE_A_NET not in pair.lab.exec("gwb", "ip", "route", "show", "table", "220").stdout


def _swan_terminates_and_tunneld_sees_delete(pair: Pair) -> None:
    """`swanctl --terminate`: charon sends DELETE; tunneld drops its SAs and route."""
    gw = pair.tunneld
    pair.swan.terminate()
    deadline = time.monotonic() + 5
    while _only(gw.status()["peers"])["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.05)
    peer = _only(gw.status()["peers"])
    assert (peer["state"], peer["child_sas"]) == ("down", [])
    # A closed IKE SA may linger to answer a retransmitted DELETE (RFC 7296 §2.1).
    assert {ike["state"] for ike in peer["ike_sas"]} <= {"closed"}
    assert "deleted by peer" in gw.log.read_text()
    assert SITE_B_NET not in pair.lab.exec("gwa", "ip", "route", "show").stdout
    assert pair.lab.ping("a", SITE_B_HOST, count=1, timeout=0.3) == 0
    assert gw.stop() == 0


def test_charon_restart_replaces_the_stale_ike_sa(
    lab: Lab,
    tmp_path: Path,
    strongswan: Callable[[str], StrongSwan],
    tunneld_gateway: Callable[[str, Path], Gateway],
) -> None:
    """charon dies (no DELETE), restarts and initiates with INITIAL_CONTACT: tunneld must
    keep the new IKE SA, not the stale one (tests/daemon/test_peer_restart.py)."""
    pair = _start_pair(Variant("swanctl"), lab, tmp_path, strongswan, tunneld_gateway)
    gw, swan = pair.tunneld, pair.swan
    (stale,) = _established(gw)
    assert swan.started_pid is not None and swan.config is not None
    os.kill(swan.started_pid, signal.SIGKILL)
    swan.wait_for(lambda: not swan.running(), timeout=5, what="charon gone")

    swan.start(swan.config)
    swan.initiate()
    fresh_spi = _only(swan.list_sas_raw())["initiator-spi"]
    swan.wait_for(
        lambda: [ike["spi_i"] for ike in _established(gw)] == [fresh_spi],
        timeout=5,
        what="tunneld on the new IKE SA only",
    )
    assert fresh_spi != stale["spi_i"]
    assert "N(INIT_CONTACT)" in swan.log_text()
    assert f"replacing stale IKE SA peer=gw-b spi_i={stale['spi_i']}" in gw.log.read_text()
    child = _only(_only(gw.status()["peers"])["child_sas"])
    assert (child["spi_in"], child["spi_out"]) == (
        swan.child_sas()[0]["spi-out"],
        swan.child_sas()[0]["spi-in"],
    )
    assert lab.ping("a", SITE_B_HOST, count=3) == 3
    at_b, at_a = _run_probes(lab, 1_000)
    _assert_clean(at_b, 1_000, "site A -> site B")
    _assert_clean(at_a, 1_000, "site B -> site A")


def _established(gw: Gateway) -> list[dict[str, Any]]:
    return [ike for ike in _only(gw.status()["peers"])["ike_sas"] if ike["state"] == "established"]
