"""Process hardening of a real ``tunneld run`` (issue #9, "Hostile networks").

gw-a runs with ``[gateway] user = "nobody"`` in the namespace lab (prefix
``hf…``): once its devices and control socket are open it is nobody with
only CAP_NET_ADMIN, it cannot dump core and is not dumpable, and the tunnel
still comes up: routes are added, removed (``tunneld down``), added again and
removed at exit, all after the drop. Its control socket lives in a directory
the daemon made for nobody and is removed at exit. A second ``tunneld run``
of the same configuration refuses to start and leaves the first one alone.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.lab_sites import Sites, poll
from tools.lab import SiteOptions
from tunneld.hardening import CAP_NET_ADMIN

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and TUN"),
]


@pytest.fixture
def lab_stem() -> str:
    return "hf"


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def core_limit(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError("no core limit in /proc/PID/limits")


def run_as_nobody(sites: Sites) -> Path:
    """gw-a's configuration: user = "nobody", its control socket in a directory not made
    yet (the daemon makes it for nobody); the socket path of gw-a."""
    socket = sites.work / "ctl-a" / "gw-a.sock"
    text = sites.conf_a.read_text()
    old = f'control_socket = "{sites.gwa.socket}"'
    assert old in text
    sites.conf_a.write_text(text.replace(old, f'control_socket = "{socket}"\nuser = "nobody"'))
    sites.gwa.socket = socket
    return socket


def test_a_daemon_run_as_nobody_keeps_only_cap_net_admin_and_still_routes(
    make_sites: Callable[[SiteOptions], Sites],
) -> None:
    nobody = pwd.getpwnam("nobody")
    sites = make_sites(SiteOptions(log_format="json"))
    socket = run_as_nobody(sites)
    sites.start()
    sites.wait_established()
    assert sites.gwa.proc is not None
    pid = sites.gwa.proc.pid
    assert "tunneld.cli" in Path(f"/proc/{pid}/cmdline").read_text()  # ip netns exec execs

    status = proc_status(pid)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4, status["Gid"]
    assert status["Groups"] == ""
    assert int(status["CapEff"], 16) == 1 << CAP_NET_ADMIN, status["CapEff"]
    assert int(status["CapPrm"], 16) == 1 << CAP_NET_ADMIN, status["CapPrm"]
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert core_limit(pid) == ["0", "0"]
    # Not dumpable: the kernel makes the files in /proc/PID root's, so nobody (the daemon's
    # own account) cannot read its environment or memory, nor ptrace it.
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0
    assert os.stat(f"/proc/{pid}/mem").st_uid == 0
    environ = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         "cat", f"/proc/{pid}/environ"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert environ.returncode != 0 and "Permission denied" in environ.stderr, environ
    assert sites.log_events(sites.gwa, "privileges dropped")[0]["user"] == "nobody"

    # The control socket: in a directory made for nobody; the socket root's, 0600.
    directory = socket.parent.stat()
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (nobody.pw_uid, 0o700)
    assert stat.S_IMODE(socket.lstat().st_mode) == 0o600

    # Routes came after the drop; and go and come back with CAP_NET_ADMIN alone.
    assert [r.split()[0] for r in sites.tun_routes("gwa")] == ["203.0.113.0/24"]
    assert sites.ping(2).returncode == 0
    down = sites.gwa.cli("down", "gw-b", "-s", str(socket))
    assert down.returncode == 0, down.stderr
    assert poll(lambda: sites.tun_routes("gwa") == [], timeout=5), sites.tun_routes("gwa")
    assert sites.gwa.cli("up", "gw-b", "-s", str(socket)).returncode == 0
    sites.gwa.wait_for_child()
    assert poll(lambda: len(sites.tun_routes("gwa")) == 1, timeout=5)
    assert sites.ping(2).returncode == 0

    # A second daemon with this name refuses to start and leaves the first alone.
    second = subprocess.run(
        ["ip", "netns", "exec", sites.lab.ns("gwa"), sys.executable, "-m", "tunneld.cli",
         "run", "-c", str(sites.conf_a)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1, second
    assert (
        f"control socket {socket} answers: another tunneld is running with this name"
        in second.stderr
    ), second.stderr
    assert sites.gwa.status()["ok"] and sites.tun_exists("gwa")

    # Exit: routes and TUN gone, the socket removed by nobody, the directory kept.
    assert sites.gwa.stop(timeout=10) == 0, sites.gwa.tail_log()
    assert sites.routes_to_remote_site("gwa") == [] and not sites.tun_exists("gwa")
    assert not socket.exists() and socket.parent.is_dir()
    assert not sites.log_events(sites.gwa, "cannot remove the control socket")

    # And it starts again with the directory it made last time.
    sites.started.remove(sites.gwa)
    sites.gwa.start()
    sites.started.append(sites.gwa)
    sites.gwa.wait_ready()
    sites.wait_established()
    assert sites.gwa.stop(timeout=10) == 0, sites.gwa.tail_log()
    assert not socket.exists()
