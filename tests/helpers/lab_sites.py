"""Two real ``tunneld run`` daemons in the namespace lab, for the tests in tests/netns/.

:func:`open_sites` (the ``make_sites`` fixture) hands out :class:`Sites` in a
lab (the ``lab`` fixture): the two gateways of one configuration, plus what
the tests look at from outside the daemons: routes and links in the gateway
namespaces (``ip``), ``tunneld status --json`` run as a subprocess, the JSON
log lines, ping and UDP probes between the site hosts. The gateways are
killed on exit, also on failure, and their logs printed then (pytest shows
them on failure); the ``lab`` fixture then removes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.lab import (
    GWB_UNDERLAY,
    HOST_B,
    SITE_A,
    SITE_B,
    Gateway,
    Lab,
    SiteOptions,
    gateways,
    write_site_configs,
)
from tunneld import pki

PROBE = Path(__file__).resolve().parents[1] / "tools" / "probe.py"  # run as a plain script
TUN = "tunneld0"  # the name write_site_configs gives both TUN devices
PROBE_PORT = 9000
REMOTE_SITE = {"gwa": SITE_B, "gwb": SITE_A}


@dataclass
class Sites:
    """The two gateways of one lab configuration (gw-a initiates unless told otherwise)."""

    lab: Lab
    work: Path
    conf_a: Path
    conf_b: Path
    gwa: Gateway
    gwb: Gateway
    opts: SiteOptions
    started: list[Gateway] = field(default_factory=list)

    # -- the daemons -----------------------------------------------------------

    def start(self) -> None:
        """The listening side first, so the initiator's first IKE_SA_INIT finds it."""
        order = (self.gwa, self.gwb) if self.opts.auto_a == "listen" else (self.gwb, self.gwa)
        for gw in order:
            gw.start()
            self.started.append(gw)
            gw.wait_ready()

    def wait_established(self, timeout: float = 15.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Both Child SAs (gw-a's, gw-b's) once each gateway has one installed."""
        return self.gwa.wait_for_child(timeout), self.gwb.wait_for_child(timeout)

    def status_cli(self, *gws: Gateway) -> list[dict[str, Any]]:
        """``tunneld status --json -s SOCKET`` of each gateway (default: gw-a, gw-b): the
        real command line, one subprocess per gateway, all at once."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tunneld.cli", "status", "--json", "-s", str(gw.socket)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for gw in gws or (self.gwa, self.gwb)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"tunneld status failed: {err}"
            results.append(json.loads(out))
        return results

    def peer_status(self, gw: Gateway) -> dict[str, Any]:
        (peer,) = gw.status()["peers"]
        result: dict[str, Any] = peer
        return result

    def log_events(self, gw: Gateway, msg: str) -> list[dict[str, Any]]:
        """The JSON log records of ``gw`` whose message is ``msg``."""
        records = []
        for line in gw.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("msg") == msg:
                    records.append(record)
        return records

    # -- the namespaces, seen from outside the daemons ------------------------------

    def tun_routes(self, node: str) -> list[str]:
        """``ip route`` lines in a gateway namespace that lead into the TUN device."""
        out = self.lab.run(node, "ip", "-4", "route", "show")
        return [line for line in out.stdout.splitlines() if f"dev {TUN}" in line]

    def routes_to_remote_site(self, node: str) -> list[str]:
        """Any route for the other site's subnet (there is none but the tunnel's)."""
        out = self.lab.run(node, "ip", "-4", "route", "show", REMOTE_SITE[node])
        return out.stdout.splitlines()

    def tun_exists(self, node: str) -> bool:
        return self.lab.run(node, "ip", "link", "show", TUN, check=False).returncode == 0

    def ping(self, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.lab.run(
            "a", "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", HOST_B, check=False
        )

    def probe(
        self, count: int, rate: float = 5000.0, sizes: str = "64", window: int = 500
    ) -> dict[str, Any]:
        """``count`` probes site A -> site B -> site A: the sender's report (tests/tools/probe.py;
        ``forward`` is what the echo saw, ``reverse`` what came back)."""
        with self.probing(count, rate, sizes, window) as run:
            return run.result(timeout=count / rate + 30)

    @contextlib.contextmanager
    def probing(
        self, count: int, rate: float, sizes: str = "64", window: int = 500, idle: float = 3.0
    ) -> Iterator[ProbeRun]:
        """Probes running in the background while the test does other things; the echo
        gives up after ``idle`` seconds without a probe (make it outlast an outage)."""
        echo = self.lab.popen(
            "b", sys.executable, str(PROBE), "echo", "--bind", HOST_B, "--port", str(PROBE_PORT),
            "--idle", str(idle), "--timeout", str(count / rate + idle + 60),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        sender: subprocess.Popen[Any] | None = None
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
            sender = self.lab.popen(
                "a", sys.executable, str(PROBE), "send", "--to", HOST_B,
                "--port", str(PROBE_PORT), "--count", str(count), "--rate", str(rate),
                "--sizes", sizes, "--window", str(window),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            yield ProbeRun(sender, echo)
        finally:
            for proc in (sender, echo):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()


@dataclass
class ProbeRun:
    """A probe sender (site A) and its echo (site B) running in the background."""

    sender: subprocess.Popen[Any]
    echo: subprocess.Popen[Any]

    def result(self, timeout: float) -> dict[str, Any]:
        """The sender's report once it is done."""
        out, err = self.sender.communicate(timeout=timeout)
        assert self.sender.returncode == 0, err
        report: dict[str, Any] = json.loads(out)
        return report


def assert_probes_clean(report: dict[str, Any], count: int) -> None:
    """Every probe crossed each way exactly once, intact."""
    assert report["forward"] is not None, f"the echo never reported: {report}"
    for direction in ("forward", "reverse"):
        tally = report[direction]
        counts = [tally[k] for k in ("unique", "lost", "duplicated", "corrupt")]
        assert counts == [count, 0, 0, 0], (direction, report)


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def use_untrusted_certificate(sites: Sites, ca_name: str) -> None:
    """gw-b gets a certificate (same identities) from a CA that gw-a does not trust.

    gw-b itself trusts both CAs, so that only gw-a has a reason to refuse.
    """
    rogue = sites.work / "rogue"
    ca = pki.init_ca(rogue / "ca", ca_name)
    leaf = pki.issue(rogue / "ca", "gw-b", rogue, dns=["gw-b.example.org"], ips=[GWB_UNDERLAY])
    text = sites.conf_b.read_text()
    real_ca = sites.work / "pki" / "ca" / "ca.pem"
    old_lines = [
        f'certificate = "{sites.work / "pki" / "gw-b.pem"}"',
        f'private_key = "{sites.work / "pki" / "gw-b.key"}"',
        f'ca = ["{real_ca}"]',
    ]
    new_lines = [
        f'certificate = "{leaf.certificate}"',
        f'private_key = "{leaf.key}"',
        f'ca = ["{ca.certificate}", "{real_ca}"]',
    ]
    for old, new in zip(old_lines, new_lines, strict=True):
        assert old in text, f"{old!r} not in {sites.conf_b}"
        text = text.replace(old, new)
    sites.conf_b.write_text(text)


@contextlib.contextmanager
def open_sites(lab: Lab, work: Path) -> Iterator[Callable[[SiteOptions], Sites]]:
    """A factory that writes configurations for two gateways in ``lab`` (not started
    yet); every gateway started is killed on the way out."""
    made: list[Sites] = []

    def make(opts: SiteOptions) -> Sites:
        directory = work / f"sites{len(made)}"
        conf_a, conf_b = write_site_configs(directory, lab.prefix, opts)
        gwa, gwb = gateways(lab, directory, conf_a, conf_b)
        made.append(Sites(lab, directory, conf_a, conf_b, gwa, gwb, opts))
        return made[-1]

    try:
        yield make
    finally:
        for sites in made:
            for gw in sites.started:
                gw.kill()
                print(f"--- {gw.node} log ({gw.log}):\n{gw.tail_log(60)}")
