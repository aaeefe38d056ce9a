"""Hostile networks through two real daemons in the namespace lab (issue #9, "What it
must show"); the in-memory versions are tests/daemon/test_hostile_memory.py.

The attacker sits in the WAN namespace (192.0.2.99 on the bridge) and sends
spoofed datagrams through a raw socket (tests/tools/flood.py, and
tests/helpers/hostile.py for a few crafted ones):

1. Flood: spoofed IKE_SA_INIT at 2,000/s and then flat out (the most one
   sender reaches here), aimed (a) at a listen-only peer entry of gw-a (a
   ``[[peer]]`` without ``address``: sources drawn from 198.51.100.0/24) and
   (b) at the peer's own address (192.0.2.2, random ports). COOKIE replies
   above the threshold, no responder session (DH) without a valid cookie
   once there (``decisions.admitted`` stays at the threshold), half-open
   count within the caps, RSS growth < 20 MB, the existing tunnel loses no
   1 ms probe either way. Separate tests: TCP throughput through the tunnel
   flooded vs unflooded in one iperf3 run (>= 80 %; a control flood to a
   closed port shows what the attacker itself costs this 2-core machine), a
   restarted gw-b gets in within 5 s during the flood, COOKIE replies to
   spoofed sources in the remote site's subnet stay out of the tunnel. 6 s
   floods by default, 60 s ones in the soak profile (``-m soak``).
2. Off-path suppression: a spoofed IKE_SA_INIT from gw-b's address every
   20 s after gw-b (listen) restarted: gw-a (start) finds out by DPD and the
   tunnel is back within 10 s of that (``slow``).
3. Desync: cleartext INFORMATIONAL and IKE_AUTH under the live SPIs from the
   peer's address (UDP 500, and 4500 with the non-ESP marker) get no answer,
   and the next genuine requests both ways are answered at once.
4. Memory: 10,000 (soak: 100,000) spoofed INFORMATIONAL with distinct
   message IDs: the session's drop counters keep their keys, RSS growth
   < 5 MB, status JSON the same size but for counter digits (``slow``).
5. Fuzz: 10,000 (soak: 100,000) mutations of the lab's own IKE datagrams
   (captured during a handshake and rekeys) at 2,000/s to ports 500 and
   4500: same pid, no traceback, no probe lost, RSS growth < 10 MB
   (``slow``); and the one datagram it found that stopped the gateway, on
   its own.

Every figure is printed on a ``MEASURED`` line (``pytest -s``) and written to
``figures.json`` in the test's tmp_path. What is not met is an xfail whose
reason says what was measured: the TCP throughput during a flat-out flood
(soak profile; the flood alone, to a closed port, costs this machine more).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ike.constants import ExchangeType, HeaderFlag, IdType, NotifyType, PayloadType
from ike.frontdoor import REASONS
from ike.payloads import AuthPayload, IdPayload, NotifyPayload, Payload
from ike.policy import (
    COOKIE_SOURCE_THRESHOLD,
    COOKIE_THRESHOLD,
    DEFAULT_RETRANSMIT,
    MAX_HALF_OPEN,
    MAX_HALF_OPEN_PER_PEER,
)
from ike.sessioncore import DROP_REASONS
from ike.wire import Message
from tests.helpers.hostile import (
    Capture,
    Flood,
    IperfRun,
    StatusPoller,
    arm_attacker,
    ike_datagrams,
    iperf,
    rss_kb,
    spoof,
)
from tests.helpers.lab_sites import Sites, assert_probes_clean, poll
from tests.tools.flood import init_datagrams
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, HOST_B, Gateway, SiteOptions
from tunneld.peer import WATCH_INTERVAL

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

RATE = 2000  # spoofed datagrams per second
FLAT_OUT = 0  # flood.py --rate 0: as fast as one sender goes
SHORT, LONG = 6.0, 60.0  # seconds of flood: the default suite, the soak profile
PROBE_RATE = 1000.0  # one probe per millisecond each way
RSS_FLOOD_MAX_KB = 20 * 1024
RSS_MEMORY_MAX_KB = 5 * 1024
RSS_FUZZ_MAX_KB = 10 * 1024
THROUGHPUT_MIN = 0.8
NEW_GATEWAY_MAX = 5.0
RECOVERY_MAX = 10.0
DPD_DELAY = 2.0
SPOOF_EVERY = 20.0
MESSAGES = 10_000  # spoofed or mutated datagrams in the default run (5 s at RATE)
SOAK_MESSAGES = 100_000  # the soak profile (-m soak): the figure, 50 s each
MESSAGE_COUNTS = [MESSAGES, pytest.param(SOAK_MESSAGES, marks=pytest.mark.soak)]
WILDCARD_SOURCES = "198.51.100.0/24"  # gw-a's own site: COOKIE replies go to site A's LAN
REMOTE_SITE_SOURCES = "203.0.113.0/24"  # gw-b's site: replies are routed into the TUN

WILDCARD_PEER = """
[[peer]]
name = "anyone"
id = "roadwarrior.example.org"
auto = "listen"
local_subnets = ["198.51.100.0/24"]
remote_subnets = ["192.0.2.128/25"]
ike = ["aes256gcm16-prfsha256-x25519"]
esp = ["aes256gcm16"]
"""


@pytest.fixture
def lab_stem() -> str:
    return "hg"  # this suite's namespaces: hgXXXXXX-{a,gwa,wan,gwb,b}


@pytest.fixture
def figures(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a test measured: printed on MEASURED lines as it goes, all of it written to
    tmp_path/figures.json at the end (also when the test fails)."""
    found: dict[str, Any] = {"test": request.node.name}
    started = time.monotonic()
    yield found
    found["seconds"] = round(time.monotonic() - started, 1)
    (tmp_path / "figures.json").write_text(json.dumps(found, indent=1) + "\n")
    print(f"MEASURED {request.node.name}: {json.dumps(found)}")


