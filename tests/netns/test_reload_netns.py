"""``tunneld reload`` and SIGHUP on a hub with real daemons in namespaces (issue 11).

A hub with address-less entries for spokes s1 and s2 (tests/helpers/hubs.py), one
lab for five reloads in a row, each applied while 1 ms probes run from s1's site
to s2's (through both of the hub's tunnels, spoke -> hub -> spoke):

(a) the identical file (`tunneld reload`);
(b) other lifetimes for s1 and s2 (SIGHUP): applied at the next rekey, so no SA
    changes;
(c) an added peer s3 (`tunneld reload`): its spoke then connects;
(d) s3 removed again: the hub sends DELETE, and s3's gateway sees its IKE SA
    deleted by the peer at once (not by DPD, 30 s here);
(e) an invalid file: the verb exits 2 naming the file and key, the daemon runs on
    with the previous configuration.

In all five: not one probe lost or duplicated, and the hub's SAs with s1 and s2
keep their SPIs. Topology: tests/helpers/hublab.py (prefix ``rl``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.hublab import HubLab, hub_lab
from tests.helpers.hubs import spoke_site, write_hub_configs
from tests.helpers.lab_sites import PROBE, assert_probes_clean, poll
from tools.lab import Gateway

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

PROBES = 1500  # 1.5 s at one per millisecond, the reload in the middle
RATE = 1000.0
DELETE_SEEN_WITHIN = 2.0  # seconds; DPD would take dpd_delay (30 s) and its retransmissions


def site_addr(k: int) -> str:
    """Spoke k's site address (the one on its gateway's lo: tests/helpers/hublab.py)."""
    head, last = spoke_site(k).split("/")[0].rsplit(".", 1)
    return f"{head}.{int(last) + 1}"


@pytest.fixture
def lab() -> Iterator[HubLab]:
    with hub_lab(3, stem="rl") as topology:
        yield topology


def hub_file(blocks: list[str], header: str, spokes: tuple[int, ...], extra: str = "") -> str:
    """The hub's configuration with the entries of ``spokes`` (``extra`` in each)."""
    return header + "".join(f"\n[[peer]]\n{extra}{blocks[k - 1]}" for k in spokes)


def reloads_logged(hub: Gateway) -> int:
    return hub.log.read_text().count('"msg": "configuration reloaded"')


def hub_sas(hub: Gateway) -> dict[str, tuple[str, set[str]]]:
    """Per peer: its established IKE SA's SPIi and its Child SAs' inbound SPIs."""
    out = {}
    for peer in hub.status()["peers"]:
        ikes = [i["spi_i"] for i in peer["ike_sas"] if i["state"] == "established"]
        out[peer["name"]] = (",".join(ikes), {c["spi_in"] for c in peer["child_sas"]})
    return out


