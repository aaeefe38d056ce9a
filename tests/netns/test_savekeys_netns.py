"""save_keys on a real capture: tshark decrypts the tunnel with the tables tunneld wrote.

Two ``tunneld run`` daemons with ``save_keys = true`` in a fresh namespace lab
(prefix ``hsk…``); tcpdump records the WAN bridge port of gw-a from before the
first IKE_SA_INIT until after a ping from site A to site B. tshark, given
gw-a's key directory as its configuration directory (the files are named as
Wireshark names its tables), must then decrypt the IKE_AUTH exchange (both
IDs visible) and the ESP packets (every inner ICMP echo request and reply,
with a verified ICV). Without the tables, the same capture shows neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.lab_sites import Sites
from tests.helpers.wancapture import TSHARK_PREFS, Capture
from tools.lab import HOST_A, HOST_B, SiteOptions
from tunneld.savekeys import ESP_TABLE, IKEV2_TABLE

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
]

PINGS = 3


@pytest.fixture
def lab_stem() -> str:
    return "hsk"


def tshark(pcap: Path, config_dir: Path, *fields: str) -> list[list[str]]:
    """``WIRESHARK_CONFIG_DIR=config_dir tshark -r pcap ... -T fields``, one list per packet."""
    cmd = ["tshark", "-r", str(pcap), *TSHARK_PREFS, "-T", "fields", "-E", "separator=|"]
    cmd += [arg for f in fields for arg in ("-e", f)]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True, env=env)
    return [line.split("|") for line in out.stdout.splitlines()]


FIELDS = (
    "isakmp.exchangetype",
    "isakmp.id.data.fqdn",
    "ip.src",
    "ip.dst",
    "icmp.type",
    "esp.icv_good",
)


def decrypted(pcap: Path, config_dir: Path) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """The ID payloads tshark read in each IKE_AUTH message, and (inner src, inner dst,
    ICMP type, ICV good) of each ICMP packet."""
    ids = []
    icmp = []
    for exch, fqdn, src, dst, icmp_type, icv_good in tshark(pcap, config_dir, *FIELDS):
        if exch == "35":  # IKE_AUTH
            ids.append(fqdn)
        if icmp_type:
            # ip.src/ip.dst list the outer header, then the decrypted inner one
            icmp.append((src.split(",")[-1], dst.split(",")[-1], icmp_type, icv_good))
    return ids, icmp


def test_tshark_decrypts_ike_auth_and_the_pings_with_the_saved_keys(
    make_sites: Callable[[SiteOptions], Sites], tmp_path: Path
) -> None:
    sites = make_sites(SiteOptions(extra_peer="save_keys = true"))
    with Capture(sites, tmp_path / "wan.pcap") as pcap:
        sites.start()
        sites.wait_established()
        ping = sites.ping(PINGS)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    keys_a, keys_b = sites.work / "gw-a-keys", sites.work / "gw-b-keys"
    for table in (IKEV2_TABLE, ESP_TABLE):  # both gateways saved the same SAs
        rows_a = sorted((keys_a / table).read_text().splitlines())
        assert rows_a == sorted((keys_b / table).read_text().splitlines())
        assert len(rows_a) == 1 + {IKEV2_TABLE: 1, ESP_TABLE: 2}[table]  # + the header

    ids, icmp = decrypted(pcap, keys_a)
    # the request carries IDi and IDr (the peer gw-a expects), the response IDr
    assert ids == ["gw-a.example.org,gw-b.example.org", "gw-b.example.org"]
    assert icmp == [(HOST_A, HOST_B, "8", "1"), (HOST_B, HOST_A, "0", "1")] * PINGS

    # The oracle can say no: without the tables neither IDs nor ICMP appear.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert decrypted(pcap, empty) == (["", ""], [])


def test_without_save_keys_no_key_table_is_written(
    make_sites: Callable[[SiteOptions], Sites],
) -> None:
    sites = make_sites(SiteOptions())
    sites.start()
    sites.wait_established()
    assert sites.ping(1).returncode == 0
    assert sorted(p.name for p in sites.work.iterdir() if p.is_dir()) == ["pki"]
    assert "save_keys" not in sites.gwa.log.read_text() + sites.gwb.log.read_text()