def record(figures: dict[str, Any], what: str, **values: object) -> None:
    figures[what] = values
    print(f"MEASURED {what}: {json.dumps(values)}")


# --- the lab ----------------------------------------------------------------------------------


def start_sites(
    make_sites: Callable[[SiteOptions], Sites], *, wildcard: bool = False, **options: Any
) -> Sites:
    """Both gateways up, the tunnel established, the attacker armed; ``wildcard``: gw-a
    also has a listen-only ``[[peer]]`` without an address."""
    sites = make_sites(SiteOptions(log_format="json", **options))
    if wildcard:
        sites.conf_a.write_text(sites.conf_a.read_text() + WILDCARD_PEER)
    sites.start()
    sites.wait_established()
    arm_attacker(sites.lab)
    return sites


def peer_named(gw: Gateway, name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    for peer in (status or gw.status())["peers"]:
        if peer["name"] == name:
            result: dict[str, Any] = peer
            return result
    raise AssertionError(f"no peer {name} on {gw.node}")


def paired(sites: Sites) -> tuple[str, str] | None:
    """The Child SA both gateways hold (gw-a's inbound SPI, gw-b's), if they agree."""
    a, b = sites.gwa.child_sas("gw-b"), sites.gwb.child_sas("gw-a")
    for child_a in a:
        for child_b in b:
            if child_a["spi_in"] == child_b["spi_out"] and child_b["spi_in"] == child_a["spi_out"]:
                return child_a["spi_in"], child_b["spi_in"]
    return None


def log_time(record: dict[str, Any]) -> float:
    """A JSON log record's wall-clock time, as time.time() counts."""
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def counters(status: dict[str, Any]) -> dict[str, int]:
    """The numbers a flood moves, flat: front-door decisions, dispatcher counters and
    datagrams received on UDP 500 (each one handed to the dispatcher as it is read)."""
    pumps = status["dataplane"]["pumps"]
    flat = {f"decisions.{k}": v for k, v in status["front_door"]["decisions"].items()}
    flat |= {f"dispatch.{k}": v for k, v in status["ike_dispatch"].items()}
    flat["udp500_received"] = pumps["udp"]["500"]["recv_datagrams"]
    flat["half_open_ended"] = sum(p["counters"]["half_open_ended"] for p in status["peers"])
    # a wildcard entry's sessions are the reception's until IKE_AUTH (its own status block)
    flat["half_open_ended"] += status.get("reception", {}).get("half_open_ended", 0)
    return flat


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


SEEDS = itertools.count(1)  # each flood its own SPIs: none repeats an earlier one's request


def flood_args(target: str, rate: int, seconds: float, *extra: str) -> list[str]:
    source = ["--sources", WILDCARD_SOURCES] if target == "wildcard" else ["--src", GWB_UNDERLAY]
    return ["--dst", GWA_UNDERLAY, *source, "--kind", "init", "--rate", str(rate),
            "--seconds", str(seconds), "--seed", str(next(SEEDS)), *extra]  # fmt: skip


def wait_flooding(gw: Gateway, flood: Flood, timeout: float = 10.0) -> float:
    """Until the flood's datagrams reach ``gw`` (UDP 500 counter moving); returns when."""
    first = counters(gw.status())["udp500_received"]
    assert poll(
        lambda: (
            counters(gw.status())["udp500_received"] > first + 50 or flood.proc.poll() is not None
        ),
        timeout,
        0.05,
    ), "the flood never arrived"
    assert flood.proc.poll() is None, flood.proc.communicate()
    return time.time()


# --- 1. the flood -------------------------------------------------------------------------------


@dataclass
class FloodPhase:
    rate: int  # requested (0: flat out)
    report: dict[str, Any]  # flood.py's line
    moved: dict[str, int]  # counters(after) - counters(before)
    half_open_max: int
    rss_kb: tuple[int, int, int]  # before, peak, after
    probes: dict[str, Any]
    probe_count: int


def flood_phase(
    sites: Sites, poller: StatusPoller, target: str, rate: int, seconds: float
) -> FloodPhase:
    """``seconds`` of flood at gw-a with 1 ms probes both ways through the tunnel for all
    but the first and the last second of it."""
    gwa = sites.gwa
    assert gwa.proc is not None
    before, rss_before = counters(gwa.status()), rss_kb(gwa.proc.pid)
    flood = Flood.start(sites.lab, *flood_args(target, rate, seconds))
    try:
        started = wait_flooding(gwa, flood)
        count = int((seconds - 2.5) * PROBE_RATE)
        probes = sites.probe(count, PROBE_RATE)
        report = flood.result(timeout=seconds + 30)
    finally:
        flood.kill()
    time.sleep(0.5)  # the inbox drains
    after = counters(gwa.status())
    sending = poller.between(started, report["window"][1] + 0.5)
    time.sleep(1.5)
    return FloodPhase(
        rate=rate,
        report=report,
        moved=delta(after, before),
        half_open_max=max(s.status["front_door"]["half_open"] for s in sending),
        rss_kb=(rss_before, max(s.rss_kb for s in sending), rss_kb(gwa.proc.pid)),
        probes=probes,
        probe_count=count,
    )


def check_flood_phase(phase: FloodPhase, threshold: int, room: int) -> None:
    """``room``: responder sessions the front door may still open without a cookie when the
    phase begins (the threshold minus those still half-open from before)."""
    moved = phase.moved
    received = moved.get("udp500_received", 0)
    cookies = moved.get("dispatch.cookies_sent", 0)
    admitted = moved.get("decisions.admitted", 0)
    expired = moved.get("half_open_ended", 0)
    # every spoofed request the dispatcher saw got a COOKIE, but the first few (a DH each)
    assert cookies == moved.get("decisions.cookie requested", 0) > 0, moved
    assert moved.get("decisions.admitted with a valid cookie", 0) == 0, moved  # a spoofer
    for reason in REASONS:  # nothing malformed, no cap reached
        if reason.startswith(("half-open limit", "malformed", "invalid")):
            assert moved.get(f"decisions.{reason}", 0) == 0, moved
    again = moved.get("decisions.retransmission of an admitted request", 0)
    assert cookies + admitted + again == received, moved  # the dispatcher's own accounting
    before, peak, after = phase.rss_kb
    assert peak - before < RSS_FLOOD_MAX_KB and after - before < RSS_FLOOD_MAX_KB, phase.rss_kb
    assert_probes_clean(phase.probes, phase.probe_count)
    # no DH without a cookie above the threshold (counted at admission, ike/frontdoor.py)
    assert admitted <= room + expired, moved
    assert phase.half_open_max <= threshold, phase.half_open_max


def run_flood(
    sites: Sites, figures: dict[str, Any], target: str, rates: tuple[int, ...], seconds: float
) -> None:
    threshold = COOKIE_THRESHOLD if target == "wildcard" else COOKIE_SOURCE_THRESHOLD
    child_before = paired(sites)
    with StatusPoller(sites.gwa) as poller:
        for rate in rates:
            status = sites.gwa.status()
            room = max(0, threshold - status["front_door"]["half_open"])
            phase = flood_phase(sites, poller, target, rate, seconds)
            moved = phase.moved
            record(
                figures, f"{target} flood at {phase.report['rate']}/s for {seconds:g}s",
                sent=phase.report["sent"], reached_gw_a=moved.get("udp500_received", 0),
                cookies_sent=moved.get("dispatch.cookies_sent", 0),
                admitted=moved.get("decisions.admitted", 0),
                admitted_with_cookie=moved.get("decisions.admitted with a valid cookie", 0),
                half_open_expired=moved.get("half_open_ended", 0),
                half_open_max=phase.half_open_max, rss_kb_before_peak_after=phase.rss_kb,
                probes_lost={d: phase.probes[d]["lost"] for d in ("forward", "reverse")},
            )  # fmt: skip
            check_flood_phase(phase, threshold, room)
        peers = poller.samples[-1].status["peers"]
    for peer in peers:  # caps: per peer entry and in all
        assert peer["half_open_ike_sas"] <= MAX_HALF_OPEN_PER_PEER
    gwb = peer_named(sites.gwa, "gw-b")
    assert gwb["state"] == "established" and gwb["last_error"] is None, gwb
    assert paired(sites) == child_before  # the same Child SA all along
    assert sites.gwa.status()["front_door"]["half_open"] <= MAX_HALF_OPEN


@pytest.mark.parametrize("target", ["wildcard", "peer-address"])
def test_a_spoofed_flood_gets_cookies_and_leaves_the_tunnel_alone(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], target: str
) -> None:
    sites = start_sites(make_sites, wildcard=target == "wildcard")
    run_flood(sites, figures, target, (RATE, FLAT_OUT), SHORT)


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize(
    ("target", "rate"), [("wildcard", RATE), ("peer-address", FLAT_OUT)],
    ids=["wildcard-2000", "peer-address-flat-out"],
)  # fmt: skip
def test_a_60s_spoofed_flood_gets_cookies_and_leaves_the_tunnel_alone(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], target: str, rate: int
) -> None:
    """60 s: the first half-open sessions expire (30 s) while the flood goes on."""
    sites = start_sites(make_sites, wildcard=target == "wildcard")
    run_flood(sites, figures, target, (rate,), LONG)


