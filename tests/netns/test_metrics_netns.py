"""A real Prometheus server scrapes a real tunneld gateway (issue #11, "Metrics").

gw-a runs with ``[metrics] listen = "192.0.2.1:9108"`` in the namespace lab
(prefix ``mx…``); Prometheus (the Debian package's binary, its own process in
gw-b's namespace, a temporary configuration and data directory, a 1 s scrape
interval) scrapes it across the underlay while the tunnel is up. Its HTTP
query API must then return the tunneld series for the peer: one established
IKE SA and one Child SA, and the packets the test sent through the tunnel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_sites import Sites, poll
from tests.helpers.sitelab import Lab
from tools.lab import GWA_UNDERLAY, SiteOptions

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
METRICS_PORT = 9108
API = "127.0.0.1:9090"  # Prometheus's own HTTP API, inside gw-b's namespace
# Prometheus's HTTP API asked from inside the namespace (the test runs outside it),
# by one process for the whole test: a URL per line in, one JSON answer per line out
FETCH = """
import json, sys, urllib.request
for url in sys.stdin:
    try:
        answer = json.loads(urllib.request.urlopen(url.strip(), timeout=5).read())
    except (OSError, ValueError) as exc:
        answer = {"status": "unreachable", "error": str(exc)}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture
def lab_stem() -> str:
    return "mx"


class Api:
    """Prometheus's HTTP API, asked from inside gw-b's namespace (FETCH)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def get(self, *paths: str) -> list[dict[str, Any]]:
        """GET each path; the decoded answers."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        answers = []
        for path in paths:
            self.proc.stdin.write(f"http://{API}{path}\n")
            self.proc.stdin.flush()
            answers.append(json.loads(self.proc.stdout.readline()))
        return answers

    def queries(self, *promql: str) -> list[list[dict[str, Any]]]:
        """The vector each instant query returns (empty while Prometheus has nothing yet)."""
        paths = [f"/api/v1/query?{urllib.parse.urlencode({'query': q})}" for q in promql]
        answers = self.get(*paths)
        return [a["data"]["result"] if a.get("status") == "success" else [] for a in answers]

    def values(self, *promql: str) -> list[float | None]:
        """Each query's one value (None unless exactly one series answered)."""
        results = self.queries(*promql)
        return [float(r[0]["value"][1]) if len(r) == 1 else None for r in results]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Lab], Api]]:
    """``start(lab)``: Prometheus in gw-b's namespace scraping gw-a, and its API;
    both processes killed afterwards."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("Prometheus is not installed (netns-scripts/install-deps.sh installs it)")
    procs: list[subprocess.Popen[Any]] = []

    def start(lab: Lab) -> Api:
        directory = tmp_path / "prometheus"
        (directory / "data").mkdir(parents=True)
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: tunneld\n    static_configs:\n"
            f'      - targets: ["{GWA_UNDERLAY}:{METRICS_PORT}"]\n'
        )
        log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - the child's
        procs.append(
            lab.popen(
                "gwb",
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={API}",
                "--log.level=warn",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        fetch = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("gwb"), sys.executable, "-c", FETCH],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(fetch)
        return Api(fetch)

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        log_file = tmp_path / "prometheus" / "prometheus.log"
        if log_file.exists():
            print(f"--- prometheus log:\n{log_file.read_text(errors='replace')[-3000:]}")


def test_prometheus_scrapes_the_sa_counts_and_traffic_of_the_peer(
    make_sites: Callable[[SiteOptions], Sites], prometheus: Callable[[Lab], Api]
) -> None:
    sites = make_sites(SiteOptions(log_format="json"))
    with sites.conf_a.open("a") as conf:
        conf.write(f'\n[metrics]\nlisten = "{GWA_UNDERLAY}:{METRICS_PORT}"\n')
    api = prometheus(sites.lab)  # starting while the gateways do (it retries each second)
    sites.start()
    sites.wait_established()
    assert sites.ping(5).returncode == 0

    # The SA counts of the peer, as Prometheus stored them from its scrapes of gw-a,
    # once a scrape came after the pings (and after an earlier scrape: each one
    # counts the requests answered before it).
    ike_sas = 'tunneld_peer_ike_sas{job="tunneld", peer="gw-b"}'
    pinged = 'tunneld_peer_packets_total{peer="gw-b", direction="out"} >= bool 5'
    ok = 'tunneld_metrics_requests_total{result="ok"} > bool 0'
    assert poll(lambda: api.values(ike_sas, pinged, ok) == [1, 1, 1], timeout=20, interval=0.2), (
        api.queries(ike_sas, pinged, ok)
    )
    ((series,),) = api.queries(ike_sas)
    assert series["metric"]["instance"] == f"{GWA_UNDERLAY}:{METRICS_PORT}"
    child_sas, established, handshakes, received, not_ok = api.values(
        'tunneld_peer_child_sas{peer="gw-b"}',
        'tunneld_peer_state{peer="gw-b", state="established"}',
        'tunneld_peer_handshake_duration_seconds_count{peer="gw-b"}',
        'tunneld_peer_packets_total{peer="gw-b", direction="in"}',  # the 5 replies
        'sum(tunneld_metrics_requests_total{result!="ok"})',
    )
    assert (child_sas, established, handshakes) == (1, 1, 1)
    assert received is not None and received >= 5, received
    assert not_ok == 0, api.queries('tunneld_metrics_requests_total{result!="ok"}')

    # The target is healthy: every scrape parsed, none timed out.
    ((target,),) = (a["data"]["activeTargets"] for a in api.get("/api/v1/targets"))
    assert target["health"] == "up" and target["lastError"] == "", target
    (listening,) = sites.log_events(sites.gwa, "metrics endpoint listening")
    assert listening["listen"] == f"{GWA_UNDERLAY}:{METRICS_PORT}"
