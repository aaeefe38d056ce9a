"""Issue 4 through two real daemons in the namespace lab: rekeying without losing a
packet, liveness, restart recovery, nothing piling up. (~5 minutes in all with the
soak profile, ``-m soak``; about 1 minute in the default run, which keeps a), c) for
gw-a and d) shorter and leaves b) and c) for gw-b to the soak profile.)

a) A Child SA rekey every 5 s for 60 s (default run: 20 s), gw-a initiating the
   rekeys and then (soak) answering them, while tests/tools/probe.py sends one
   datagram per millisecond each way: nothing lost or duplicated, >= 10 SPI
   changes (20 s: 2) seen in ``status`` (polled every 0.25 s), and each old
   inbound SA kept for the delete delay and gone within delete delay + 1 s.
b) The underlay black-holed for 60 s (nftables on the WAN bridge): the peer
   is declared dead within the bound the code gives (below), and the tunnel
   carries probes again within 10 s of the path's return (dpd_action restart
   on gw-a, clear on gw-b). Those 10 s hold by the arithmetic of the backoff:
   the restart's IKE_SA_INIT is resent 1, 2.8, 6.0, 11.9 and 22.4 s after it
   began (RetransmitPolicy), the peer is declared dead 46-47 s into the outage,
   so the resend at 22.4 s comes 8.7-9.7 s after the path returns. Another
   outage length can wait up to ~21 s for the next IKE_SA_INIT.
c) ``kill -9`` of a gateway and a restart: probes flow again within the
   liveness timeout + 5 s, and each side has one IKE SA (INITIAL_CONTACT and
   stale-SA replacement when gw-a restarts; DPD when gw-b does).
d) 100 forced rekeys (300 in the soak profile, ``-m soak``; ``tunneld rekey``
   through the control socket, every 10th of the IKE SA): RSS growth under
   10 MB, trio task count flat.

Every figure is printed on a ``MEASURED`` line (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ike.policy import DEFAULT_RETRANSMIT
from tests.helpers.lab_sites import Sites, assert_probes_clean, poll
from tools.lab import Gateway, SiteOptions
from tunneld.peer import WATCH_INTERVAL

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

LIFETIME = 5.0  # child_lifetime of the rekeying side (the configuration's minimum)
DELETE_DELAY = 3.0  # not the default 5 s: the test must see the configured value honoured
RUN = 60.0  # the soak profile (-m soak); the default run rekeys for CI_RUN, gw-a initiating
CI_RUN = 20.0
RATE = 1000.0  # probes per second each way: one per millisecond
POLL = 0.25  # seconds between status polls
DPD_DELAY = 5.0
BLACKHOLE = 60.0
RECOVERY = 10.0  # seconds from the path's return to flowing probes (b)
# (b, c) The last packet before an outage is noticed at most WATCH_INTERVAL later
# (peer rule 4), the liveness check leaves DPD_DELAY after that, and the peer is
# dead when the check's retransmissions run out (ike.policy.RetransmitPolicy).
LIVENESS_TIMEOUT = WATCH_INTERVAL + DPD_DELAY + DEFAULT_RETRANSMIT.total
SCHEDULING_SLACK = 0.5
LEAD, TAIL = 1.5, 2.0  # probing before an outage, and after its worst case
REKEYS = 100  # the default run (CI)
SOAK_REKEYS = 300  # the soak profile (-m soak)
WARM_UP = 20
RSS_GROWTH_MAX_KB = 10 * 1024


@pytest.fixture
def lab_stem() -> str:
    return "hrn"


def add_peer_lines(conf: Path, *lines: str) -> None:
    """More keys in the [[peer]] table (the last table of the files tools.lab writes)."""
    conf.write_text(conf.read_text() + "".join(line + "\n" for line in lines))


def log_time(record: dict[str, Any]) -> float:
    """A JSON log record's wall-clock time (ms precision), as time.time() counts."""
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def measured(what: str, **figures: object) -> None:
    print(f"MEASURED {what}: {json.dumps(figures)}")


# --- a) rekey every 5 s under a datagram per millisecond -------------------------------


@dataclass
class SpiTrack:
    """One inbound SPI of one gateway as the polls saw it (wall-clock times)."""

    first_child: float | None = None
    last_retiring: float | None = None
    gone: float | None = None  # first poll after it had been retiring that lacks it