# --- 1. throughput under the flood --------------------------------------------------------------

SEGMENT = 3.5  # seconds of each segment of the iperf3 run
CONTROL_PORT = 9  # the control flood: the same datagrams to a port nobody listens on
IPERF_SECONDS = 30  # 7 segments, and each flood's start (~1 s) on top

FLAT_OUT_SHORT = (
    "flat out, one Python sender on this 2-core machine takes a core of its own: the control "
    "flood (the same datagrams to a closed port) alone leaves 0.50-0.56 of the unflooded "
    "throughput here (0.72-0.80 in the runs before on a busier machine, 0.47 on a quiet one), "
    "so 0.8 is out of reach whatever the daemon does. What is ours: flooded/control went from "
    "0.18-0.25 (median 0.25) to 0.55-1.03 (median 1.03 of three) since the IKE port gets at "
    "most 20% of the pumps' thread "
    "while ESP moves (tunneld.ikeshare) and a cookie costs about half (docs/performance.md)"
)


def throughput_run(sites: Sites, rate: int) -> dict[str, Any]:
    """One iperf3 stream site A -> site B through the tunnel for 7 segments: unflooded,
    flooded (gw-a's IKE port), control (the same flood to UDP 9 of gw-a: what the attacker
    costs this 2-core machine without the daemon), unflooded, flooded, control,
    unflooded. Medians of the per-second intervals wholly inside each kind."""
    windows: dict[str, list[tuple[float, float]]] = {"flooded": [], "control": []}
    result: dict[str, IperfRun] = {}
    kinds = ["unflooded", "flooded", "control"] * 2 + ["unflooded"]
    before = counters(sites.gwa.status())
    thread = threading.Thread(
        target=lambda: result.setdefault("run", iperf(sites.lab, HOST_B, IPERF_SECONDS))
    )
    thread.start()
    time.sleep(1.0 + SEGMENT)  # the omitted second, the first unflooded segment
    for kind in kinds[1:]:
        if kind == "unflooded":
            time.sleep(SEGMENT)
            continue
        port = ["--port", str(CONTROL_PORT)] if kind == "control" else []
        flood = Flood.start(sites.lab, *flood_args("peer-address", rate, SEGMENT, *port))
        try:
            windows[kind].append(flood.result(timeout=SEGMENT + 30)["window"])
        finally:
            flood.kill()
    thread.join(IPERF_SECONDS + 30)
    moved = delta(counters(sites.gwa.status()), before)
    run = result["run"]
    flooded = [m for w in windows["flooded"] for m in run.during(w[0] + 0.2, w[1] + 0.1)]
    control = [m for w in windows["control"] for m in run.during(w[0] + 0.2, w[1] + 0.1)]
    busy = windows["flooded"] + windows["control"]
    unflooded = [m for a, b, m in run.intervals if all(b <= s or a >= e + 0.5 for s, e in busy)]
    assert len(flooded) >= 4 and len(control) >= 4 and len(unflooded) >= 4, run.intervals
    medians = [statistics.median(x) for x in (unflooded, flooded, control)]
    return {
        "mbit_s_unflooded": round(medians[0], 1),
        "mbit_s_flooded": round(medians[1], 1),
        "mbit_s_control": round(medians[2], 1),
        "ratio_flooded_unflooded": round(medians[1] / medians[0], 3),
        "ratio_control_unflooded": round(medians[2] / medians[0], 3),
        "ratio_flooded_control": round(medians[1] / medians[2], 3),
        "intervals": {
            "unflooded": [round(m) for m in unflooded],
            "flooded": [round(m) for m in flooded],
            "control": [round(m) for m in control],
        },
        "tcp_retransmits": run.retransmits,
        "cookies_sent": moved.get("dispatch.cookies_sent", 0),
        "dropped_ike_inbox_full": moved.get("ike_inbox_full", 0),
    }


