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

In all five: not one probe lost or duplicated, the hub logs the reload while the
probes go, and the hub's SAs with s1 and s2 keep their SPIs. The command line's
interpreter can take seconds to start on a loaded machine, so it talks to a relay
socket of the test's, which passes its request on once the probes run.
Topology: tests/helpers/hublab.py (prefix ``rl``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
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

PROBES = 2000  # 2 s at one per millisecond: the reload happens ~0.5 s in
RATE = 1000.0
DELETE_SEEN_WITHIN = 1.0  # s from the hub's reload to the spoke's IKE SA down (DPD: 30 s)


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


RELOAD_LINES = ("configuration reloaded", "configuration reload refused")


def log_lines(gw: Gateway, *messages: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``gw`` saying one of ``messages``, with ``at`` (epoch s)."""
    out = []
    for text in gw.log.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if line.get("msg", "").startswith(messages):
            stamp = datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append({**line, "at": stamp.replace(tzinfo=UTC).timestamp()})
    return out


def hub_sas(hub: Gateway) -> dict[str, tuple[str, set[str]]]:
    """Per peer: its established IKE SA's SPIi and its Child SAs' inbound SPIs."""
    out = {}
    for peer in hub.status()["peers"]:
        ikes = [i["spi_i"] for i in peer["ike_sas"] if i["state"] == "established"]
        out[peer["name"]] = (",".join(ikes), {c["spi_in"] for c in peer["child_sas"]})
    return out


Go = Callable[[], None]  # applies the reload and waits for its outcome


def probes_during(lab: HubLab, hub: Gateway, port: int, prepare: Callable[[], Go]) -> None:
    """PROBES probes s1 -> s2 and back; ``prepare()`` readies a reload before they
    start, the ``Go`` it returns applies it 0.5 s into them. The hub must log the
    reload while the probes go, and not one probe may be lost."""
    echo = lab.popen(
        "g2", sys.executable, str(PROBE), "echo", "--bind", site_addr(2),
        "--port", str(port), "--idle", "3", "--timeout", "60",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        logged = len(log_lines(hub, *RELOAD_LINES))
        go = prepare()
        sender = lab.popen(
            "g1", sys.executable, str(PROBE), "send", "--bind", site_addr(1),
            "--to", site_addr(2), "--port", str(port), "--count", str(PROBES),
            "--rate", str(RATE), "--window", "200",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)  # the sender's interpreter starts, then its probes
        go()
        out, _ = sender.communicate(timeout=60)
        report: dict[str, Any] = json.loads(out)
        lines = log_lines(hub, *RELOAD_LINES)
        assert len(lines) == logged + 1, lines[logged:]
        start, at = report["started_at"], lines[-1]["at"]
        assert start < at < start + report["send_seconds"], (
            f"the reload ({at - start:+.2f} s) was not within the probes "
            f"({report['send_seconds']:.2f} s): a slow machine? (rerun)"
        )
        lost = report["forward"]["lost"], report["reverse"]["lost"]
        print(f"\n{lines[-1]['msg']} at +{at - start:.2f} s: probes lost {lost[0]}/{lost[1]}")
        assert_probes_clean(report, PROBES)
    finally:
        if echo.poll() is None:
            echo.kill()
        echo.wait()


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def verb(hub: Gateway, relay: Path, outputs: list[str], expect: int = 0) -> Callable[[], Go]:
    """`tunneld reload -s RELAY`: the command line starts and sends its request to a
    relay socket of the test's before the probes begin (its interpreter takes a while
    on a loaded machine); ``Go`` passes the request to the hub's control socket and
    the answer back, then checks the exit code and keeps the output."""

    def prepare() -> Go:
        relay.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(relay))
        listener.listen(1)
        listener.settimeout(30)
        cli = subprocess.Popen(
            [sys.executable, "-m", "tunneld.cli", "reload", "-s", str(relay)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with listener:
            conn, _ = listener.accept()
        conn.settimeout(30)
        request = read_line(conn)

        def go() -> None:
            with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                upstream.settimeout(30)
                upstream.connect(str(hub.socket))
                upstream.sendall(request)
                conn.sendall(read_line(upstream))
            out, err = cli.communicate(timeout=30)
            assert cli.returncode == expect, (out, err, hub.tail_log())
            outputs.append(out + err)

        return go

    return prepare


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
        outputs: list[str] = []
        relay = tmp_path / "relay.sock"

        def sighup() -> Go:
            assert hub.proc is not None
            return lambda: hub.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

        def case(port: int, prepare: Callable[[], Go]) -> None:
            probes_during(lab, hub, port, prepare)
            after = hub_sas(hub)
            assert {n: after[n] for n in ("s1", "s2")} == before, (after, before)
            assert hub.proc is not None and hub.proc.poll() is None

        # (a) the identical file
        case(9200, verb(hub, relay, outputs))
        assert "2 unchanged (s1, s2)" in outputs[-1]

        # (b) other lifetimes, by SIGHUP: the same as the verb
        lifetimes = 'child_lifetime = "2h"\nike_lifetime = "8h"\n'
        files.hub.write_text(hub_file(blocks, header, (1, 2), lifetimes))
        case(9201, sighup)
        line = log_lines(hub, "configuration reloaded")[-1]
        assert line["updated"] == "s1,s2" and line["level"] == "info", line
        keys = "ike_lifetime,child_lifetime"
        assert line["changed_keys"] == f"s1: {keys}; s2: {keys}", line
        blocks = [lifetimes + b for b in blocks]

        # (c) an added peer: its spoke connects
        files.hub.write_text(hub_file(blocks, header, (1, 2, 3)))
        case(9202, verb(hub, relay, outputs))
        assert "1 added (s3)" in outputs[-1] and "2 unchanged (s1, s2)" in outputs[-1]
        spokes[3].start()
        assert poll(lambda: "s3" in up_on(hub), 20, 0.05), hub.tail_log()
        spokes[3].wait_for_child()

        # (d) the peer removed again: DELETE, seen by its gateway at once (DPD: 30 s)
        files.hub.write_text(hub_file(blocks, header, (1, 2)))
        case(9203, verb(hub, relay, outputs))
        assert "1 removed (s3)" in outputs[-1]
        reloaded = log_lines(hub, "configuration reloaded")[-1]

        def deleted() -> list[dict[str, Any]]:
            return [x for x in log_lines(spokes[3], "IKE SA down") if x["at"] > reloaded["at"] - 2]

        assert poll(lambda: bool(deleted()), 5, 0.05), spokes[3].tail_log()
        down = deleted()[0]  # (then it tries again, and the hub refuses it)
        assert down["reason"] == "deleted by peer", down
        assert down["at"] - reloaded["at"] < DELETE_SEEN_WITHIN, (down, reloaded)
        assert "s3" not in {p["name"] for p in hub.status()["peers"]}

        # (e) an invalid file: refused, naming the file and the key; nothing changes
        files.hub.write_text(hub_file(blocks, header, (1, 2), "child_lifetim = 1\n"))
        case(9204, verb(hub, relay, outputs, expect=2))
        assert f"{files.hub}: peer[0].child_lifetim: unknown key" in outputs[-1], outputs
        refused = log_lines(hub, "configuration reload refused")
        assert [x["level"] for x in refused] == ["error"], refused
        assert up_on(hub) == {"s1", "s2"}
    finally:
        for gw in (*spokes.values(), hub):
            gw.stop()


def up_on(hub: Gateway) -> set[str]:
    try:
        peers = hub.status()["peers"]
    except Exception:
        return set()
    return {p["name"] for p in peers if p["state"] == "established" and p["child_sas"]}