@dataclass
class SaWatcher:
    """Polls both gateways' status over the control socket."""

    sites: Sites
    spis: dict[str, dict[str, SpiTrack]] = field(default_factory=dict)
    spi_out: dict[str, set[str]] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    child_drops: list[Any] = field(default_factory=list)
    last_poll: float = 0.0

    def poll(self) -> None:
        for gw in (self.sites.gwa, self.sites.gwb):
            (peer,) = gw.status()["peers"]
            now = time.time()
            tracks = self.spis.setdefault(gw.node, {})
            for child in peer["child_sas"]:
                track = tracks.setdefault(child["spi_in"], SpiTrack())
                track.first_child = track.first_child or now
                self.spi_out.setdefault(gw.node, set()).add(child["spi_out"])
                if child["drops"]:
                    self.child_drops.append((gw.node, child["spi_in"], child["drops"]))
            retiring = set(peer["retiring_spis"])
            for spi in retiring:
                tracks.setdefault(spi, SpiTrack()).last_retiring = now
            for spi, track in tracks.items():
                if track.last_retiring is not None and track.gone is None and spi not in retiring:
                    track.gone = now
            self.peers[gw.node] = peer
        self.last_poll = time.time()

    def quiet(self) -> bool:
        """Poll; True when no old inbound SA is left and both sides saw the same SPIs."""
        self.poll()
        retiring = any(p["retiring_spis"] for p in self.peers.values())
        crosswise = set(self.spis["gwa"]) == self.spi_out["gwb"] and (
            set(self.spis["gwb"]) == self.spi_out["gwa"]
        )
        return crosswise and not retiring

    def retired(self, gw: Gateway) -> dict[str, tuple[float, SpiTrack]]:
        """Child SAs removed before the last poll: inbound SPI -> (removal time, track)."""
        removed = [
            (r["spi_in"], log_time(r)) for r in self.sites.log_events(gw, "Child SA removed")
        ]
        tracks = self.spis[gw.node]
        return {spi: (at, tracks[spi]) for spi, at in removed if at < self.last_poll}


def start_rekeying_sites(make_sites: Callable[[SiteOptions], Sites], rekeyer: str) -> Sites:
    """``rekeyer`` has child_lifetime 5 s and no jitter; the other side 1 h (never first)."""
    shared = ["rekey_jitter = 0", f'delete_delay = "{DELETE_DELAY:g}s"']
    sites = make_sites(SiteOptions(log_format="json", extra_peer="\n".join(shared)))
    short, long = (sites.conf_a, sites.conf_b) if rekeyer == "gwa" else (sites.conf_b, sites.conf_a)
    add_peer_lines(short, f'child_lifetime = "{LIFETIME:g}s"')
    add_peer_lines(long, 'child_lifetime = "1h"')
    sites.start()
    sites.wait_established()
    return sites


def check_retirements(watcher: SaWatcher, gw: Gateway) -> list[float]:
    """Each old inbound SA stayed for the delete delay and went within it + 1 s."""
    kept = []
    for spi, (removed_at, track) in watcher.retired(gw).items():
        assert track.last_retiring is not None and track.gone is not None, (gw.node, spi, track)
        assert track.gone - removed_at <= DELETE_DELAY + 1.0, (gw.node, spi, removed_at, track)
        # make-before-break: packets still in flight to it must decrypt meanwhile
        assert track.last_retiring - removed_at >= DELETE_DELAY - 2 * POLL, (gw.node, spi, track)
        kept.append(round(track.gone - removed_at, 3))
    return kept


def probe_while_polling(sites: Sites, watcher: SaWatcher, count: int) -> dict[str, Any]:
    with sites.probing(count, RATE, "64,1372", window=1000) as run:
        while run.sender.poll() is None:
            watcher.poll()
            time.sleep(POLL)
        report = run.result(timeout=30)
    # a moment with no old inbound SA left (rekeys go on: there is one 2 s in every 5)
    assert poll(watcher.quiet, 2 * LIFETIME, POLL), watcher.peers
    return report