@pytest.mark.soak  # 33 s each; not met yet (reasons above), measured by the soak profile
@pytest.mark.parametrize(
    "rate",
    [
        # at 2,000/s, quiet machine: 0.802 of the unflooded throughput (1019 vs 1271
        # Mbit/s; the same flood to a closed port: 0.836, so the daemon keeps 0.959 of
        # that); with the 2 s reservation lapse and the enum-walking scan it was 0.748
        RATE,
        pytest.param(FLAT_OUT, marks=pytest.mark.xfail(strict=False, reason=FLAT_OUT_SHORT)),
    ],
    ids=["2000", "flat-out"],
)
def test_the_tunnel_keeps_80_percent_of_its_throughput_during_a_flood(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], rate: int
) -> None:
    """One iperf3 stream, flood on and off (and the control flood: what the attacker's
    own packets cost this machine, reported beside)."""
    sites = start_sites(make_sites)
    measured = throughput_run(sites, rate)
    record(figures, f"throughput, flood at {rate or 'flat out'}/s", **measured)
    assert paired(sites) is not None
    assert measured["ratio_flooded_unflooded"] >= THROUGHPUT_MIN, measured


# --- 1. a new gateway during the flood ---------------------------------------------------------


def time_to_get_in(sites: Sites, rate: int) -> dict[str, Any]:
    """kill -9 gw-b (auto = start) while its own address is being spoofed at gw-a, start it
    again: seconds from its first IKE_SA_INIT (its log) until both gateways hold the new
    Child SA, and from the process start."""
    gwb = sites.gwb
    assert gwb.proc is not None
    flood = Flood.start(sites.lab, *flood_args("peer-address", rate, 30.0))
    try:
        wait_flooding(sites.gwa, flood)
        time.sleep(1.0)
        before = counters(sites.gwa.status())
        gwb.proc.kill()
        gwb.proc.wait()
        initiations = len(sites.log_events(gwb, "initiating IKE SA"))
        launched = time.time()
        gwb.start()
        poll(lambda: paired(sites) is not None, 3 * NEW_GATEWAY_MAX, 0.02)
        done = time.time()
        moved = delta(counters(sites.gwa.status()), before)
    finally:
        flood.kill()
    got_in = paired(sites) is not None
    if not got_in:
        assert poll(lambda: paired(sites) is not None, 30, 0.1), "gw-b never got back in"
    first = sites.log_events(gwb, "initiating IKE SA")[initiations]
    return {
        "got_in_during_the_flood": got_in,
        "seconds_from_first_ike_sa_init": round(done - log_time(first), 2),
        "seconds_from_process_start": round(done - launched, 2),
        "admitted_with_cookie": moved.get("decisions.admitted with a valid cookie", 0),
        "admitted_without": moved.get("decisions.admitted", 0),
        "cookies_sent": moved.get("dispatch.cookies_sent", 0),
        "reached_gw_a": moved.get("udp500_received", 0),
    }


# Flat out (21-38k/s sent), a restarted gw-b got in after 0.22, 0.47, 1.76 s from its first
# IKE_SA_INIT (three runs under the bench lock; gw-a's idle tunnel leaves its IKE port
# unlimited, tunneld.ikeshare, and reads ~19-23k/s); before the cheaper cookie path: 8.93
# (not during the flood), 4.54, 3.96 s (busy machine), 4.65-6.73 s (quiet machine). The
# kernel still drops what gw-a cannot read, so a run may need a retransmission (1 s, 1.8 s).
# At 2,000/s: 0.02-0.05 s.


