"""Two tunneld data planes with static keys, in a lab made by netns-scripts/lab.sh.

A TEST HARNESS, not a product feature: RFC 4106 §10 forbids static
(manually configured) keys with AES-GCM, so the product only takes keys from
IKE. Here every ``up`` draws fresh random keys, salts and SPIs, hands them to
the two gateway processes on stdin (never argv, never a file) and forgets them.

    python -m tests.tools.static_pair up PREFIX [--mtu 1400] [--key-bits 256]
                                      [--batch 64] [--no-gso] [--no-gro] [--no-offload]
                                      [--no-tso] [--no-offload-on gwa|gwb]
    python -m tests.tools.static_pair stats PREFIX gwa|gwb      (JSON counters)
    python -m tests.tools.static_pair down PREFIX [--keep-logs]

Each gateway process (``... gateway``, run by ``up`` inside PREFIX-gwX) opens
TUN ``tnd0``, routes the remote site into it, binds UDP 4500 on its underlay
address and runs :class:`tunneld.datapath.DataPath` over an
:class:`~tunneld.dataplane.sadb.SADatabase` holding one tunnel (one SA each
way). It prints one ``READY`` line, serves its counters on a Unix socket
(``{"cmd": "stats"}``, the control-socket protocol of :mod:`tunneld.control`)
and runs until SIGTERM, then removes its route and closes the TUN.

TUN MTU: 1500 (underlay) - 20 (IPv4) - 8 (UDP) - 8 (SPI, seq) - 8 (IV)
- 16 (ICV) - 2 (pad length, next header) - up to 3 (padding) = 1435 at most;
1400 leaves room for IPv4 options and a round number.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STATE_ROOT = Path("/run/tunneld-static-pair")
TUN_NAME = "tnd0"
DEFAULT_MTU = 1400  # see the module docstring
DEFAULT_BATCH = 64
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

SITES = {  # lab.sh addresses
    "gwa": {"local": "192.0.2.1", "peer": "192.0.2.2", "lan": "198.51.100.0/24"},
    "gwb": {"local": "192.0.2.2", "peer": "192.0.2.1", "lan": "203.0.113.0/24"},
}

log = logging.getLogger("tunneld.static_pair")  # tunneld.*: logged at info (tunneld.log)


# -- up / down / stats (run in the root namespace) ------------------------------


def _state_dir(prefix: str) -> Path:
    return STATE_ROOT / prefix


def _fresh_sas(key_bits: int) -> dict[str, dict[str, Any]]:
    """Random keys/salts (RFC 4106 §4: 4-byte salt) and distinct non-zero SPIs."""
    spis: set[int] = set()
    while len(spis) < 2:
        spi = int.from_bytes(os.urandom(4), "big")
        if spi >= 256:  # 1-255 are reserved by IANA (RFC 4303 §2.1)
            spis.add(spi)
    a_to_b, b_to_a = sorted(spis)
    sas = {}
    for name, spi in (("a_to_b", a_to_b), ("b_to_a", b_to_a)):
        sas[name] = {
            "spi": spi,
            "key": os.urandom(key_bits // 8).hex(),
            "salt": os.urandom(4).hex(),
        }
    return sas


def _gateway_config(
    node: str, sas: dict[str, dict[str, Any]], mtu: int, tuning: dict[str, Any]
) -> dict[str, Any]:
    mine = SITES[node]
    other = SITES["gwb" if node == "gwa" else "gwa"]
    out_sa, in_sa = (
        (sas["a_to_b"], sas["b_to_a"]) if node == "gwa" else (sas["b_to_a"], sas["a_to_b"])
    )
    return {
        "tun": TUN_NAME,
        "mtu": mtu,
        "local": mine["local"],
        "peer": mine["peer"],
        "local_net": mine["lan"],
        "remote_net": other["lan"],
        "outbound": out_sa,
        "inbound": in_sa,
        "tuning": tuning,
    }


def _spawn_gateway(prefix: str, node: str, config: dict[str, Any], state: Path) -> int:
    """Start one gateway in PREFIX-node, feed its config on stdin, wait for READY."""
    argv = ["ip", "netns", "exec", f"{prefix}-{node}", sys.executable, "-m", __spec__.name]
    argv += ["gateway", "--stats-socket", str(state / f"{node}.sock")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    logfile = (state / f"{node}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=logfile,
        cwd=REPO,
        env=env,
        start_new_session=True,  # outlives `up`; `down` (or lab.sh down) stops it
    )
    logfile.close()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    proc.stdout.close()
    if not line.startswith("READY"):
        _stop_pid(proc.pid)
        tail = (state / f"{node}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"gateway {node} did not start:\n{tail}")
    (state / f"{node}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def cmd_up(prefix: str, mtu: int, key_bits: int, tuning: dict[str, Any]) -> int:
    missing = [n for n in SITES if not Path(f"/run/netns/{prefix}-{n}").exists()]
    if missing:
        print(
            f"static_pair: no lab {prefix} (run netns-scripts/lab.sh up {prefix})", file=sys.stderr
        )
        return 1
    cmd_down(prefix, quiet=True)
    state = _state_dir(prefix)
    state.mkdir(parents=True, mode=0o700, exist_ok=True)
    sas = _fresh_sas(key_bits)
    pids = {}
    try:
        for node in SITES:
            mine = dict(tuning, offload=tuning["offload"] and node not in tuning["plain_tun"])
            pids[node] = _spawn_gateway(prefix, node, _gateway_config(node, sas, mtu, mine), state)
    except RuntimeError as exc:
        cmd_down(prefix, quiet=True)
        print(f"static_pair: {exc}", file=sys.stderr)
        return 1
    spis = {k: f"{v['spi']:08x}" for k, v in sas.items()}
    print(f"static_pair: {prefix} up: pids {pids}, SPIs {spis}, {TUN_NAME} mtu {mtu}, {state}")
    return 0


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # pid reuse guard: only ever signal our own gateway processes
    return b"static_pair" in cmdline and b"zombie" not in Path(f"/proc/{pid}/stat").read_bytes()


def _stop_pid(pid: int) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid) or _reaped(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _reaped(pid: int) -> bool:
    """Reap the process if it is our child (the failed-start path); True if it exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def cmd_down(prefix: str, quiet: bool = False, keep_logs: bool = False) -> int:
    state = _state_dir(prefix)
    for node in SITES:
        pidfile = state / f"{node}.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if not quiet:
                print(f"static_pair: stopping {node} (pid {pid})")
            _stop_pid(pid)
            pidfile.unlink()
    if keep_logs:
        for leftover in state.glob("*.sock"):
            leftover.unlink()
    else:
        shutil.rmtree(state, ignore_errors=True)
    if not quiet:
        print(f"static_pair: {prefix} down" + (f" (logs kept in {state})" if keep_logs else ""))
    return 0