@pytest.mark.parametrize(
    ("rekeyer", "run"),
    [
        pytest.param("gwa", CI_RUN, id="gwa-initiates-20s"),
        pytest.param("gwa", RUN, id="gwa-initiates", marks=pytest.mark.soak),
        pytest.param("gwb", RUN, id="gwa-responds", marks=pytest.mark.soak),
    ],
)
def test_rekey_every_5s_loses_no_datagram(
    make_sites: Callable[[SiteOptions], Sites], rekeyer: str, run: float
) -> None:
    sites = start_rekeying_sites(make_sites, rekeyer)
    watcher = SaWatcher(sites)
    watcher.poll()
    drops_before = [gw.status()["dataplane"]["drops"] for gw in (sites.gwa, sites.gwb)]
    ike_before = watcher.peers["gwa"]["ike_sas"][0]["spi_i"]
    count = int(run * RATE)
    report = probe_while_polling(sites, watcher, count)
    assert_probes_clean(report, count)
    assert report["gaps"] == [] and report["send_seconds"] < run + 2, report
    changes = {node: len(tracks) - 1 for node, tracks in watcher.spis.items()}
    rekeys = {node: p["counters"]["child_rekeys"] for node, p in watcher.peers.items()}
    assert changes["gwa"] >= int(run / LIFETIME) - 2 and changes == rekeys, (changes, rekeys)
    kept = {gw.node: check_retirements(watcher, gw) for gw in (sites.gwa, sites.gwb)}
    assert [len(kept["gwa"]), len(kept["gwb"])] == [changes["gwa"], changes["gwb"]], kept
    assert watcher.child_drops == []
    assert [gw.status()["dataplane"]["drops"] for gw in (sites.gwa, sites.gwb)] == drops_before
    for peer in watcher.peers.values():
        (ike,) = peer["ike_sas"]
        assert ike["spi_i"] == ike_before and peer["counters"]["ike_rekeys"] == 0
        assert peer["last_error"] is None
    measured(
        f"rekey every {LIFETIME:g}s, {rekeyer} initiating",
        probes_each_way=count, forward=report["forward"], reverse=report["reverse"],
        spi_changes=changes, child_rekeys=rekeys,
        old_inbound_gone_after_s={k: [min(v), max(v)] for k, v in kept.items()},
    )  # fmt: skip


# --- b) a black-holed underlay ----------------------------------------------------------

BLACKHOLE_RULES = """table bridge hrnhole {
    chain forward {
        type filter hook forward priority 0;
        ether type { ip, ip6 } counter drop
    }
}
"""


def blackhole(sites: Sites, on: bool) -> float:
    """Drop every IP packet the WAN bridge forwards between the gateways (ARP passes:
    a dead path in a routed underlay, not a dead link). Returns when it took effect."""
    cmd = ["nft", "-f", "-"] if on else ["nft", "delete", "table", "bridge", "hrnhole"]
    subprocess.run(
        ["ip", "netns", "exec", sites.lab.ns("wan"), *cmd],
        input=BLACKHOLE_RULES if on else None, text=True, check=True, timeout=10,
    )  # fmt: skip
    return time.time()


def dead_after(sites: Sites, gw: Gateway, since: float) -> float:
    (record,) = sites.log_events(gw, "peer dead")
    return log_time(record) - since


def reinitiation_schedule(start: float) -> list[float]:
    """When the IKE_SA_INIT of a restart begun at ``start`` is (re)sent."""
    sends, t = [], start
    for attempt in range(DEFAULT_RETRANSMIT.tries + 1):
        sends.append(t)
        t += DEFAULT_RETRANSMIT.timeout(attempt, init=True)
    return sends


def outage(report: dict[str, Any], at: float) -> list[float]:
    """The probe's silence around wall-clock time ``at``, in wall-clock times."""
    start = report["started_at"]
    # the gap that overlaps [at, at + 0.5]: it may end within half a second (fast recovery)
    found = [
        [start + a, start + b]
        for a, b in report["gaps"]
        if start + a <= at + 0.5 and start + b >= at
    ]
    assert len(found) == 1, (at - start, report["gaps"])
    return found[0]