@pytest.mark.parametrize(
    "rate",
    [
        RATE,
        pytest.param(FLAT_OUT, marks=pytest.mark.soak),
    ],
    ids=["2000", "flat-out"],
)
def test_a_new_gateway_gets_in_within_5s_during_a_flood(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], rate: int
) -> None:
    sites = start_sites(make_sites, auto_a="listen", auto_b="start")
    measured = time_to_get_in(sites, rate)
    record(figures, f"new gateway during a flood at {rate or 'flat out'}/s", **measured)
    elapsed = measured["seconds_from_first_ike_sa_init"]
    assert measured["got_in_during_the_flood"] and elapsed < NEW_GATEWAY_MAX, measured
    assert measured["admitted_with_cookie"] >= 1, measured  # it answered the cookie


# --- 1. COOKIE replies and the tunnel --------------------------------------------------------


def test_cookie_replies_to_spoofed_remote_site_sources_stay_out_of_the_tunnel(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any]
) -> None:
    sites = start_sites(make_sites, wildcard=True)
    drops_before = sites.gwb.status()["dataplane"]["drops"].get("no_policy", 0)
    refused_before = sites.gwa.status()["dataplane"]["drops"].get("no_policy", 0)
    out_before = sites.gwa.child_sas("gw-b")[0]["out"]["packets"]
    flood = Flood.start(sites.lab, "--dst", GWA_UNDERLAY, "--sources", REMOTE_SITE_SOURCES,
                        "--rate", str(RATE), "--seconds", "3")  # fmt: skip
    report = flood.result()
    time.sleep(0.5)
    moved = counters(sites.gwa.status())
    tunnelled = sites.gwa.child_sas("gw-b")[0]["out"]["packets"] - out_before
    dropped = sites.gwb.status()["dataplane"]["drops"].get("no_policy", 0) - drops_before
    refused = sites.gwa.status()["dataplane"]["drops"].get("no_policy", 0) - refused_before
    record(
        figures, "COOKIE replies to spoofed 203.0.113.0/24", sent=report["sent"],
        cookies_sent=moved["dispatch.cookies_sent"], esp_packets_to_gw_b=tunnelled,
        gw_b_no_policy_drops=dropped, gw_a_outbound_no_policy_drops=refused,
    )  # fmt: skip
    assert moved["dispatch.cookies_sent"] > 0
    assert tunnelled == 0 and dropped == 0
    # the kernel still routes them into the TUN (the spoofed source lies in a remote
    # subnet); gw-a's outbound policy refuses each one (RFC 4301 §5.1)
    assert refused >= moved["dispatch.cookies_sent"] * 0.9


# --- 2. off-path suppression ----------------------------------------------------------------


@pytest.mark.slow
def test_a_spoofed_init_every_20s_does_not_keep_the_restarted_peer_out(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any]
) -> None:
    """gw-b (listen) is killed and restarted; an attacker sends gw-a one IKE_SA_INIT from
    gw-b's address every 20 s from then on, so that gw-a always holds a half-open session
    'with gw-b'. gw-a can only learn of the restart by DPD: dpd_delay 2 s here (not the
    lab's 30 s), then its liveness check's retransmissions (~41 s, not configurable) run
    out. From that moment the tunnel must be back within 10 s."""
    sites = start_sites(make_sites, extra_peer=f'dpd_delay = "{DPD_DELAY:g}s"')
    gwb = sites.gwb
    assert gwb.proc is not None
    rng = random.Random(9)
    inits = init_datagrams(rng)
    stop = threading.Event()
    spoofed: list[float] = []

    def attacker() -> None:
        while not stop.is_set():
            spoof(sites.lab, [next(inits)], src=GWB_UNDERLAY, dst=GWA_UNDERLAY,
                  sport=rng.randrange(1024, 65536), dport=500)  # fmt: skip
            spoofed.append(time.time())
            stop.wait(SPOOF_EVERY)

    gwb.proc.kill()
    gwb.proc.wait()
    gwb.start()
    gwb.wait_ready()
    restarted = time.time()
    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    half_open_seen: list[int] = []
    try:
        bound = WATCH_INTERVAL + DPD_DELAY + DEFAULT_RETRANSMIT.total + 5
        deadline = time.monotonic() + bound + RECOVERY_MAX
        while time.monotonic() < deadline and not (
            paired(sites) and sites.log_events(sites.gwa, "peer dead")
        ):
            half_open_seen.append(peer_named(sites.gwa, "gw-b")["half_open_ike_sas"])
            time.sleep(0.1)
        back = time.time()
    finally:
        stop.set()
        thread.join(30)
    dead = sites.log_events(sites.gwa, "peer dead")
    assert dead, f"gw-a never declared gw-b dead: {sites.gwa.tail_log()}"
    dead_at = log_time(dead[0])
    record(
        figures, "off-path suppression", spoofed_after_restart_s=[
            round(t - restarted, 1) for t in spoofed],
        peer_dead_after_restart_s=round(dead_at - restarted, 2),
        back_after_peer_dead_s=round(back - dead_at, 2),
        back_after_restart_s=round(back - restarted, 2),
        half_open_with_gw_b_max=max(half_open_seen, default=0),
    )  # fmt: skip
    assert max(half_open_seen, default=0) >= 1  # the attack was in place when it mattered
    assert paired(sites) is not None, sites.gwa.tail_log()
    assert back - dead_at < RECOVERY_MAX, (back - dead_at, sites.gwa.tail_log())
    assert sites.ping(2).returncode == 0