def stats(prefix: str, node: str) -> dict[str, Any]:
    """The counters of one running gateway (for tests and the benchmark)."""
    from tunneld.control import request

    return request(str(_state_dir(prefix) / f"{node}.sock"), {"cmd": "stats"})


# -- the gateway process (run inside PREFIX-gwX) ---------------------------------


def _build_sadb(config: dict[str, Any]) -> Any:
    from tunneld.dataplane.sa import InboundSA, OutboundSA
    from tunneld.dataplane.sadb import SADatabase

    sadb = SADatabase()
    peer = (config["peer"], 4500)
    sadb.add_tunnel("static", peer, [config["local_net"]], [config["remote_net"]])
    inbound, outbound = config["inbound"], config["outbound"]
    key, salt = bytes.fromhex(inbound["key"]), bytes.fromhex(inbound["salt"])
    sadb.add_inbound("static", InboundSA(inbound["spi"], key, salt))
    sadb.install_next(
        "static",
        OutboundSA(
            outbound["spi"], bytes.fromhex(outbound["key"]), bytes.fromhex(outbound["salt"])
        ),
    )
    sadb.promote("static")
    return sadb


async def _gateway_main(config: dict[str, Any], stats_socket: str) -> None:
    import ipaddress

    import trio

    from tunneld import control
    from tunneld.datapath import DataPath
    from tunneld.io import TunDevice, UdpSocket
    from tunneld.routes import KernelRoutes

    sadb = _build_sadb(config)
    tuning = config["tuning"]
    offload, tso = tuning["offload"], tuning.get("tso", True)
    with TunDevice.open(config["tun"], config["mtu"], offload=offload, tso=tso) as tun:
        udp = UdpSocket.bind(config["local"], 4500, gro=tuning["gro"])
        udp.gso_enabled = tuning["gso"]
        routes = KernelRoutes(config["tun"])
        try:
            routes.add(ipaddress.ip_network(config["remote_net"]))
            path = DataPath(sadb, tun, {4500: udp}, None, batch=tuning["batch"])

            async def handler(request: dict[str, Any]) -> dict[str, Any]:
                if request.get("cmd") != "stats":
                    return {"ok": False, "error": "only 'stats' is served"}
                return {"ok": True, "datapath": path.stats(), "sadb": sadb.snapshot()}

            async with trio.open_nursery() as nursery:
                await nursery.start(path.run)
                serve = functools.partial(control.serve, commands=("stats",))
                await nursery.start(serve, stats_socket, handler)
                _say_ready(udp)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("signal %d: stopping", signum)
                        break
                log.info("final counters %s", json.dumps(path.stats()))
                nursery.cancel_scope.cancel()
        finally:
            routes.close()
            udp.close()


