"""tunneld on gw-a, strongSwan (charon + kernel-libipsec) on gw-b: one pairing of the matrix.

Shared by the tunneld-vs-strongSwan test files (test_tunneld_swan.py,
test_swan_auth.py, test_swan_esp.py, test_swan_rekey.py,
test_swan_delete_dpd.py). A :class:`Setup` says what one case changes (who
initiates, authentication, proposals, lifetimes, extra knobs on either
side); :func:`start_pair` writes both configurations, starts the responder
first and waits for the Child SA on both sides. Then the checks every
successful case makes:

- :func:`check_traffic`: ping, then sequence-numbered UDP probes
  (tests/tools/probe.py) from site A to site B and back, nothing lost,
  duplicated or corrupted; :func:`probing` runs them in the background
  (``--rate 1000``: one datagram per millisecond each way) while the test
  rekeys or deletes;
- :func:`assert_agree`: once both sides have settled (one IKE SA, one
  installed Child SA each), ``tunneld status --json`` and ``swanctl
  --list-sas`` name the same IKE SPIs, the same Child SA SPIs crosswise,
  the same algorithms, identities, selectors and roles, and (optionally)
  packet counters that match crosswise.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tests.helpers.certs import GW_A, GW_B, lab_credentials
from tests.helpers.sitelab import (
    SITE_A_HOST,
    SITE_A_NET,
    SITE_B_HOST,
    SITE_B_NET,
    WAN_A,
    WAN_B,
    Lab,
)
from tests.helpers.swan import StrongSwan, SwanConfig
from tests.tools.probe import MAX_SIZE, MIN_SIZE
from tools.lab import Gateway, SiteOptions, write_site_configs

REPO = Path(__file__).resolve().parents[2]
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes256gcm16"
PROBE_PORT = 9000
SIZES = f"{MIN_SIZE}-{MAX_SIZE}"  # every ESP padding length

# strongSwan's algorithm names (vici list-sa) -> tunneld's proposal tokens.
SWAN_ENCR = {"AES_GCM_16": "aes{bits}gcm16", "CHACHA20_POLY1305": "chacha20poly1305"}
SWAN_PRF = {"PRF_HMAC_SHA2_256": "prfsha256", "PRF_HMAC_SHA2_384": "prfsha384"}
SWAN_DH = {"CURVE_25519": "x25519", "ECP_256": "ecp256", "ECP_384": "ecp384"}

Initiator = Literal["tunneld", "swan-start", "swanctl", "none"]


@dataclass(frozen=True)
class Setup:
    """One pairing. ``initiator``: tunneld (auto = start), charon by start_action = start,
    charon by `swanctl --initiate`, or nobody (the test initiates). ``swan``: SwanConfig
    fields to override; ``tunneld_extra``: more TOML lines in tunneld's [[peer]] table;
    ``expect_*``: what both sides must report."""

    initiator: Initiator
    auth: Literal["pubkey", "psk"] = "pubkey"
    key_type: Literal["ecdsa", "ed25519"] = "ecdsa"
    pki_via_cli: bool = False  # certificates through the `tunneld pki` command line
    tunneld_ike: tuple[str, ...] = (IKE,)
    tunneld_esp: tuple[str, ...] = (ESP,)
    tunneld_extra: str = ""
    swan: Mapping[str, Any] = field(default_factory=dict)
    expect_ike: str = IKE
    expect_esp: str = f"{ESP}-noesn"
    # tunneld's [[peer.child]] entries (tools.lab.SiteOptions.children); charon's
    # matching children go into ``swan`` (child, local_ts, remote_ts, extra_children)
    children: tuple[tuple[str, str, str, str], ...] = ()
    # tunneld's peer ``address`` as this DNS name instead of charon's address (the
    # test gives gw-a's namespace an /etc/hosts entry: tests/helpers/moving.hosts_file)
    peer_name: str | None = None

    @property
    def tunneld_initiates(self) -> bool:
        return self.initiator == "tunneld"


@dataclass
class Pair:
    lab: Lab
    tunneld: Gateway
    swan: StrongSwan
    setup: Setup
    ids: tuple[str, str]  # (gw-a's identity, gw-b's identity)
    work: Path

    def status(self) -> dict[str, Any]:
        """What an operator sees: `tunneld status --json` (the real command line)."""
        out = self.tunneld.cli("status", "-s", str(self.tunneld.socket), "--json")
        assert out.returncode == 0, out.stderr
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def peer(self) -> dict[str, Any]:
        """tunneld's one peer, over the control socket (quicker than the CLI, for polling)."""
        peer: dict[str, Any] = only(self.tunneld.status()["peers"])
        return peer

    def tunneld_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`tunneld ARGS... gw-b -s SOCKET`, e.g. ("rekey", "--ike") or ("down",)."""
        out = self.tunneld.cli(*args[:1], "gw-b", *args[1:], "-s", str(self.tunneld.socket))
        assert out.returncode == 0, out.stderr
        return out

    def tunneld_log(self) -> str:
        return self.tunneld.log.read_text(errors="replace")


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- bringing a pairing up -----------------------------------------------------------


def swan_config(setup: Setup, work: Path, ids: tuple[str, str]) -> SwanConfig:
    if setup.auth == "pubkey":
        creds = lab_credentials(work / "pki")[GW_B]  # written by write_site_configs
        cred = {"cert": creds.cert, "key": creds.key, "ca": creds.ca}
    else:
        cred = {"psk_file": work / "psk.txt"}
    base = SwanConfig(
        WAN_B, WAN_A, ids[1], ids[0], SITE_B_NET, SITE_A_NET, setup.auth, **cred,  # type: ignore[arg-type]
        ike=IKE, esp=ESP, esn="no",
        start_action="start" if setup.initiator == "swan-start" else "none",
    )  # fmt: skip
    return replace(base, **setup.swan)


def write_configs(setup: Setup, lab: Lab, work: Path) -> tuple[Path, tuple[str, str]]:
    """tunneld's gw-a.toml (and the PKI or PSK both sides use): (path, identities)."""
    opts = SiteOptions(
        auth=setup.auth,
        ike=setup.tunneld_ike,
        esp=setup.tunneld_esp,
        auto_a="start" if setup.tunneld_initiates else "listen",
        key_type=setup.key_type,
        pki_via_cli=setup.pki_via_cli,
        extra_peer=setup.tunneld_extra,
        children=setup.children,
    )
    conf_a, _ = write_site_configs(work, lab.prefix, opts)
    if setup.peer_name is not None:
        text = conf_a.read_text()
        assert f'address = "{WAN_B}"' in text
        conf_a.write_text(text.replace(f'address = "{WAN_B}"', f'address = "{setup.peer_name}"'))
    if setup.auth == "psk":
        # strongswan.sh takes the file's bytes literally, tunneld decodes a 0x prefix:
        # plain text means the same key to both.
        (work / "psk.txt").write_text(secrets.token_urlsafe(24) + "\n")
        return conf_a, (WAN_A, WAN_B)  # write_site_configs' PSK identities
    return conf_a, (GW_A, GW_B)


