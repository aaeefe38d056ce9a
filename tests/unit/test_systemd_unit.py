"""The shipped unit, contrib/systemd/tunneld@.service, as systemd reads it.

``systemd-analyze verify`` loads the unit into an offline root (this
container has no running systemd): the root holds the unit, the system's own
units (``sysinit.target`` and the other dependencies every service has) and
an executable at the unit's ``ExecStart`` path, as ``pip install`` makes it.
verify exits 0 even for an unknown key or an unparsable value (it warns and
ignores them), so its output must also be empty. ``systemd-analyze security``
rates the sandboxing offline. tests/netns/test_systemd_netns.py runs the
daemon the way the unit starts it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "tunneld@.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def offline_root(tmp_path: Path, unit_text: str) -> Path:
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    for exec_line in directives(unit_text)["ExecStart"] + directives(unit_text)["ExecStartPre"]:
        binary = root / exec_line.split()[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "tunneld@gw-a.service"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    out = verify(offline_root(tmp_path, UNIT.read_text()))
    assert out.returncode == 0 and out.stdout + out.stderr == "", out


def test_verify_catches_what_it_is_here_to_catch(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Type=notify\n", "Type=notifyx\nBogusKey=1\n")
    out = verify(offline_root(tmp_path, broken))
    assert "notifyx" in out.stderr and "BogusKey" in out.stderr, out


def test_the_unit_says_what_the_daemon_needs() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["User"] == ["tunneld"]
    assert d["ExecReload"] == ["/usr/local/bin/tunneld reload -c /etc/tunneld/%i.toml"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    assert d["DeviceAllow"] == ["/dev/net/tun rw"] and d["RuntimeDirectory"] == ["tunneld"]
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert "ProtectKernelTunables" not in d  # disable_ipv6 on the TUN device is a sysctl


def test_the_sandbox_rates_ok(tmp_path: Path) -> None:
    root = offline_root(tmp_path, UNIT.read_text())
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--threshold=30",
         "--no-pager", "tunneld@gw-a.service"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "Overall exposure level for tunneld@gw-a.service: 2." in out.stdout, out.stdout[-500:]