# --- 3. desync -------------------------------------------------------------------------------


def cleartext(spi_i: bytes, spi_r: bytes, message_ids: range) -> list[bytes]:
    """Cleartext INFORMATIONAL and IKE_AUTH messages under the live SPIs, with every
    combination of the Initiator and Response flags, for each message ID."""
    bodies: dict[ExchangeType, list[Payload]] = {
        ExchangeType.INFORMATIONAL: [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)],
        ExchangeType.IKE_AUTH: [
            IdPayload(PayloadType.IDi, IdType.ID_FQDN, b"gw-b.example.org"),
            AuthPayload(2, bytes(32)),
            NotifyPayload(NotifyType.AUTHENTICATION_FAILED),
        ],
    }
    flag_sets = [HeaderFlag(0), HeaderFlag.INITIATOR, HeaderFlag.RESPONSE,
                 HeaderFlag.INITIATOR | HeaderFlag.RESPONSE]  # fmt: skip
    forged = []
    for exchange, payloads in bodies.items():
        for flags in flag_sets:
            for mid in message_ids:
                message = Message(spi_i=spi_i, spi_r=spi_r, exchange_type=exchange, flags=flags,
                                  message_id=mid, payloads=payloads)  # fmt: skip
                forged.append(message.build())
    return forged


def drops_of(gw: Gateway, peer: str) -> dict[str, int]:
    (ike,) = peer_named(gw, peer)["ike_sas"]
    result: dict[str, int] = ike["drops"]
    return result


def rekey_answered(sites: Sites, by: Gateway, peer: str) -> float:
    """``rekey PEER`` on ``by`` (the Child SA); seconds until both sides hold the new one."""
    old = paired(sites)
    answer = by.request({"cmd": "rekey", "peer": peer})
    assert answer["ok"], answer
    started = time.monotonic()
    assert poll(lambda: paired(sites) not in (None, old), 10, 0.01), (old, paired(sites))
    return time.monotonic() - started


def test_cleartext_messages_under_the_live_spis_get_no_answer_and_desync_nothing(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], tmp_path: Path
) -> None:
    sites = start_sites(make_sites)
    (status_a, status_b) = sites.status_cli()  # `tunneld status --json`, as an operator would
    (ike,) = peer_named(sites.gwa, "gw-b", status_a)["ike_sas"]
    spi_i, spi_r = bytes.fromhex(ike["spi_i"]), bytes.fromhex(ike["spi_r"])
    (ike_b,) = peer_named(sites.gwb, "gw-a", status_b)["ike_sas"]
    assert (ike_b["spi_i"], ike_b["spi_r"]) == (ike["spi_i"], ike["spi_r"])
    forged = cleartext(spi_i, spi_r, range(0, 6))
    drops_before = {"gwa": drops_of(sites.gwa, "gw-b"), "gwb": drops_of(sites.gwb, "gw-a")}
    capture = Capture(sites.lab, tmp_path / "desync.pcap", port="wa", sent_by_gateway=True)
    capture_b = Capture(sites.lab, tmp_path / "desync-b.pcap", port="wb", sent_by_gateway=True)
    sent = 0
    try:
        for victim, source in ((GWA_UNDERLAY, GWB_UNDERLAY), (GWB_UNDERLAY, GWA_UNDERLAY)):
            for port, marker in ((4500, True), (500, False)):
                sent += spoof(sites.lab, forged, src=source, dst=victim, sport=port,
                              dport=port, marker=marker)  # fmt: skip
        time.sleep(1.5)  # any answer (or a retransmission of one) would be out by now
    finally:
        answers = [d for pcap in (capture.stop(), capture_b.stop()) for d in ike_datagrams(pcap)]
    drops_after = {"gwa": drops_of(sites.gwa, "gw-b"), "gwb": drops_of(sites.gwb, "gw-a")}
    # the genuine requests that follow, each way: answered at once (no retransmission)
    by_b = rekey_answered(sites, sites.gwb, "gw-a")
    by_a = rekey_answered(sites, sites.gwa, "gw-b")
    time.sleep(DEFAULT_RETRANSMIT.initial)
    peers = {"gwa": peer_named(sites.gwa, "gw-b"), "gwb": peer_named(sites.gwb, "gw-a")}
    record(
        figures, "desync", forged_sent=sent, ike_datagrams_sent_by_gateways=len(answers),
        session_drops_before=drops_before, session_drops_after=drops_after,
        rekey_seconds={"initiated_by_gw_b": round(by_b, 3), "initiated_by_gw_a": round(by_a, 3)},
    )  # fmt: skip
    assert answers == [], answers
    assert set(drops_after["gwa"]) | set(drops_after["gwb"]) <= set(DROP_REASONS)
    assert sum(drops_after["gwa"].values()) > sum(drops_before["gwa"].values())
    assert by_b < DEFAULT_RETRANSMIT.initial and by_a < DEFAULT_RETRANSMIT.initial
    for peer in peers.values():
        (live,) = peer["ike_sas"]
        assert live["state"] == "established" and (live["spi_i"], live["spi_r"]) == (
            ike["spi_i"], ike["spi_r"])  # fmt: skip
        assert peer["last_error"] is None and peer["counters"]["dead_peer_detections"] == 0


# --- 4. memory -------------------------------------------------------------------------------


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value (list items by position)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in key_paths(v, f"{prefix}/{k}")} | {prefix}
    if isinstance(value, list):
        return {p for i, v in enumerate(value) for p in key_paths(v, f"{prefix}/{i}")} | {prefix}
    return {prefix}


