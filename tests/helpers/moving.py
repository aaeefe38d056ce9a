"""Peers that move, in the namespace lab (tests/netns/test_move_netns.py).

gw-a plays a spoke behind a NAT that runs in its own namespace: nftables
rules on its way out to the WAN (``table ip mvnat``) translate the source of
what tunneld sends from 192.0.2.1. The NAT *rebinds* when the rule names a
new outside port and the conntrack table is flushed (pyroute2's netlink
conntrack client; the ``conntrack`` tool is not installed); the spoke *roams*
when the rule names a new outside address (192.0.2.5, which gw-a also
answers ARP for) and the old address stops receiving (a drop in the raw
prerouting hook, before conntrack could translate anything back). Each
change is one nft transaction, so no packet leaves untranslated in between.

DNS names: ``ip netns exec NS`` bind-mounts every file of ``/etc/netns/NS/``
over its namesake in ``/etc`` (iproute2's convention, in a mount namespace
of the command's own), so :func:`hosts_file` gives a gateway namespace an
``/etc/hosts`` of its own without touching the machine's; it is removed
again on the way out.

The probes (tests/tools/probe.py) run A -> B -> A, so an echo that comes
back proves both directions; ``--gap`` makes the sender report every silence
longer than that as an outage ``[from, to]`` (seconds since it started).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers.lab_sites import PROBE, PROBE_PORT, ProbeRun
from tools.lab import GWA_UNDERLAY, GWB_UNDERLAY, HOST_B, Lab

ROAMED = "192.0.2.5"  # gw-a's outside address after roaming
TABLE = "mvnat"
NETNS_ETC = Path("/etc/netns")


@contextlib.contextmanager
def hosts_file(lab: Lab, node: str, entries: dict[str, str]) -> Iterator[Path]:
    """``/etc/hosts`` inside ``lab``'s namespace ``node`` (name -> address), see above."""
    created = not NETNS_ETC.exists()
    directory = NETNS_ETC / lab.ns(node)
    directory.mkdir(parents=True, exist_ok=False)
    try:
        hosts = directory / "hosts"
        lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in entries.items()]
        hosts.write_text("\n".join(lines) + "\n")
        yield hosts
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # another lab may use it meanwhile
                NETNS_ETC.rmdir()


def nft(lab: Lab, node: str, script: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns(node), "nft", "-f", "-"],
        input=script, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, f"nft failed: {proc.stderr}\n{script}"


def flush_conntrack(lab: Lab, node: str) -> None:
    code = "from pyroute2 import Conntrack\nwith Conntrack() as ct:\n    ct.flush()\n"
    lab.run(node, sys.executable, "-c", code, timeout=30)


def nat_rules(snat: str, drop_old: bool = False) -> str:
    """The whole NAT table of gw-a, replaced in one transaction."""
    raw = (
        f"ip saddr {GWB_UNDERLAY} ip daddr {GWA_UNDERLAY} udp dport {{ 500, 4500 }} drop"
        if drop_old
        else ""
    )
    return (
        f"table ip {TABLE}\ndelete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain post {{ type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {GWA_UNDERLAY} ip daddr {GWB_UNDERLAY} {snat}\n  }}\n"
        f"  chain pre {{ type filter hook prerouting priority raw; policy accept;\n"
        f"    {raw}\n  }}\n"
        f"}}\n"
    )


def behind_nat(lab: Lab, port: int) -> None:
    """gw-a's NAT-T traffic leaves from outside port ``port`` (IKE_SA_INIT on 500 as is)."""
    nft(lab, "gwa", nat_rules(f"udp sport 4500 snat to {GWA_UNDERLAY}:{port}"))


def rebind(lab: Lab, port: int) -> None:
    """The NAT forgets its mappings and uses outside port ``port`` from now on."""
    behind_nat(lab, port)
    flush_conntrack(lab, "gwa")


def prepare_roaming(lab: Lab) -> None:
    lab.run("gwa", "ip", "addr", "add", f"{ROAMED}/24", "dev", f"{lab.prefix}-ga0")
    nft(lab, "gwa", nat_rules("accept"))


def roam(lab: Lab) -> None:
    """gw-a's outside address becomes :data:`ROAMED`; the old one receives nothing."""
    nft(lab, "gwa", nat_rules(f"snat to {ROAMED}", drop_old=True))
    flush_conntrack(lab, "gwa")


@contextlib.contextmanager
def probing(lab: Lab, count: int, rate: float, gap: float) -> Iterator[ProbeRun]:
    """1/rate-spaced probes site A -> site B -> site A, outages above ``gap`` reported."""
    echo = lab.popen(
        "b", sys.executable, str(PROBE), "echo", "--bind", HOST_B, "--port", str(PROBE_PORT),
        "--idle", "10", "--timeout", str(count / rate + 70), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    sender: subprocess.Popen[Any] | None = None
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        sender = lab.popen(
            "a", sys.executable, str(PROBE), "send", "--to", HOST_B, "--port", str(PROBE_PORT),
            "--count", str(count), "--rate", str(rate), "--gap", str(gap), "--stall", "0.2",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        yield ProbeRun(sender, echo)
    finally:
        for proc in (sender, echo):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def log_time(record: dict[str, Any]) -> float:
    """The wall-clock time of a JSON log record (``ts``, millisecond precision)."""
    stamp = datetime.datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def resumption(report: dict[str, Any], moved_at: float, since: float) -> tuple[float, float]:
    """(how long after ``moved_at`` the echoes came back, the longest outage since ``since``),
    from the sender's outages (wall clock); an outage beginning after the move is a new one."""
    start = float(report["started_at"])
    outages = [(start + begin, start + end) for begin, end in report["gaps"]]
    resumed = max([end for begin, end in outages if begin <= moved_at <= end], default=moved_at)
    longest = max([end - begin for begin, end in outages if end >= since], default=0.0)
    return resumed - moved_at, longest


def figures(path: Any, **values: Any) -> None:
    """Print a MEASURED line and keep the figures next to the test's files."""
    print("MEASURED", json.dumps(values, sort_keys=True))
    path.write_text(json.dumps(values, indent=1, sort_keys=True))