def start_pair(
    setup: Setup,
    lab: Lab,
    tmp_path: Path,
    strongswan: Callable[[str], StrongSwan],
    tunneld_gateway: Callable[[str, Path], Gateway],
    *,
    alter_swan: Callable[[SwanConfig, Path], SwanConfig] | None = None,
    wait: bool = True,
) -> Pair:
    """tunneld on gw-a, charon on gw-b; the responder starts first, then the initiator.
    ``alter_swan(config, work)``: change charon's configuration (e.g. its credentials,
    made next to tunneld's in ``work``); ``wait``: until both sides have a Child SA."""
    work = tmp_path / "tunneld"
    conf_a, ids = write_configs(setup, lab, work)
    gw, swan = tunneld_gateway("gwa", conf_a), strongswan("gwb")
    config = swan_config(setup, work, ids)
    if alter_swan is not None:
        config = alter_swan(config, work)
    if setup.tunneld_initiates:
        swan.start(config)
        gw.start()
        gw.wait_ready()
    else:
        gw.start()
        gw.wait_ready()
        swan.start(config)  # start_action = start: charon initiates once loaded
        if setup.initiator == "swanctl" and wait:
            swan.initiate()
    pair = Pair(lab, gw, swan, setup, ids, work)
    if wait:
        gw.wait_for_child(timeout=10)
        swan.wait_for(lambda: len(swan.child_sas()) == 1, timeout=5, what="strongSwan Child SA")
    return pair


# -- traffic -------------------------------------------------------------------------


@dataclass
class ProbeRun:
    """A probe sender at site A and its echo at site B, running in the background."""

    sender: subprocess.Popen[str]
    echo: subprocess.Popen[str]
    count: int

    def result(self, timeout: float) -> dict[str, Any]:
        """The sender's report; checks that the echo's own tally is the one reported."""
        out, err = self.sender.communicate(timeout=timeout)
        assert self.sender.returncode == 0, err
        report: dict[str, Any] = json.loads(out)
        echo_out, echo_err = self.echo.communicate(timeout=10)
        assert self.echo.returncode == 0, echo_err
        assert report["forward"] is not None, report
        assert report["forward"] == json.loads(echo_out)["forward"], (report, echo_out)
        return report