@pytest.mark.slow
@pytest.mark.parametrize("messages", MESSAGE_COUNTS)
def test_spoofed_messages_with_distinct_ids_leave_no_trace(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any], messages: int
) -> None:
    """INFORMATIONAL requests under the live SPIs 'from' gw-a (the IKE SA's initiator, so
    they reach gw-b's session), each with the next message ID, at gw-b."""
    sites = start_sites(make_sites)
    gwb = sites.gwb
    assert gwb.proc is not None
    (ike,) = peer_named(gwb, "gw-a")["ike_sas"]
    assert ike["role"] == "responder"  # the flood's messages carry the Initiator flag
    spis = f"{ike['spi_i']}:{ike['spi_r']}"
    time.sleep(1.0)
    before = gwb.status()
    rss_before = rss_kb(gwb.proc.pid)
    with StatusPoller(gwb, 0.5) as poller:
        flood = Flood.start(sites.lab, "--dst", GWB_UNDERLAY, "--src", GWA_UNDERLAY, "--kind",
                            "info", "--spis", spis, "--rate", str(RATE), "--count", str(messages),
                            "--seconds", "120")  # fmt: skip
        report = flood.result(timeout=200)
        time.sleep(1.0)
    after = gwb.status()
    rss_after = rss_kb(gwb.proc.pid)
    # the status once the first tenth had come (its drop keys there) and every later one
    start, end = report["window"]
    later = [s for s in poller.samples if start + (end - start) / 10 <= s.at <= end + 1]
    sizes = [len(json.dumps(before))] + [len(json.dumps(s.status)) for s in later]
    sizes.append(len(json.dumps(after)))
    drop_keys = [sorted(peer_named(gwb, "gw-a", s.status)["ike_sas"][0]["drops"])
                 for s in poller.samples]  # fmt: skip
    drops = peer_named(gwb, "gw-a", after)["ike_sas"][0]["drops"]
    moved = delta(counters(after), counters(before))
    paths_before, paths_after = key_paths(before), key_paths(after)
    record(
        figures, f"{messages} spoofed INFORMATIONAL", flood=report,
        reached_gw_b=moved.get("udp500_received", 0),
        session_drops=drops,
        drop_key_counts_seen=sorted({len(k) for k in drop_keys}),
        rss_kb_before_peak_after=[rss_before, max(s.rss_kb for s in poller.samples), rss_after],
        status_json_bytes={"before": sizes[0], "after_10000": sizes[1],
                           "later_min_max": [min(sizes[1:]), max(sizes[1:])], "after": sizes[-1]},
        status_paths_added=sorted(paths_after - paths_before),
        status_paths_gone=sorted(paths_before - paths_after),
    )  # fmt: skip
    assert report["sent"] == messages
    assert sum(drops.values()) >= messages // 2, drops  # they did reach the session
    assert set(drops) <= set(DROP_REASONS)
    assert all(k == sorted(drops) for k in drop_keys[len(drop_keys) // 4 :]), drop_keys
    assert max(s.rss_kb for s in poller.samples) - rss_before < RSS_MEMORY_MAX_KB
    assert rss_after - rss_before < RSS_MEMORY_MAX_KB
    # new keys only among the fixed drop reasons, none gone
    assert all("/drops/" in p for p in paths_after - paths_before), paths_after - paths_before
    assert paths_before <= paths_after, paths_before - paths_after
    assert sizes[-1] - sizes[0] < 300, sizes  # before: the drop reasons appear once
    assert max(sizes[1:]) - min(sizes[1:]) < 64, sizes  # then: the counters' digits only
    peer = peer_named(gwb, "gw-a", after)
    assert peer["state"] == "established" and peer["last_error"] is None


CRASH_SIGNATURE = "cookies answer IKE_SA_INIT requests only"
CRASH = (
    "one datagram stops the whole gateway: the dispatcher takes any request with SPIr = 0 "
    "and the Initiator flag for a new IKE_SA_INIT whatever its exchange type "
    "(Daemon._dispatch: new_init), FrontDoor.admit parses it and, when it carries a COOKIE "
    "notify first (or its source is above the half-open threshold), asks "
    "ike.cookies.cookie_challenge for a reply, which raises LocalError('cookies answer "
    "IKE_SA_INIT requests only') for an INFORMATIONAL/IKE_AUTH/CREATE_CHILD_SA; the "
    "exception leaves _dispatch_loop (outside the per-peer boundary of rule 6), the root "
    "nursery fails and tunneld exits (traceback in its log, routes and TUN gone). Found "
    "by the 100,000-datagram fuzz below ~2 s in; one spoofed HDR(SPIi, 0, INFORMATIONAL, "
    "I) N(COOKIE) from a configured peer's address (any address with a wildcard peer) "
    "is enough"
)


def test_a_spoofed_non_init_request_with_spi_r_zero_does_not_stop_the_gateway(
    make_sites: Callable[[SiteOptions], Sites], figures: dict[str, Any]
) -> None:
    sites = start_sites(make_sites)
    gwa = sites.gwa
    assert gwa.proc is not None
    forged = Message(
        spi_i=random.Random(1).randbytes(8),
        spi_r=bytes(8),
        exchange_type=ExchangeType.INFORMATIONAL,
        flags=HeaderFlag.INITIATOR,
        message_id=0,
        payloads=[NotifyPayload(NotifyType.COOKIE, bytes(36))],
    ).build()
    spoof(sites.lab, [forged], src=GWB_UNDERLAY, dst=GWA_UNDERLAY, sport=500, dport=500)
    time.sleep(1.0)
    alive = gwa.proc.poll() is None
    log = gwa.log.read_text(errors="replace")
    record(
        figures, "one spoofed INFORMATIONAL with SPIr = 0 and a COOKIE", gw_a_running=alive,
        exit_code=gwa.proc.returncode, crash_in_log=CRASH_SIGNATURE in log,
    )  # fmt: skip
    assert alive, gwa.tail_log(40)
    assert "Traceback" not in log
    assert paired(sites) is not None and sites.ping(2).returncode == 0


# --- 5. fuzz ---------------------------------------------------------------------------------


def ike_corpus(sites: Sites, path: Path, pcap_path: Path) -> dict[str, int]:
    """Genuine IKE datagrams of this lab's gateways (handshake, IKE SA rekey, Child SA
    rekey, liveness): one hex line each, as flood.py --corpus reads them. Returns
    how many per UDP port."""
    capture = Capture(sites.lab, pcap_path, port="wa")
    try:
        sites.start()
        sites.wait_established()
        for ike in (True, False):
            assert sites.gwa.request({"cmd": "rekey", "peer": "gw-b", "ike": ike})["ok"]
            time.sleep(1.0)
        assert sites.gwb.request({"cmd": "rekey", "peer": "gw-a"})["ok"]
        time.sleep(1.0)
    finally:
        datagrams = ike_datagrams(capture.stop())
    by_port: dict[int, list[bytes]] = {500: [], 4500: []}
    for d in datagrams:
        by_port[500 if 500 in (d.sport, d.dport) else 4500].append(d.data)
    for port, items in by_port.items():
        assert items, f"no IKE datagram on UDP {port} captured"
        marker = bytes(4) if port == 4500 else b""  # mutations may hit the marker too
        path.with_suffix(f".{port}").write_text("".join((marker + d).hex() + "\n" for d in items))
    return {str(port): len(items) for port, items in by_port.items()}


@pytest.mark.slow
@pytest.mark.parametrize("messages", MESSAGE_COUNTS)
def test_mutated_ike_datagrams_change_nothing(
    make_sites: Callable[[SiteOptions], Sites],
    figures: dict[str, Any],
    tmp_path: Path,
    messages: int,
) -> None:
    sites = make_sites(SiteOptions(log_format="json", auto_b="start"))
    corpus = tmp_path / "corpus"
    captured = ike_corpus(sites, corpus, tmp_path / "corpus.pcap")
    arm_attacker(sites.lab)
    gwa = sites.gwa
    assert gwa.proc is not None
    pid, rss_before = gwa.proc.pid, rss_kb(gwa.proc.pid)
    before = counters(gwa.status())
    seconds = messages / RATE
    half = str(messages // 2)
    floods = []
    for port in (500, 4500):  # half each, from the peer's address and port
        args = ["--dst", GWA_UNDERLAY, "--src", GWB_UNDERLAY, "--kind", "mutate",
                "--corpus", str(corpus.with_suffix(f".{port}")), "--port", str(port),
                "--sport", str(port), "--rate", str(RATE // 2), "--count", half,
                "--seconds", str(seconds + 30), "--seed", str(port)]  # fmt: skip
        floods.append(Flood.start(sites.lab, *args))
    count = int(seconds * PROBE_RATE)
    started = time.monotonic()
    with StatusPoller(gwa, 1.0) as poller:
        try:
            with sites.probing(count, PROBE_RATE) as run:
                while run.sender.poll() is None and gwa.proc.poll() is None:
                    time.sleep(0.2)
                died = gwa.proc.poll() is not None
                probes = None if died else run.result(timeout=30)
            reports = [] if died else [f.result(timeout=seconds + 60) for f in floods]
        finally:
            for f in floods:
                f.kill()
        time.sleep(1.0)
    log = gwa.log.read_text(errors="replace")
    if died or probes is None:
        record(
            figures, f"{messages} mutated IKE datagrams", corpus=captured,
            gw_a_exited_after_s=round(time.monotonic() - started, 1),
            exit_code=gwa.proc.returncode, tracebacks=log.count("Traceback"),
        )  # fmt: skip
        if CRASH_SIGNATURE in log:  # the bug of the test below
            pytest.xfail(f"gw-a exited: {CRASH}")
        raise AssertionError(f"gw-a exited:\n{gwa.tail_log(40)}")
    after = gwa.status()
    moved = delta(counters(after), before)
    record(
        figures, f"{messages} mutated IKE datagrams", corpus=captured,
        floods=[{k: r[k] for k in ("sent", "seconds", "rate")} for r in reports],
        pid_same=gwa.proc.poll() is None and gwa.proc.pid == pid,
        tracebacks=log.count("Traceback"),
        peer_task_resets=after["ike_dispatch"]["peer_task_resets"],
        counters_moved=moved, probes_lost={d: probes[d]["lost"] for d in ("forward", "reverse")},
        rss_kb_before_peak_after=[rss_before, max(s.rss_kb for s in poller.samples),
                                  rss_kb(pid)],
        session_drops=peer_named(gwa, "gw-b", after)["ike_sas"][0]["drops"],
    )  # fmt: skip
    assert sum(r["sent"] for r in reports) == messages
    assert gwa.proc.poll() is None and gwa.proc.pid == pid
    assert "Traceback" not in log and after["ike_dispatch"]["peer_task_resets"] == 0
    assert_probes_clean(probes, count)
    assert max(s.rss_kb for s in poller.samples) - rss_before < RSS_FUZZ_MAX_KB
    assert rss_kb(pid) - rss_before < RSS_FUZZ_MAX_KB
    peer = peer_named(gwa, "gw-b", after)
    assert peer["state"] == "established" and peer["last_error"] is None
