"""Two Child SAs in the namespace lab: extra host addresses and probes through each.

The lab's site hosts hold .10 (the lower /25 of each site, child "low" of
tools.lab.TWO_CHILDREN); :func:`add_upper_hosts` gives them .200 as well
(child "high"), and gw-b's LAN .129 (charon's kernel-libipsec needs a local
address inside a child's local selectors, docs/interop.md). :func:`probe_both`
runs tests/tools/probe.py through both children at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.lab import Lab

PROBE = Path(__file__).resolve().parents[1] / "tools" / "probe.py"
# child name -> (site A host, site B host)
HOSTS = {"low": ("198.51.100.10", "203.0.113.10"), "high": ("198.51.100.200", "203.0.113.200")}
PORTS = {"low": 9001, "high": 9002}


def add_upper_hosts(lab: Lab) -> None:
    """The .200 host addresses in both sites (and .129 on gw-b's LAN side)."""
    lab.run("a", "ip", "addr", "add", "198.51.100.200/24", "dev", f"{lab.prefix}-a0")
    lab.run("b", "ip", "addr", "add", "203.0.113.200/24", "dev", f"{lab.prefix}-b0")
    lab.run("gwb", "ip", "addr", "add", "203.0.113.129/24", "dev", f"{lab.prefix}-gb1")


def probe_both(lab: Lab, count: int, rate: float, sizes: str = "64,1372") -> dict[str, Any]:
    """``count`` probes A -> B -> A through each child at once; the sender reports by child."""
    echoes: dict[str, subprocess.Popen[Any]] = {}
    senders: dict[str, subprocess.Popen[Any]] = {}
    timeout = count / rate + 30
    try:
        for name, (_, host_b) in HOSTS.items():
            echoes[name] = lab.popen(
                "b", sys.executable, str(PROBE), "echo", "--bind", host_b,
                "--port", str(PORTS[name]), "--idle", "3", "--timeout", str(timeout + 30),
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            out = echoes[name].stdout
            assert out is not None and out.readline().strip() == "READY"
        for name, (host_a, host_b) in HOSTS.items():
            senders[name] = lab.popen(
                "a", sys.executable, str(PROBE), "send", "--to", host_b, "--bind", host_a,
                "--port", str(PORTS[name]), "--count", str(count), "--rate", str(rate),
                "--sizes", sizes, "--window", "500",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        reports = {}
        for name, sender in senders.items():
            out, err = sender.communicate(timeout=timeout)
            assert sender.returncode == 0, err
            reports[name] = json.loads(out)
        return reports
    finally:
        for proc in (*senders.values(), *echoes.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