@pytest.mark.soak  # 77 s: DPD plus ~41 s of retransmissions, then the return
def test_blackholed_underlay_dead_peer_within_bound_and_back_within_10s(
    make_sites: Callable[[SiteOptions], Sites],
) -> None:
    sites = make_sites(SiteOptions(log_format="json", extra_peer=f'dpd_delay = "{DPD_DELAY:g}s"'))
    add_peer_lines(sites.conf_a, 'dpd_action = "restart"')
    add_peer_lines(sites.conf_b, 'dpd_action = "clear"')
    sites.start()
    sites.wait_established()
    rate = 100.0
    count = int((LEAD + BLACKHOLE + RECOVERY + TAIL) * rate)
    # window = count: the sender never waits for echoes, so it keeps probing the path
    # every 10 ms through the outage (100 per second cannot fill a socket buffer)
    with sites.probing(count, rate, window=count, idle=BLACKHOLE + 30) as run:
        time.sleep(LEAD)
        cut = blackhole(sites, on=True)
        time.sleep(BLACKHOLE)
        back = blackhole(sites, on=False)
        report = run.result(timeout=count / rate + 60)
    detected = {gw.node: dead_after(sites, gw, cut) for gw in (sites.gwa, sites.gwb)}
    for node, after in detected.items():
        assert DEFAULT_RETRANSMIT.total - SCHEDULING_SLACK <= after, (node, after)
        assert after <= LIVENESS_TIMEOUT + SCHEDULING_SLACK, (node, after, LIVENESS_TIMEOUT)
    silent_from, silent_to = outage(report, cut)
    recovered = silent_to - back
    restarts = sites.log_events(sites.gwa, "initiating IKE SA")[1:]  # after the first
    assert restarts, "gw-a never re-initiated after declaring the peer dead"
    sends = [t for r in restarts for t in reinitiation_schedule(log_time(r))]
    expected = min((t for t in sends if t >= back), default=float("nan")) - back
    assert recovered <= RECOVERY, (recovered, f"next IKE_SA_INIT {expected:.2f}s after")
    assert abs(silent_from - cut) < 0.5 and len(report["gaps"]) == 1, report["gaps"]
    for direction in ("forward", "reverse"):
        assert report[direction]["duplicated"] == report[direction]["corrupt"] == 0, report
    for gw in (sites.gwa, sites.gwb):
        peer = sites.peer_status(gw)
        assert [s["state"] for s in peer["ike_sas"]] == ["established"], peer["ike_sas"]
        assert peer["counters"]["dead_peer_detections"] == 1
    measured(
        "black hole", seconds=round(back - cut, 3), liveness_timeout_bound_s=LIVENESS_TIMEOUT,
        dead_peer_detected_after_s={k: round(v, 3) for k, v in detected.items()},
        probes_back_after_s=round(recovered, 3),
        next_ike_sa_init_after_return_s=round(expected, 3), probes_lost=report["lost"],
    )  # fmt: skip


# --- c) kill -9 and restart -------------------------------------------------------------


def one_ike_sa_each(sites: Sites, stale_spi: str | None) -> str:
    """Each side has one established IKE SA, the same one; anything else listed is the
    stale IKE SA being deleted. Returns its SPIi."""
    peers = [sites.peer_status(gw) for gw in (sites.gwa, sites.gwb)]
    up = [[s for s in p["ike_sas"] if s["state"] == "established"] for p in peers]
    assert [len(u) for u in up] == [1, 1], [p["ike_sas"] for p in peers]
    assert up[0][0]["spi_i"] == up[1][0]["spi_i"] and up[0][0]["spi_r"] == up[1][0]["spi_r"]
    for peer in peers:
        others = [s for s in peer["ike_sas"] if s["state"] != "established"]
        assert all(s["state"] == "deleting" and s["spi_i"] == stale_spi for s in others), others
    spi: str = up[0][0]["spi_i"]
    return spi


@pytest.mark.parametrize(
    "victim",
    ["gwa", pytest.param("gwb", marks=pytest.mark.soak)],  # gwb: 58 s of DPD
)
def test_kill_9_and_restart_recovers_with_one_ike_sa(
    make_sites: Callable[[SiteOptions], Sites], victim: str
) -> None:
    sites = make_sites(SiteOptions(log_format="json", extra_peer=f'dpd_delay = "{DPD_DELAY:g}s"'))
    sites.start()
    sites.wait_established()
    stale = one_ike_sa_each(sites, None)
    gw = sites.gwa if victim == "gwa" else sites.gwb
    assert gw.proc is not None
    rate, bound = 100.0, LIVENESS_TIMEOUT + 5.0
    seconds = LEAD + (5 if victim == "gwa" else bound) + TAIL
    count = int(seconds * rate)
    with sites.probing(count, rate, window=count, idle=bound + 10) as run:  # as in b)
        time.sleep(LEAD)
        killed = time.time()
        gw.proc.kill()  # SIGKILL: no DELETE, no cleanup
        gw.proc.wait()
        gw.start()
        gw.wait_ready()
        report = run.result(timeout=seconds + 60)
    recovered = outage(report, killed)[1] - killed
    assert recovered <= bound, (recovered, bound)
    fresh = one_ike_sa_each(sites, stale if victim == "gwa" else None)
    assert fresh != stale
    if victim == "gwa":  # the restarted initiator says INITIAL_CONTACT: gw-b drops the stale SA
        replaced = sites.log_events(sites.gwb, "replacing stale IKE SA")
        assert [r["spi_i"] for r in replaced] == [stale]
    else:  # gw-b forgot everything: gw-a finds out by DPD and restarts
        assert sites.peer_status(sites.gwa)["counters"]["dead_peer_detections"] == 1
    for direction in ("forward", "reverse"):
        assert report[direction]["duplicated"] == report[direction]["corrupt"] == 0, report
    measured(
        f"kill -9 {victim}", probes_back_after_s=round(recovered, 3), bound_s=round(bound, 3),
        ike_sas={g.node: len(sites.peer_status(g)["ike_sas"]) for g in (sites.gwa, sites.gwb)},
    )  # fmt: skip


