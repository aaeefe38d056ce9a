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
from tools.lab import GWA_UNDERLAY, SiteOptions

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
METRICS_PORT = 9108
API = "127.0.0.1:9090"  # Prometheus's own HTTP API, inside gw-b's namespace
# Prometheus's HTTP API asked from inside the namespace (the test runs outside it):
# every URL given, one JSON answer per line (one process for several questions)
FETCH = (
    "import sys, urllib.request\n"
    "for url in sys.argv[1:]:\n"
    "    print(urllib.request.urlopen(url, timeout=5).read().decode().replace('\\n', ' '))\n"
)


@pytest.fixture
def lab_stem() -> str:
    return "mx"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Sites], None]]:
    """``start(sites)``: Prometheus in gw-b's namespace scraping gw-a; killed afterwards."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("Prometheus is not installed (netns-scripts/install-deps.sh installs it)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(sites: Sites) -> None:
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
            sites.lab.popen(
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

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            log_file = tmp_path / "prometheus" / "prometheus.log"
            print(f"--- prometheus log:\n{log_file.read_text(errors='replace')[-3000:]}")


def api(sites: Sites, *paths: str) -> list[dict[str, Any]]:
    """GET each path of Prometheus's HTTP API from inside gw-b's namespace; the answers."""
    urls = [f"http://{API}{path}" for path in paths]
    proc = sites.lab.run("gwb", sys.executable, "-c", FETCH, *urls, check=False, timeout=15)
    if proc.returncode != 0:
        return [{"status": "unreachable", "error": proc.stderr[-500:]}] * len(paths)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def queries(sites: Sites, *promql: str) -> list[list[dict[str, Any]]]:
    """The vector each instant query returns (empty while Prometheus has nothing yet)."""
    paths = [f"/api/v1/query?{urllib.parse.urlencode({'query': q})}" for q in promql]
    return [a["data"]["result"] if a.get("status") == "success" else [] for a in api(sites, *paths)]


def values(sites: Sites, *promql: str) -> list[float | None]:
    """Each query's one value (None unless exactly one series answered)."""
    return [float(r[0]["value"][1]) if len(r) == 1 else None for r in queries(sites, *promql)]


def test_prometheus_scrapes_the_sa_counts_and_traffic_of_the_peer(
    make_sites: Callable[[SiteOptions], Sites], prometheus: Callable[[Sites], None]
) -> None:
    sites = make_sites(SiteOptions(log_format="json"))
    with sites.conf_a.open("a") as conf:
        conf.write(f'\n[metrics]\nlisten = "{GWA_UNDERLAY}:{METRICS_PORT}"\n')
    sites.start()
    sites.wait_established()
    assert sites.ping(5).returncode == 0
    prometheus(sites)

    # The SA counts of the peer, as Prometheus stored them from its scrapes of gw-a.
    ike_sas = 'tunneld_peer_ike_sas{job="tunneld", peer="gw-b"}'
    # and the requests the endpoint answered (a scrape counts those before it)
    ok = 'tunneld_metrics_requests_total{result="ok"} > bool 0'
    assert poll(lambda: values(sites, ike_sas, ok) == [1, 1], timeout=20), queries(
        sites, ike_sas, ok
    )
    ((series,),) = queries(sites, ike_sas)
    assert series["metric"]["instance"] == f"{GWA_UNDERLAY}:{METRICS_PORT}"
    child_sas, established, handshakes, sent, not_ok = values(
        sites,
        'tunneld_peer_child_sas{peer="gw-b"}',
        'tunneld_peer_state{peer="gw-b", state="established"}',
        'tunneld_peer_handshake_duration_seconds_count{peer="gw-b"}',
        'tunneld_peer_packets_total{peer="gw-b", direction="out"}',
        'sum(tunneld_metrics_requests_total{result!="ok"})',
    )
    assert (child_sas, established, handshakes) == (1, 1, 1)
    # 5 pings went out through the tunnel (gw-a's own IKE and ESP are not inner packets)
    assert sent is not None and sent >= 5, sent
    assert not_ok == 0, queries(sites, 'tunneld_metrics_requests_total{result!="ok"}')

    # The target is healthy: every scrape parsed, none timed out.
    ((target,),) = (a["data"]["activeTargets"] for a in api(sites, "/api/v1/targets"))
    assert target["health"] == "up" and target["lastError"] == "", target
    (listening,) = sites.log_events(sites.gwa, "metrics endpoint listening")
    assert listening["listen"] == f"{GWA_UNDERLAY}:{METRICS_PORT}"