def _say_ready(udp: Any) -> None:
    """One line for `up`, then stdout goes away (the reader will not stay)."""
    sys.stdout.write(f"READY {udp!r}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    log.info("ready: %r", udp)


def cmd_gateway(stats_socket: str) -> int:
    import trio

    from tunneld.log import setup_logging

    setup_logging("text", "info")
    config = json.loads(sys.stdin.read())
    sys.stdin.close()
    trio.run(_gateway_main, config, stats_socket)
    log.info("stopped: route removed, TUN closed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.static_pair", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start both gateways (after lab.sh up PREFIX)")
    up.add_argument("prefix")
    up.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    up.add_argument("--key-bits", type=int, choices=(128, 256), default=256)
    up.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="packets per wakeup")
    up.add_argument("--no-gso", action="store_true", help="one sendto per ESP packet")
    up.add_argument("--no-gro", action="store_true", help="no UDP GRO on receive")
    up.add_argument("--no-offload", action="store_true", help="no TCP merging on TUN writes")
    up.add_argument("--no-tso", action="store_true", help="no TCP super-packets read from the TUN")
    up.add_argument(
        "--no-offload-on",
        action="append",
        choices=sorted(SITES),
        default=[],
        help="this gateway's TUN without virtio header: no merging, no TSO (repeatable)",
    )
    down = sub.add_parser("down", help="stop both gateways")
    down.add_argument("prefix")
    down.add_argument("--keep-logs", action="store_true", help="keep the gateways' logs")
    st = sub.add_parser("stats", help="print one gateway's counters as JSON")
    st.add_argument("prefix")
    st.add_argument("node", choices=sorted(SITES))
    gw = sub.add_parser("gateway", help="(internal) one gateway; SA parameters on stdin")
    gw.add_argument("--stats-socket", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "up":
        tuning = {
            "batch": args.batch,
            "gso": not args.no_gso,
            "gro": not args.no_gro,
            "offload": not args.no_offload,
            "tso": not args.no_tso,
            "plain_tun": args.no_offload_on,
        }
        return cmd_up(args.prefix, args.mtu, args.key_bits, tuning)
    if args.cmd == "down":
        return cmd_down(args.prefix, keep_logs=args.keep_logs)
    if args.cmd == "stats":
        print(json.dumps(stats(args.prefix, args.node)))
        return 0
    return cmd_gateway(args.stats_socket)


if __name__ == "__main__":
    sys.exit(main())
