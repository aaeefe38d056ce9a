"""What a process imports, checked in a fresh interpreter (docs/performance.md, "Start-up").

- The control verbs (status, up, down, rekey, reload) run on the standard library
  and :mod:`tunneld.client`: no trio, cryptography, pyroute2 or IKE, so that
  ``tunneld status`` starts fast. Checked against a stand-in daemon answering on
  a Unix socket, through ``-c FILE`` and ``-s SOCKET``.
- The daemon never imports scapy (a test tool) nor pyroute2 (routes go through
  :mod:`tunneld.rtnetlink`), and prometheus_client only with ``[metrics]``: two
  daemons without it carry a packet over in-memory devices. :mod:`tunneld.pki`
  (0.4 MB) is imported by ``tunneld pki`` only, not by ``run`` or ``check``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMON_WORLD = ("trio", "cryptography", "pyroute2", "ike", "scapy", "pytun", "attr")
DAEMON_MODULES = ("tunneld.config", "tunneld.control", "tunneld.daemon", "tunneld.pki")

STATUS = {
    "ok": True,
    "gateway": "gw-x",
    "tun": "tunneld0",
    "uptime": 12.0,
    "peers": [],
    "dataplane": {"drops": {}},
}

_CLIENT = """
import json, sys
from tunneld import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A Unix socket answering each request line like the daemon would."""
    path = tmp_path / "ctl.sock"
    seen: list[dict[str, Any]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rwb") as f:
                request = json.loads(f.readline())
                seen.append(request)
                answer = STATUS if request["cmd"] == "status" else {"ok": True}
                f.write(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield path, seen
    finally:
        stop.set()
        thread.join()
        server.close()


def _run_cli(*args: str) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _CLIENT, *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def _daemon_world(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in DAEMON_WORLD or m.startswith(DAEMON_MODULES)]


def test_status_through_the_configuration_file(
    fake_daemon: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    path, seen = fake_daemon
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nname = "gw-x"\ncontrol_socket = "{path.name}"\n')
    result, out = _run_cli("status", "-c", str(conf))
    assert result["code"] == 0
    assert out.startswith("gateway gw-x (tun tunneld0, up 12s)")
    assert seen == [{"cmd": "status"}]
    assert _daemon_world(result["modules"]) == []


def test_rekey_through_the_socket(fake_daemon: tuple[Path, list[dict[str, Any]]]) -> None:
    path, seen = fake_daemon
    result, out = _run_cli("rekey", "gw-y", "--ike", "-s", str(path))
    assert result["code"] == 0 and out == "rekey IKE SA of gw-y: started"
    assert seen == [{"cmd": "rekey", "peer": "gw-y", "ike": True}]
    assert _daemon_world(result["modules"]) == []


def test_a_configuration_it_cannot_read_gets_the_full_loaders_error(tmp_path: Path) -> None:
    conf = tmp_path / "broken.toml"
    conf.write_text("[gateway\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "status", "-c", str(conf)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "invalid TOML" in proc.stderr


_DAEMON = """
import json, socket, struct, sys, trio
from pathlib import Path
from tools.lab import SiteOptions, write_site_configs
from tunneld.config import load_config
from tunneld.daemon import Daemon, MemoryDevices
from tunneld.io.udp import MemoryNetwork

PAYLOAD = b"through the tunnel"
PACKET = struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 20 + len(PAYLOAD), 0, 0, 64, 17, 0,
    socket.inet_aton("198.51.100.10"), socket.inet_aton("203.0.113.10"),
) + PAYLOAD

async def main():
    conf_a, conf_b = write_site_configs(Path(sys.argv[1]), "lt", SiteOptions(auth="psk"))
    net = MemoryNetwork()
    daemons = [Daemon(load_config(c), devices=MemoryDevices(net)) for c in (conf_b, conf_a)]
    async with trio.open_nursery() as nursery:
        for d in daemons:
            await nursery.start(d.run)
        with trio.fail_after(20):
            while not all(p.snapshot(0)["child_sas"] for d in daemons for p in d.peers.values()):
                await trio.sleep(0.01)
            daemons[1].devices.tun.host_send(PACKET)
            got = await daemons[0].devices.tun.host_recv()
        nursery.cancel_scope.cancel()
    print(json.dumps({"delivered": got == PACKET, "modules": sorted(sys.modules)}))

trio.run(main)
"""


def test_the_daemon_imports_no_scapy_pyroute2_numpy_or_unused_metrics(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _DAEMON, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["delivered"]
    roots = {m.split(".")[0] for m in result["modules"]}
    assert "trio" in roots and "tunneld" in roots  # it did run the daemon
    assert "scapy" not in roots
    assert "pyroute2" not in roots
    assert "prometheus_client" not in roots  # no [metrics] table
    assert "numpy" not in roots  # no TCP super-packet yet: TSO's sums import it then


def test_only_the_pki_verb_builds_the_pki_parser() -> None:
    script = (
        "import sys\nfrom tunneld import cli\n"
        "for argv in (['run', '--help'], ['check', '--help'], ['pki', '--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "    print(argv[0], 'tunneld.pki' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.stderr.splitlines() == ["run False", "check False", "pki True"], proc.stderr
    assert "init-ca" in proc.stdout  # `tunneld pki --help` lists its commands
