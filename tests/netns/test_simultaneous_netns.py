"""Issue #8 through two real daemons in the namespace lab: both gateways with
``auto = "start"``, started together, 20 times (the soak profile, ``-m soak``;
the default run does 3).

Measured before the fix: 1 ms probes both ways; in 2 of 5 runs B->A lost
~2,000 of 5,000 probes (gw-b sent N(INITIAL_CONTACT) although it held
another IKE SA with gw-a; gw-a forgot that SA without a DELETE while gw-b
kept it as the surviving duplicate).

Each run: fresh configurations, both ``tunneld run`` started at once; from
the moment both gateways' status (the control socket ``tunneld status``
reads) shows the Child SA (the same pair on both sides), 5,000 probes at one
per millisecond from site A, echoed by site B (tests/tools/probe.py): none
lost either way. Meanwhile the status of both is polled every 0.1 s: no IKE
SA stays ``deleting`` longer than the delete delay. At the end each side
holds exactly one IKE SA and one Child SA, the same pair on both sides, and
no old inbound SA is left. Every figure is printed on a ``MEASURED`` line
(``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers.lab_sites import (
    PROBE,
    PROBE_PORT,
    ProbeRun,
    Sites,
    assert_probes_clean,
    poll,
)
from tools.lab import HOST_B, Gateway, SiteOptions
from tunneld import control

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

RUNS = 3  # the default run (CI): about 20 s
SOAK_RUNS = 20  # the soak profile (-m soak): the 20 runs, about 145 s
COUNT = 5000  # probes per run
RATE = 1000.0  # one per millisecond
DELETE_DELAY = 3.0
POLL = 0.1


@pytest.fixture
def lab_stem() -> str:
    return "hd"  # this suite's namespaces: hdXXXXXX-{a,gwa,wan,gwb,b}


def measured(what: str, **figures: object) -> None:
    print(f"MEASURED {what}: {json.dumps(figures)}")


def peer_of(gw: Gateway) -> dict[str, Any] | None:
    try:
        (peer,) = gw.status()["peers"]
    except control.ControlError:
        return None
    result: dict[str, Any] = peer
    return result


def child_pairs(peer: dict[str, Any] | None) -> set[tuple[str, str]]:
    return {(c["spi_in"], c["spi_out"]) for c in (peer or {}).get("child_sas", [])}


def paired(sites: Sites) -> bool:
    a, b = peer_of(sites.gwa), peer_of(sites.gwb)
    return bool(child_pairs(a) & {(o, i) for i, o in child_pairs(b)})


def live_ike_sas(peer: dict[str, Any]) -> list[tuple[str, str]]:
    """IKE SAs not closed (a closed one may linger to answer retransmissions)."""
    return [(i["spi_i"], i["spi_r"]) for i in peer["ike_sas"] if i["state"] != "closed"]


class DeletingWatch:
    """Polls both gateways; how long each IKE SA was seen ``deleting``."""

    def __init__(self, sites: Sites) -> None:
        self.sites = sites
        self.seen: dict[tuple[str, str, str], list[float]] = {}  # (node, spi_i, spi_r)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DeletingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            for gw in (self.sites.gwa, self.sites.gwb):
                peer = peer_of(gw)
                for ike in (peer or {}).get("ike_sas", []):
                    if ike["state"] == "deleting":
                        key = (gw.node, ike["spi_i"], ike["spi_r"])
                        self.seen.setdefault(key, []).append(time.monotonic())

    def longest(self) -> float:
        return max((max(t) - min(t) for t in self.seen.values()), default=0.0)


@contextlib.contextmanager
def echo_ready(sites: Sites) -> Iterator[subprocess.Popen[Any]]:
    """The probe echo on site B, READY (it waits for the first probe)."""
    echo: subprocess.Popen[Any] = sites.lab.popen(  # text=True: str lines
        "b", sys.executable, str(PROBE), "echo", "--bind", HOST_B, "--port", str(PROBE_PORT),
        "--idle", "3", "--timeout", str(COUNT / RATE + 90),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        yield echo
    finally:
        if echo.poll() is None:
            echo.kill()
        echo.wait()


@contextlib.contextmanager
def send_probes(sites: Sites) -> Iterator[subprocess.Popen[Any]]:
    """One probe a millisecond from site A (tests/tools/probe.py send)."""
    sender = sites.lab.popen(
        "a", sys.executable, str(PROBE), "send", "--to", HOST_B, "--port", str(PROBE_PORT),
        "--count", str(COUNT), "--rate", str(RATE), "--sizes", "64", "--window", "500",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield sender
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait()


def one_run(make_sites: Callable[[SiteOptions], Sites], run: int) -> dict[str, Any]:
    opts = SiteOptions(
        auto_a="start",
        auto_b="start",
        log_format="json",
        extra_peer=f'delete_delay = "{DELETE_DELAY:g}s"',
    )
    sites = make_sites(opts)
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(echo_ready(sites))  # ready before the tunnel is
        t0 = time.monotonic()
        for gw in (sites.gwa, sites.gwb):  # together: neither waits for the other
            gw.start()
            sites.started.append(gw)
        assert poll(lambda: paired(sites), timeout=20, interval=0.01), (
            peer_of(sites.gwa),
            peer_of(sites.gwb),
        )
        up = time.monotonic() - t0
        watch = stack.enter_context(DeletingWatch(sites))
        sender = stack.enter_context(send_probes(sites))
        report = ProbeRun(sender, echo).result(timeout=COUNT / RATE + 30)
    assert_probes_clean(report, COUNT)
    first_probe = report["started_at"] - (time.time() - (time.monotonic() - t0)) - up
    assert watch.longest() <= DELETE_DELAY, watch.seen

    a, b = peer_of(sites.gwa), peer_of(sites.gwb)
    assert a is not None and b is not None
    assert len(live_ike_sas(a)) == 1 and live_ike_sas(a) == live_ike_sas(b), (a, b)
    assert {i["state"] for p in (a, b) for i in p["ike_sas"]} <= {"established", "closed"}
    (pair,) = child_pairs(a)
    assert child_pairs(b) == {pair[::-1]}
    assert a["retiring_spis"] == b["retiring_spis"] == []
    for peer in (a, b):
        assert peer["last_error"] is None, peer["last_error"]
        assert peer["counters"]["dead_peer_detections"] == 0
    duplicates = [len(sites.log_events(gw, "deleting duplicate IKE SA")) for gw in sites.started]
    stale = [len(sites.log_events(gw, "replacing stale IKE SA")) for gw in sites.started]
    assert stale == [0, 0]  # a concurrent IKE SA is never taken for a stale one
    for gw in (sites.gwa, sites.gwb):
        assert gw.stop() == 0, gw.tail_log()
    sites.started.clear()
    return {
        "run": run,
        "established_after": round(up, 3),
        "first_probe_after_that": round(first_probe, 3),
        "lost": [report["forward"]["lost"], report["reverse"]["lost"]],
        "duplicates_deleted": duplicates,
        "ike_sas_established": [
            a["counters"]["ike_sas_established"],
            b["counters"]["ike_sas_established"],
        ],
        "longest_deleting": round(watch.longest(), 3),
        "seconds": round(time.monotonic() - t0, 1),
    }


@pytest.mark.parametrize(
    "runs", [RUNS, pytest.param(SOAK_RUNS, marks=pytest.mark.soak)], ids=lambda n: f"{n}-runs"
)
def test_both_gateways_starting_together_lose_no_probe(
    make_sites: Callable[[SiteOptions], Sites], runs: int
) -> None:
    results = []
    for run in range(runs):
        results.append(one_run(make_sites, run))
        measured("simultaneous start", **results[-1])
    measured(
        "simultaneous start, all runs",
        runs=len(results),
        lost=sum(sum(r["lost"]) for r in results),
        with_duplicates=sum(1 for r in results if any(r["duplicates_deleted"])),
        seconds=round(sum(r["seconds"] for r in results), 1),
    )
