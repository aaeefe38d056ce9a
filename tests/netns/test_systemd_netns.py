"""A real ``tunneld run`` started as the shipped systemd unit starts it (issue 11).

The unit (contrib/systemd/tunneld@.service) is ``Type=notify`` and grants only
CAP_NET_ADMIN and CAP_NET_BIND_SERVICE. Here the test plays systemd: it binds
the notify socket (``NOTIFY_SOCKET``, a path: an abstract name would not cross
into the daemon's network namespace), makes the runtime directory, and starts
the daemon in a namespace of its own (``op…``) with ``setpriv`` limiting its
capability bounding set to those two and setting no_new_privs. (The uid stays 0:
the test's interpreter may live under /root, which another user cannot read;
the capabilities are what the unit's ``User=`` plus ``AmbientCapabilities=``
leave, and are checked in /proc.)

READY=1 must come when the TUN device exists and UDP 500/4500 and the control
socket answer; STOPPING=1 when SIGTERM arrives, before the process exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.lab import unique_prefix, write_psk
from tunneld import control
from tunneld.hardening import CAP_NET_ADMIN

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]

CAP_NET_BIND_SERVICE = 10
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[gateway]
name = "gw-a"
listen = ["192.0.2.1"]
tun = "tunop0"
control_socket = "{socket}"

[identity]
id = "192.0.2.1"

[[peer]]
name = "gw-b"
address = "192.0.2.2"
id = "192.0.2.2"
auto = "listen"
auth = "psk"
psk_file = "{psk}"
local_subnets = ["198.51.100.0/24"]
remote_subnets = ["203.0.113.0/24"]
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique_prefix("opsd")
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["addr", "add", "192.0.2.1/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def listening_udp(ns: str) -> set[int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hunl"], capture_output=True, text=True, timeout=30
    ).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines() if line.strip()}


def cap_eff(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def test_ready_once_tun_and_sockets_are_up_then_stopping(netns: str, tmp_path: Path) -> None:
    rundir = tmp_path / "run"  # what RuntimeDirectory= makes: 0700, the service's own
    rundir.mkdir(mode=0o700)
    sock = rundir / "gw-a.sock"
    conf = tmp_path / "gw-a.toml"
    conf.write_text(CONFIG.format(socket=sock, psk=write_psk(tmp_path)))
    notify_path = tmp_path / "notify"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(notify_path))
    manager.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(ROOT)}
    caps = "-all,+net_admin,+net_bind_service"
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", netns,
         "setpriv", "--no-new-privs", f"--bounding-set={caps}", f"--inh-caps={caps}",
         "--ambient-caps=-all,+net_admin,+net_bind_service",
         sys.executable, "-m", "tunneld.cli", "run", "-c", str(conf)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = manager.recv(4096).decode()
        # At READY=1: the TUN device is there, UDP 500 and 4500 are bound, status answers.
        link = subprocess.run(
            ["ip", "-n", netns, "link", "show", "tunop0"], capture_output=True, timeout=30
        )
        assert ready.startswith("READY=1\n") and "STATUS=running, 1 peers" in ready, ready
        assert link.returncode == 0, link
        assert {500, 4500} <= listening_udp(netns)
        st = control.request(str(sock), {"cmd": "status"})
        assert st["ok"] and st["gateway"] == "gw-a"
        # Only what the unit grants (`ip netns exec` and setpriv exec the daemon: same pid).
        assert cap_eff(daemon.pid) == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE)

        daemon.send_signal(signal.SIGTERM)
        assert manager.recv(4096) == b"STOPPING=1"
        _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err
    finally:
        manager.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