def probes_during(lab: HubLab, port: int, reload: Any) -> dict[str, Any]:
    """PROBES probes s1 -> s2 and back, with ``reload()`` run 0.3 s into them."""
    echo = lab.popen(
        "g2", sys.executable, str(PROBE), "echo", "--bind", site_addr(2),
        "--port", str(port), "--idle", "3", "--timeout", "60",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        sender = lab.popen(
            "g1", sys.executable, str(PROBE), "send", "--bind", site_addr(1),
            "--to", site_addr(2), "--port", str(port), "--count", str(PROBES),
            "--rate", str(RATE), "--window", "200",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.3)
        reload()
        out, _ = sender.communicate(timeout=60)
        report: dict[str, Any] = json.loads(out)
        return report
    finally:
        if echo.poll() is None:
            echo.kill()
        echo.wait()


def test_reload_on_a_hub_loses_no_probe(lab: HubLab, tmp_path: Path) -> None:
    files = write_hub_configs(tmp_path / "conf", "entries", extra='dpd_delay = "30s"\n')
    header, *blocks = files.hub.read_text().split("\n[[peer]]\n")
    files.hub.write_text(hub_file(blocks, header, (1, 2)))
    conf = files.hub.parent
    hub = Gateway(lab, "hub", files.hub, conf / "hub.sock", tmp_path / "hub.log")
    spokes = {
        k: Gateway(lab, f"g{k}", files.spokes[k - 1], conf / f"s{k}.sock", tmp_path / f"s{k}.log")
        for k in (1, 2, 3)
    }
    hub.start()
    try:
        hub.wait_ready()
        spokes[1].start()
        spokes[2].start()
        assert poll(lambda: {"s1", "s2"} <= up_on(hub), 20, 0.05), hub.tail_log()
        for k in (1, 2):
            spokes[k].wait_for_child()
        before = hub_sas(hub)
        assert all(ike and children for ike, children in before.values()), before

        def cli_reload(expect: int = 0) -> subprocess.CompletedProcess[str]:
            done = hub.cli("reload", "-s", str(hub.socket))
            assert done.returncode == expect, (done.stdout, done.stderr, hub.tail_log())
            return done

        outputs: dict[str, str] = {}

        def case(name: str, port: int, reload: Any) -> None:
            report = probes_during(lab, port, reload)
            print(f"\n({name}): lost {report['forward']['lost']}/{report['reverse']['lost']}")
            assert_probes_clean(report, PROBES)
            after = hub_sas(hub)
            assert {n: after[n] for n in ("s1", "s2")} == before, (name, after, before)
            assert hub.proc is not None and hub.proc.poll() is None

        # (a) the identical file
        case("a", 9200, lambda: outputs.update(a=cli_reload().stdout))
        assert "2 unchanged (s1, s2)" in outputs["a"]

        # (b) other lifetimes, by SIGHUP: the same as the verb
        files.hub.write_text(
            hub_file(blocks, header, (1, 2), 'child_lifetime = "2h"\nike_lifetime = "8h"\n')
        )
        logged = reloads_logged(hub)

        def sighup() -> None:
            assert hub.proc is not None
            hub.proc.send_signal(signal.SIGHUP)  # `ip netns exec` execs the daemon
            assert poll(lambda: reloads_logged(hub) > logged, 5, 0.02), hub.tail_log()

        case("b", 9201, sighup)
        line = [json.loads(x) for x in hub.log.read_text().splitlines() if "reloaded" in x][-1]
        assert line["updated"] == "s1,s2" and line["level"] == "info", line
        assert (
            line["changed_keys"]
            == "s1: ike_lifetime,child_lifetime; s2: ike_lifetime,child_lifetime"
        )
        blocks = [f'child_lifetime = "2h"\nike_lifetime = "8h"\n{b}' for b in blocks]

        # (c) an added peer: its spoke connects
        files.hub.write_text(hub_file(blocks, header, (1, 2, 3)))
        case("c", 9202, lambda: outputs.update(c=cli_reload().stdout))
        assert "1 added (s3)" in outputs["c"] and "2 unchanged (s1, s2)" in outputs["c"]
        spokes[3].start()
        assert poll(lambda: "s3" in up_on(hub), 20, 0.05), hub.tail_log()
        spokes[3].wait_for_child()

        # (d) the peer removed again: DELETE, seen at once by its gateway
        files.hub.write_text(hub_file(blocks, header, (1, 2)))
        removed_at: list[float] = []

        def remove() -> None:
            outputs.update(d=cli_reload().stdout)
            removed_at.append(time.monotonic())

        case("d", 9203, remove)
        assert "1 removed (s3)" in outputs["d"]
        s3_log = spokes[3].log

        def deleted_by_hub() -> bool:
            return '"reason": "deleted by peer"' in s3_log.read_text()

        assert poll(deleted_by_hub, DELETE_SEEN_WITHIN, 0.02), spokes[3].tail_log()
        assert "s3" not in {p["name"] for p in hub.status()["peers"]}

        # (e) an invalid file: refused, naming the file and the key; nothing changes
        files.hub.write_text(hub_file(blocks, header, (1, 2), "child_lifetim = 1\n"))
        case("e", 9204, lambda: outputs.update(e=cli_reload(expect=2).stderr))
        assert f"{files.hub}: peer[0].child_lifetim: unknown key" in outputs["e"], outputs["e"]
        assert up_on(hub) == {"s1", "s2"}
        assert (
            '"level": "error", "logger": "tunneld.daemon", "msg": "configuration reload refused'
            in (hub.log.read_text())
        )
    finally:
        for gw in (*spokes.values(), hub):
            gw.stop()


def up_on(hub: Gateway) -> set[str]:
    try:
        peers = hub.status()["peers"]
    except Exception:
        return set()
    return {p["name"] for p in peers if p["state"] == "established" and p["child_sas"]}