# --- d) 100 (soak: 300) forced rekeys-------------------------------------------------------------


def rss_kb(gw: Gateway) -> int:
    """VmRSS of the tunneld process (``ip netns exec`` execs it: same pid)."""
    assert gw.proc is not None
    proc = Path(f"/proc/{gw.proc.pid}")
    assert b"tunneld.cli\x00run" in (proc / "cmdline").read_bytes()
    for line in (proc / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def forced_rekey(sites: Sites, ike: bool, *, cli: bool = False) -> None:
    """``tunneld rekey gw-b [--ike]`` on gw-a; back once both sides hold only the new SA."""
    a = sites.peer_status(sites.gwa)
    generation, ike_rekeys = a["child_sas"][0]["generation"], a["counters"]["ike_rekeys"]
    if cli:
        args = ["rekey", "gw-b", *(["--ike"] if ike else []), "-s", str(sites.gwa.socket)]
        proc = sites.gwa.cli(*args)
        assert proc.returncode == 0, proc.stderr
    else:
        answer = sites.gwa.request({"cmd": "rekey", "peer": "gw-b", "ike": ike})
        assert answer["ok"], answer

    def done() -> bool:
        a, b = sites.peer_status(sites.gwa), sites.peer_status(sites.gwb)
        if len(a["child_sas"]) != 1 or len(b["child_sas"]) != 1 or len(a["ike_sas"]) != 1:
            return False
        ca, cb = a["child_sas"][0], b["child_sas"][0]
        return (
            ca["spi_in"] == cb["spi_out"] and cb["outbound_active"]
            and ca["generation"] == generation + (not ike)
            and a["counters"]["ike_rekeys"] == b["counters"]["ike_rekeys"] == ike_rekeys + ike
            and not a["ike_sas"][0]["rekeying"]
        )  # fmt: skip

    assert poll(done, 5, 0.005), (sites.peer_status(sites.gwa), sites.peer_status(sites.gwb))


def settled(sites: Sites) -> dict[str, tuple[int, int]]:
    """(RSS kB, trio tasks) of each gateway once no old inbound SA is left."""
    assert poll(
        lambda: not any(sites.peer_status(g)["retiring_spis"] for g in (sites.gwa, sites.gwb)),
        5, 0.1,
    )  # fmt: skip
    return {g.node: (rss_kb(g), tasks(g)) for g in (sites.gwa, sites.gwb)}


def tasks(gw: Gateway) -> int:
    """The daemon's trio tasks: the least of a few looks (the handler of the previous
    control request may still be closing its connection)."""
    counts = []
    for _ in range(5):
        counts.append(gw.status()["tasks"])
        time.sleep(0.02)
    return min(counts)


@pytest.mark.parametrize(
    "rekeys", [REKEYS, pytest.param(SOAK_REKEYS, marks=pytest.mark.soak)], ids=str
)
def test_forced_rekeys_leave_rss_and_task_count_flat(
    make_sites: Callable[[SiteOptions], Sites], rekeys: int
) -> None:
    sites = make_sites(SiteOptions(log_format="json", extra_peer='delete_delay = "1s"'))
    sites.start()
    sites.wait_established()
    kinds = [i % 10 == 9 for i in range(WARM_UP + rekeys)]  # every 10th: the IKE SA
    forced_rekey(sites, ike=False, cli=True)  # the real command line, once each
    forced_rekey(sites, ike=True, cli=True)
    for ike in kinds[2:WARM_UP]:
        forced_rekey(sites, ike=ike)
    before = settled(sites)
    started = time.monotonic()
    for ike in kinds[WARM_UP:]:
        forced_rekey(sites, ike=ike)
    seconds = time.monotonic() - started
    after = settled(sites)
    for node in before:
        assert after[node][0] - before[node][0] < RSS_GROWTH_MAX_KB, (node, before, after)
        assert after[node][1] == before[node][1], (node, before, after)
    counters = sites.peer_status(sites.gwa)["counters"]
    ike_rekeys = 1 + sum(kinds[2:])
    assert counters["ike_rekeys"] == ike_rekeys
    assert counters["child_rekeys"] == len(kinds) - ike_rekeys
    assert sites.ping(2).returncode == 0
    measured(
        f"{rekeys} forced rekeys", seconds=round(seconds, 2),
        rss_kb_before_after={n: [before[n][0], after[n][0]] for n in before},
        tasks_before_after={n: [before[n][1], after[n][1]] for n in before},
    )  # fmt: skip
