"""TSO on the sending side between real namespaces: two oracles we did not write.

1. The kernel: a TCP stream site A -> site B through static-key gateways whose
   gw-a reads TCP super-packets from its TUN and cuts them
   (tunneld.io.segment). gw-b writes each segment to its TUN as it came (no
   virtio header, so no merge that would recompute checksums), and site B's
   interface has receive checksum offload off, so site B's TCP verifies every
   segment's checksum itself (and gw-b's forwarding every IPv4 header
   checksum). The stream must arrive intact with no checksum error counted.
2. tshark: two daemons with ``save_keys``; a capture on the WAN bridge of a
   TCP stream is decrypted with the saved tables and tshark's own IP and TCP
   checksum validation must find every inner segment valid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_sites import Sites
from tests.helpers.sitelab import REPO, Lab, run
from tests.helpers.wancapture import TSHARK_PREFS, Capture
from tests.tools.static_pair import stats
from tools.lab import HOST_B, SiteOptions

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

STREAM = 4 << 20  # bytes: a few hundred super-packets
PROBE = [sys.executable, "-m", "tests.tools.probe"]


@pytest.fixture
def lab_stem() -> str:
    return "ts"


def tcp_stream(lab: Lab, size: int = STREAM) -> None:
    """``size`` bytes site A -> site B over TCP; both ends' SHA-256 must agree."""
    sink = lab.popen(
        "b", *PROBE, "tcp-sink", "--bind", HOST_B, "--port", "7000",
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "READY"
        sent = lab.run(
            "a", *PROBE, "tcp-send", "--to", HOST_B, "--port", "7000", "--bytes", str(size),
        )  # fmt: skip
        received = json.loads(sink.stdout.readline())
    finally:
        sink.kill()
        sink.wait(timeout=10)
    assert received == json.loads(sent.stdout)


def nstat(lab: Lab, node: str) -> dict[str, int]:
    out = lab.run(node, "nstat", "-az", "--json").stdout
    return {k: int(v) for k, v in json.loads(out)["kernel"].items()}


@pytest.fixture
def tso_pair(lab: Lab) -> Iterator[Lab]:
    harness = [sys.executable, "-m", "tests.tools.static_pair"]
    try:
        run(*harness, "up", lab.prefix, "--no-offload-on", "gwb")
        yield lab
    finally:
        subprocess.run([*harness, "down", lab.prefix], capture_output=True, timeout=60, cwd=REPO)
        shutil.rmtree(f"/run/tunneld-static-pair/{lab.prefix}", ignore_errors=True)


@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool not installed")
def test_cut_segments_are_accepted_by_the_receiving_tcp(tso_pair: Lab) -> None:
    lab = tso_pair
    lab.run("b", "ethtool", "-K", f"{lab.prefix}-b0", "rx", "off")
    before_b, before_gwb = nstat(lab, "b"), nstat(lab, "gwb")
    tcp_stream(lab)
    after_b, after_gwb = nstat(lab, "b"), nstat(lab, "gwb")
    assert after_b["TcpInCsumErrors"] == before_b["TcpInCsumErrors"]
    assert after_gwb["IpInHdrErrors"] == before_gwb["IpInHdrErrors"]
    assert after_b["TcpInSegs"] - before_b["TcpInSegs"] > STREAM // 1400  # site B saw them
    tun: dict[str, Any] = stats(lab.prefix, "gwa")["datapath"]["tun"]
    # gw-a did read super-packets and cut them (else this test proves nothing)
    assert tun["gso_reads"] > 10 and tun["gso_segments"] > 2 * tun["gso_reads"], tun
    assert tun["read_drops"] == {}, tun


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool not installed")
def test_tshark_finds_every_inner_segment_of_a_tso_stream_valid(
    make_sites: Callable[[SiteOptions], Sites], tmp_path: Path
) -> None:
    sites = make_sites(SiteOptions(extra_peer="save_keys = true"))
    for conf in (sites.conf_a, sites.conf_b):  # TSO is opt-in ([gateway] tso)
        text = conf.read_text()
        assert "[gateway]\n" in text
        conf.write_text(text.replace("[gateway]\n", "[gateway]\ntso = true\n", 1))
    # The ESP leaves in UDP GSO sends, which a veth passes on whole: segmented before
    # the gateways' WAN ports instead, so that the capture holds one ESP packet per
    # datagram (tshark decodes only the first of a GSO datagram).
    for node, port in (("gwa", "ga0"), ("gwb", "gb0")):
        sites.lab.run(node, "ethtool", "-K", f"{sites.lab.prefix}-{port}",
                      "tx-udp-segmentation", "off")  # fmt: skip
    with Capture(sites, tmp_path / "wan.pcap") as pcap:
        sites.start()
        sites.wait_established()
        tcp_stream(sites.lab, 2 << 20)
    tun = sites.status_cli(sites.gwa)[0]["dataplane"]["pumps"]["tun"]
    assert tun["gso_reads"] > 0 and tun["read_drops"] == {}, tun  # gw-a read with TSO

    esp = decrypted_esp(pcap, sites.work / "gw-a-keys")
    # tcpdump may miss packets of a fast stream, but every one it kept must be ESP
    # that decrypts (ICV good) to one TCP segment with valid IP and TCP checksums
    to_b = [p for p in esp if p["dst"] == HOST_B]
    assert len(to_b) > 500 and len(esp) - len(to_b) > 10, (len(to_b), len(esp))
    assert sum(p["len"] == 1348 for p in to_b) > 500  # full segments: 1,400-byte packets
    bad = [p for p in esp if p["ip"] != {"1"} or p["tcp"] != "1" or p["icv"] != "1"]
    assert bad == [], (len(bad), bad[:5])


def decrypted_esp(pcap: Path, keys: Path) -> list[dict[str, Any]]:
    """Every ESP packet of the capture, decrypted: the inner destination, TCP payload
    length and tshark's verdicts (checksum status 1 = good, 0 bad, 2 unverified;
    ICV good = 1). A packet tshark could not decrypt has no inner fields."""
    prefs = (*TSHARK_PREFS, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE")
    cmd = ["tshark", "-r", str(pcap), *prefs, "-Y", "esp", "-T", "fields", "-E", "separator=|"]
    for field in ("ip.dst", "tcp.len", "ip.checksum.status", "tcp.checksum.status",
                  "esp.icv_good"):  # fmt: skip
        cmd += ["-e", field]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(keys)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True, env=env)
    rows = []
    for line in out.stdout.splitlines():
        dst, length, ip, tcp, icv = line.split("|")
        # ip.* lists the outer header, then the inner one
        rows.append(
            {"dst": dst.split(",")[-1], "len": int(length or -1), "ip": set(ip.split(",")),
             "tcp": tcp, "icv": icv}
        )  # fmt: skip
    return rows