def _probe_cmd(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.tools.probe", mode, *args]


@contextlib.contextmanager
def probing(lab: Lab, count: int, rate: float = 0.0, idle: float = 3.0) -> Iterator[ProbeRun]:
    """Probes A -> B -> A in the background: ``rate`` per second (0: as fast as 32
    unanswered allow), sizes walking 30..1372 bytes. Killed on the way out."""
    port = ["--port", str(PROBE_PORT)]
    duration = count / rate if rate else count / 1000
    echo = lab.popen(
        "b", *_probe_cmd("echo", "--bind", SITE_B_HOST, *port, "--idle", str(idle),
                         "--timeout", str(duration + idle + 60)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sender: subprocess.Popen[str] | None = None
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        pacing = ["--rate", str(rate), "--window", "64"] if rate else ["--window", "32"]
        sender = lab.popen(
            "a", *_probe_cmd("send", "--bind", SITE_A_HOST, "--to", SITE_B_HOST, *port,
                             "--count", str(count), "--sizes", SIZES, *pacing),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        yield ProbeRun(sender, echo, count)
    finally:
        for proc in (sender, echo):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def assert_clean(report: dict[str, Any], count: int, *, forward_lost: int = 0) -> None:
    """Every probe crossed each way exactly once, intact, in both directions (but for
    ``forward_lost`` probes from site A that the test accounted for otherwise)."""
    for direction, lost in (("forward", forward_lost), ("reverse", 0)):
        tally = report[direction]
        sent = count if direction == "forward" else count - forward_lost
        counts = {k: tally[k] for k in ("unique", "lost", "duplicated", "corrupt")}
        expected = {"unique": sent - lost, "lost": lost, "duplicated": 0, "corrupt": 0}
        assert counts == expected, (direction, report)


def check_traffic(pair: Pair, probes: int = 1_000) -> dict[str, Any]:
    """Ping site A -> site B, then ``probes`` probes each way: nothing lost."""
    assert pair.lab.ping("a", SITE_B_HOST, count=3) == 3
    with probing(pair.lab, probes) as run:
        report = run.result(timeout=60)
    assert_clean(report, probes)
    return report


# -- tunneld and strongSwan agree ------------------------------------------------------


def _swan_ike_algorithms(sa: dict[str, Any]) -> str:
    encr = SWAN_ENCR[sa["encr-alg"]].format(bits=sa.get("encr-keysize", ""))
    return f"{encr}-{SWAN_PRF[sa['prf-alg']]}-{SWAN_DH[sa['dh-group']]}"


def _swan_esp_algorithms(child: dict[str, Any]) -> str:
    encr = SWAN_ENCR[child["encr-alg"]].format(bits=child.get("encr-keysize", ""))
    pfs = f"-{SWAN_DH[child['dh-group']]}" if child.get("dh-group") else ""
    return f"{encr}{pfs}-{'esn' if child.get('esn') == '1' else 'noesn'}"


def _installed(swan_ike: dict[str, Any]) -> list[dict[str, Any]]:
    children = swan_ike.get("child-sas", {}).values()
    return [c for c in children if c.get("state") == "INSTALLED"]


def _settled(pair: Pair) -> bool:
    """Whether each side holds one established IKE SA and one Child SA in use, with no
    rekey under way (old inbound SAs may linger for their delete delay, and an old IKE SA
    whose DELETE the peer never answers may still be in tunneld's list as "deleting")."""
    peer = pair.peer()
    live = [ike for ike in peer["ike_sas"] if ike["state"] == "established"]
    if len(live) != 1 or live[0]["rekeying"]:
        return False
    if len(peer["child_sas"]) != 1 or len(live[0]["child_sas"]) != 1:
        return False
    sas = pair.swan.list_sas_raw()
    return len(sas) == 1 and sas[0]["state"] == "ESTABLISHED" and len(_installed(sas[0])) == 1


def assert_agree(
    pair: Pair, *, counters: bool = False, expect_esp: str | None = None, timeout: float = 10.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait until both sides settled, then compare `tunneld status --json` with
    `swanctl --list-sas`: (tunneld's Child SA, charon's). ``counters``: the data
    plane counters match crosswise too (only when no traffic is in flight)."""
    wait_until(lambda: _settled(pair), timeout, "one IKE SA and one Child SA each")
    status, sas = pair.status(), pair.swan.list_sas_raw()
    peer, swan_ike = only(status["peers"]), only(sas)
    ike = only([s for s in peer["ike_sas"] if s["state"] == "established"])
    _assert_same_ike(pair, peer, ike, swan_ike)
    child, swan_child = only(peer["child_sas"]), only(_installed(swan_ike))
    assert [c["spi_in"] for c in ike["child_sas"]] == [child["spi_in"]]
    assert (child["spi_in"], child["spi_out"]) == (swan_child["spi-out"], swan_child["spi-in"])
    expected = expect_esp or pair.setup.expect_esp
    assert child["algorithms"] == _swan_esp_algorithms(swan_child) == expected
    assert (child["esn"], swan_child.get("esn", "0")) == (False, "0")  # libipsec: no ESN
    assert child["outbound_active"] is True
    modes = (swan_child["state"], swan_child["mode"], swan_child["protocol"], swan_child["encap"])
    assert modes == ("INSTALLED", "TUNNEL", "ESP", "yes")
    assert (child["local_ts"], child["remote_ts"]) == ([SITE_A_NET], [SITE_B_NET])
    assert (swan_child["local-ts"], swan_child["remote-ts"]) == ([SITE_B_NET], [SITE_A_NET])
    if counters:  # what one side sent on this SA pair is what the other received
        assert child["out"]["packets"] == int(swan_child["packets-in"])
        assert child["in"]["packets"] == int(swan_child["packets-out"])
        assert child["drops"] == {}
        # Nothing strongSwan sent was refused (outbound NO_POLICY may count a packet the
        # kernel writes to the fresh TUN device before IPv6 is off there).
        assert status["dataplane"]["pumps"]["inbound"]["drops"] == {}
    return child, swan_child


def _assert_same_ike(
    pair: Pair, peer: dict[str, Any], ike: dict[str, Any], swan_ike: dict[str, Any]
) -> None:
    id_a, id_b = pair.ids
    assert (peer["state"], ike["state"], swan_ike["state"]) == (
        "established",
        "established",
        "ESTABLISHED",
    )
    # Roles: after an IKE SA rekey the rekey's initiator is the new SA's (RFC 7296 §2.18).
    swan_initiator = swan_ike.get("initiator") == "yes"
    assert (ike["role"] == "initiator") is not swan_initiator
    assert (ike["spi_i"], ike["spi_r"]) == (swan_ike["initiator-spi"], swan_ike["responder-spi"])
    assert ike["algorithms"] == _swan_ike_algorithms(swan_ike) == pair.setup.expect_ike
    assert (ike["remote_id"], swan_ike["remote-id"], swan_ike["local-id"]) == (id_b, id_a, id_b)
    # strongSwan fakes a NAT (encap = yes): both sides talk on UDP 4500.
    assert ike["nat_t"] is True
    assert (ike["local"], ike["remote"]) == (f"{WAN_A}:4500", f"{WAN_B}:4500")
    assert (swan_ike["local-port"], swan_ike["remote-port"]) == ("4500", "4500")


def _children_settled(pair: Pair, names: list[str]) -> bool:
    """One established IKE SA each side, one Child SA per name, nothing rekeying."""
    peer = pair.peer()
    live = [ike for ike in peer["ike_sas"] if ike["state"] == "established"]
    if len(live) != 1 or live[0]["rekeying"]:
        return False
    ours = sorted(c["child"] for c in peer["child_sas"])
    if ours != sorted(names) or sorted(c["child"] for c in live[0]["child_sas"]) != ours:
        return False
    sas = pair.swan.list_sas_raw()
    if len(sas) != 1 or sas[0]["state"] != "ESTABLISHED":
        return False
    return sorted(c["name"] for c in _installed(sas[0])) == sorted(names)


def assert_children_agree(
    pair: Pair, names: list[str], timeout: float = 10.0
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """:func:`assert_agree` for several named Child SAs: wait until each side holds one
    IKE SA and one Child SA per name, then compare `tunneld status --json` with
    `swanctl --list-sas` child by child (SPIs crosswise, algorithms, selectors, the
    name); returns (tunneld's, charon's) Child SA by name."""
    wait_until(lambda: _children_settled(pair, names), timeout, f"Child SAs {names} each")
    status, sas = pair.status(), pair.swan.list_sas_raw()
    peer, swan_ike = only(status["peers"]), only(sas)
    ike = only([s for s in peer["ike_sas"] if s["state"] == "established"])
    _assert_same_ike(pair, peer, ike, swan_ike)
    out = {}
    for name in names:
        child = only([c for c in peer["child_sas"] if c["child"] == name])
        swan_child = only([c for c in _installed(swan_ike) if c["name"] == name])
        assert (child["spi_in"], child["spi_out"]) == (swan_child["spi-out"], swan_child["spi-in"])
        assert child["algorithms"] == _swan_esp_algorithms(swan_child) == pair.setup.expect_esp
        assert (child["local_ts"], child["remote_ts"]) == (
            swan_child["remote-ts"],
            swan_child["local-ts"],
        )
        assert child["outbound_active"] is True
        out[name] = (child, swan_child)
    return out
