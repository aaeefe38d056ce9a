"""The project's benchmark: site A -> site B through plain routing, tunneld and OpenVPN.

Pipeline (``python -m tools.bench``; ``netns-scripts/bench.sh`` is a thin wrapper):

1. ``netns-scripts/lab.sh up PREFIX``: two sites, two gateways, a bridge between them.
2. For each round, for each configuration (the order rotates every round, so that no
   configuration always runs first or last): set it up, check that the gateways really
   route the remote site the way the configuration says, flush the route caches (cached
   path MTUs would carry over from the previous configuration), ping, run one iperf3 TCP
   stream, tear it down.
3. Print the medians and ratios; with ``--json`` end with one JSON object.
4. Tear everything down, also on failure, Ctrl-C or SIGTERM (try/finally + ``lab.sh down``).

A configuration is a small object with ``setup()``/``teardown()``; the tunneld one is
chosen from :data:`TUNNELD_MODES`, the extension point for running the real daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, NoReturn, Protocol

from tools import lab as sitelab
from tools.bench_pki import write_openvpn_pki

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "netns-scripts"

# The lab topology contract (netns-scripts/lab.sh).
SITE_A_NET, SITE_A_HOST = "198.51.100.0/24", "198.51.100.10"
SITE_B_NET, SITE_B_HOST = "203.0.113.0/24", "203.0.113.10"
GWA_UNDERLAY, GWB_UNDERLAY = "192.0.2.1", "192.0.2.2"

# Our choices.
IPERF_PORT = 5201
TUNNEL_MTU = 1400  # tunneld's TUN MTU; OpenVPN's tun-mtu is set to the same (fair MTUs)
OVPN_DEV = "ovpn-bench"
OVPN_INNER_A, OVPN_INNER_B = "192.0.2.201", "192.0.2.202"  # /32 point-to-point addresses
SETUP_TIMEOUT = 30.0
REACH_TIMEOUT = 10.0


class BenchError(Exception):
    """The benchmark could not measure (a tool failed, a tunnel did not come up)."""


# -- running commands -------------------------------------------------------------------


def run(cmd: Sequence[str], *, timeout: float, check: bool = True, cwd: Path | None = None) -> str:
    """Run a command to completion (killed after ``timeout``); return its stdout."""
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-600:]
        raise BenchError(f"exit {proc.returncode}: {' '.join(cmd)}\n{detail}")
    return proc.stdout


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate one process we started (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Lab:
    """The namespaces of one lab instance (``lab.sh up PREFIX``)."""

    prefix: str

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def cmd(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def egress(self, role: str, dst: str) -> tuple[str, str | None]:
        """(device, next hop) the namespace would use for ``dst``."""
        out = run(["ip", "-n", self.ns(role), "-j", "route", "get", dst], timeout=5, check=False)
        routes = json.loads(out) if out.strip() else []
        if not routes:
            return ("unreachable", None)
        return (str(routes[0].get("dev")), routes[0].get("gateway"))

    def mtu(self, role: str, dev: str) -> int:
        out = run(["ip", "-n", self.ns(role), "-j", "link", "show", "dev", dev], timeout=5)
        return int(json.loads(out)[0]["mtu"])


@dataclass(frozen=True)
class Context:
    """What a configuration needs to set itself up."""

    lab: Lab
    repo: Path
    workdir: Path  # a private temporary directory, removed at the end


# -- configurations ---------------------------------------------------------------------


class Configuration(Protocol):
    """One way of carrying site A <-> site B traffic between the gateways."""

    name: str
    tunnel: bool  # True: the remote site must NOT be routed over the underlay

    def setup(self) -> None: ...
    def teardown(self) -> None: ...  # must be safe after a failed or partial setup


class PlainRouting:
    """No tunnel: each gateway routes the remote site directly over the underlay."""

    name, tunnel = "plain", False

    def __init__(self, ctx: Context) -> None:
        self._routes = (
            (ctx.lab.ns("gwa"), SITE_B_NET, GWB_UNDERLAY),
            (ctx.lab.ns("gwb"), SITE_A_NET, GWA_UNDERLAY),
        )

    def setup(self) -> None:
        for ns, net, via in self._routes:
            run(["ip", "-n", ns, "route", "add", net, "via", via], timeout=5)

    def teardown(self) -> None:
        for ns, net, via in self._routes:
            run(["ip", "-n", ns, "route", "del", net, "via", via], timeout=5, check=False)


class StaticPairTunneld:
    """tunneld's data plane with static keys, run by the test harness ``static_pair``.

    ``python -m tests.tools.static_pair up PREFIX`` starts one data-plane process per
    gateway (fresh random keys, remote site routed into its TUN); ``down`` stops them.
    """

    name, tunnel = "tunneld", True

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _static_pair(self, action: str, *options: str, check: bool) -> None:
        prefix = self._ctx.lab.prefix
        argv = [sys.executable, "-m", "tests.tools.static_pair", action, prefix, *options]
        run(argv, timeout=SETUP_TIMEOUT, check=check, cwd=self._ctx.repo)

    def setup(self) -> None:
        self._static_pair("up", "--mtu", str(TUNNEL_MTU), check=True)

    def teardown(self) -> None:
        self._static_pair("down", check=False)


class DaemonTunneld:
    """The product: ``tunneld run`` in both gateways, ECDSA certificates from ``tunneld
    pki``, X25519, AES-256-GCM, the IKEv2 handshake before the measurement."""

    name, tunnel = "tunneld", True

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._gateways: tuple[sitelab.Gateway, sitelab.Gateway] | None = None

    def setup(self) -> None:
        # a fresh directory (new PKI, configs, sockets) for every round's setup
        work = Path(tempfile.mkdtemp(prefix="daemon-", dir=self._ctx.workdir))
        lab = sitelab.Lab(self._ctx.lab.prefix)
        opts = sitelab.SiteOptions(mtu=TUNNEL_MTU, esp=("aes256gcm16",))
        conf_a, conf_b = sitelab.write_site_configs(work, lab.prefix, opts)
        self._gateways = sitelab.gateways(lab, work, conf_a, conf_b)
        for gw in reversed(self._gateways):  # the responder first
            gw.start()
        for gw in self._gateways:
            gw.wait_for_child(SETUP_TIMEOUT)

    def teardown(self) -> None:
        for gw in self._gateways or ():
            gw.stop()
        self._gateways = None


# How tunneld is run in the bench: the daemon (default), or the data plane alone with
# static test keys (tests/tools/static_pair.py) to separate data-plane from daemon cost.
TUNNELD_MODES: dict[str, Callable[[Context], Configuration]] = {
    "daemon": DaemonTunneld,
    "static": StaticPairTunneld,
}


class OpenVpnP2p:
    """OpenVPN 2.6 in peer-to-peer TLS mode, AES-256-GCM, userspace data channel (no DCO).

    tls-server in gateway B, tls-client in gateway A, the remote site routed through the
    OpenVPN tun; configuration from ``netns-scripts/openvpn/p2p-tls.conf.in``.
    """

    name, tunnel = "openvpn", True
    TEMPLATE = SCRIPTS / "openvpn" / "p2p-tls.conf.in"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._dir = ctx.workdir / "openvpn"
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def _start(
        self, role: str, gateway: str, remote: str, inner: tuple[str, str], site: str
    ) -> None:
        conf = self._dir / f"{role}.conf"
        fields = {
            "dev": OVPN_DEV, "remote": remote, "local_inner": inner[0], "remote_inner": inner[1],
            "remote_site": site.split("/")[0], "tls_role": f"tls-{role}", "role": role,
            "peer_role": "client" if role == "server" else "server", "pki": str(self._dir),
            "tun_mtu": str(TUNNEL_MTU),
        }  # fmt: skip
        conf.write_text(Template(self.TEMPLATE.read_text()).substitute(fields))
        log = self._dir / f"{role}.log"
        with log.open("wb") as out:
            argv = self._ctx.lab.cmd(gateway, "openvpn", "--config", str(conf))
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; teardown stops it in order
            )  # fmt: skip
        self._procs.append((role, proc, log))

    def _connected(self) -> bool:
        for role, proc, log in self._procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-800:]
                raise BenchError(f"openvpn ({role}) exited with {proc.returncode}:\n{tail}")
        return all(
            "Initialization Sequence Completed" in log.read_text(errors="replace")
            for _, _, log in self._procs
        )

    def setup(self) -> None:
        if not self._dir.exists():
            self._dir.mkdir(mode=0o700)
            write_openvpn_pki(self._dir)
        self._start("server", "gwb", GWA_UNDERLAY, (OVPN_INNER_B, OVPN_INNER_A), SITE_A_NET)
        self._start("client", "gwa", GWB_UNDERLAY, (OVPN_INNER_A, OVPN_INNER_B), SITE_B_NET)
        wait_until("OpenVPN to connect", self._connected, SETUP_TIMEOUT)
        for role, _, log in self._procs:
            ciphers = re.findall(r"Data Channel: cipher '([^']+)'", log.read_text())
            if ciphers != ["AES-256-GCM"]:
                raise BenchError(f"openvpn ({role}) data channel cipher: {ciphers}")

    def teardown(self) -> None:
        while self._procs:
            stop_process(self._procs.pop()[1])


CONFIGURATIONS: dict[str, Callable[[Context, str], Configuration]] = {
    "plain": lambda ctx, mode: PlainRouting(ctx),
    "tunneld": lambda ctx, mode: TUNNELD_MODES[mode](ctx),
    "openvpn": lambda ctx, mode: OpenVpnP2p(ctx),
}


# -- measurements -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One measurement of one configuration."""

    mbps: float
    rtts_ms: list[float]
    retransmits: int | None
    cpu_busy_pct: float  # the whole machine during the iperf3 run (other users included)
    gateway_cpu_pct: float  # the processes in both gateways (% of one core), e.g. the tunnels
    egress: str  # the device gateway A sends site B's traffic to
    mtu: int


def flush_route_caches(lab: Lab) -> None:
    """Forget cached routes and path MTUs (they would carry over between configurations)."""
    for role in ("a", "gwa", "gwb", "b"):
        run(lab.cmd(role, "ip", "route", "flush", "cache"), timeout=5)


def check_path(lab: Lab, config: Configuration) -> tuple[str, int]:
    """Make sure each gateway routes the remote site the way ``config`` says it does.

    A tunnel must not fall back on the underlay (that would measure plain routing).
    """
    for gateway, dst, peer in (
        ("gwa", SITE_B_HOST, GWB_UNDERLAY),
        ("gwb", SITE_A_HOST, GWA_UNDERLAY),
    ):
        underlay, _ = lab.egress(gateway, peer)
        dev, via = lab.egress(gateway, dst)
        tunnelled = dev not in (underlay, "unreachable")
        if dev == "unreachable" or tunnelled != config.tunnel:
            raise BenchError(f"{config.name}: {gateway} routes {dst} via {dev} {via or ''}")
    dev, _ = lab.egress("gwa", SITE_B_HOST)
    return dev, lab.mtu("gwa", dev)


def ping_rtts(lab: Lab, count: int, interval: float) -> list[float]:
    """RTTs in ms of ``count`` pings from site A to site B (lost ones are left out)."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", SITE_B_HOST]
    out = run(lab.cmd("a", *argv), timeout=count * interval + 10, check=False)
    return [float(ms) for ms in re.findall(r"time=([\d.]+) ms", out)]


def wait_reachable(lab: Lab, config: Configuration) -> None:
    wait_until(
        f"site B to answer pings through {config.name}",
        lambda: bool(ping_rtts(lab, 1, 0.2)),
        REACH_TIMEOUT,
    )


@dataclass(frozen=True)
class CpuUsage:
    """CPU counters at one instant: the whole machine and the processes in the gateways."""

    machine: tuple[int, int]  # (total, idle) jiffies from /proc/stat
    gateways: dict[int, int]  # pid -> utime + stime, in clock ticks
    at: float

    @classmethod
    def now(cls, lab: Lab) -> CpuUsage:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        ticks = {}
        for gateway in ("gwa", "gwb"):
            for pid in run(["ip", "netns", "pids", lab.ns(gateway)], timeout=5).split():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    ticks[int(pid)] = int(stat[11]) + int(stat[12])  # utime, stime
        return cls((sum(fields), fields[3] + fields[4]), ticks, time.monotonic())

    def since(self, before: CpuUsage) -> tuple[float, float]:
        """(machine busy %, gateway processes' % of one core) between two instants."""
        total, idle = (now - then for now, then in zip(self.machine, before.machine, strict=True))
        spent = sum(t - before.gateways.get(pid, 0) for pid, t in self.gateways.items())
        elapsed = max(1e-3, self.at - before.at) * os.sysconf("SC_CLK_TCK")
        return 100.0 * (1 - idle / max(1, total)), 100.0 * spent / elapsed


def _listening(lab: Lab) -> bool:
    out = run(lab.cmd("b", "ss", "-Htln", f"sport = :{IPERF_PORT}"), timeout=5, check=False)
    return bool(out.strip())


def iperf(lab: Lab, duration: int) -> tuple[float, int | None, tuple[float, float]]:
    """One TCP stream site A -> site B: (Mbit/s received, retransmits, CPU usage)."""
    server = subprocess.Popen(
        lab.cmd("b", "iperf3", "-s", "-1", "-B", SITE_B_HOST, "-p", str(IPERF_PORT)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until("the iperf3 server", lambda: _listening(lab), 5)
        client = ["iperf3", "-c", SITE_B_HOST, "-p", str(IPERF_PORT), "-t", str(duration)]
        client += ["-J", "--connect-timeout", "3000"]
        before = CpuUsage.now(lab)
        # iperf3 3.12 can spin forever when the tunnel dies: the timeout kills it.
        out = run(lab.cmd("a", *client), timeout=duration + 20, check=False)
        usage = CpuUsage.now(lab).since(before)
    finally:
        stop_process(server, grace=2)
    try:
        report = json.loads(out)
    except ValueError as exc:
        raise BenchError(f"iperf3 printed no JSON: {out[-300:]!r}") from exc
    try:
        received = float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError) as exc:
        raise BenchError(f"iperf3 failed: {report.get('error', 'no result')}") from exc
    return received / 1e6, report["end"].get("sum_sent", {}).get("retransmits"), usage


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Let a teardown finish even if Ctrl-C is pressed again meanwhile."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def measure(ctx: Context, config: Configuration, args: argparse.Namespace) -> Sample:
    """Set ``config`` up, ping and iperf through it, tear it down."""
    try:
        config.setup()
        egress, mtu = check_path(ctx.lab, config)
        wait_reachable(ctx.lab, config)
        flush_route_caches(ctx.lab)
        rtts = ping_rtts(ctx.lab, args.pings, args.ping_interval)
        if not rtts:
            raise BenchError(f"{config.name}: no ping answered")
        flush_route_caches(ctx.lab)
        mbps, retransmits, (busy, gateways) = iperf(ctx.lab, args.duration)
    finally:
        with uninterrupted():
            config.teardown()
    return Sample(
        round(mbps, 1), rtts, retransmits, round(busy, 1), round(gateways, 1), egress, mtu
    )


# -- rounds, results, report ------------------------------------------------------------


@dataclass
class Results:
    """Every sample of every configuration, in run order."""

    names: list[str]
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def mbps(self, name: str) -> float:
        return statistics.median(s.mbps for s in self.samples[name])

    def rtt_ms(self, name: str) -> float:
        """Median over every ping of every round."""
        return statistics.median(ms for s in self.samples[name] for ms in s.rtts_ms)

    def gateway_cpu(self, name: str) -> float:
        return statistics.median(s.gateway_cpu_pct for s in self.samples[name])

    def per_core(self, name: str) -> float | None:
        """Mbit/s per core-second of the gateway processes (None without any: plain)."""
        rounds = [s.mbps * 100 / s.gateway_cpu_pct for s in self.samples[name] if s.gateway_cpu_pct]
        return round(statistics.median(rounds), 1) if rounds else None

    def ratios(self) -> dict[str, float]:
        pairs = [(n, "plain") for n in self.names if n != "plain"]
        pairs.append(("tunneld", "openvpn"))
        return {
            f"{a}/{b}": float(f"{self.mbps(a) / self.mbps(b):.4g}")  # 4 significant digits
            for a, b in pairs
            if a in self.names and b in self.names
        }


def run_rounds(ctx: Context, args: argparse.Namespace) -> Results:
    results = Results(args.configs, {name: [] for name in args.configs})
    for r in range(args.rounds):
        shift = r % len(args.configs)  # rotate: no configuration always goes first
        for name in args.configs[shift:] + args.configs[:shift]:
            sample = measure(ctx, CONFIGURATIONS[name](ctx, args.tunneld_mode), args)
            results.samples[name].append(sample)
            print(
                f"round {r + 1}/{args.rounds} {name:8} {sample.mbps:9.1f} Mbit/s"
                f"  RTT {statistics.median(sample.rtts_ms):.3f} ms"
                f"  retransmits {sample.retransmits}  CPU {sample.cpu_busy_pct:.0f}% busy"
                f" (gateway processes {sample.gateway_cpu_pct:.0f}%)"
                f"  via {sample.egress} (MTU {sample.mtu})",
                file=sys.stderr,
                flush=True,
            )
    return results


def format_table(results: Results, args: argparse.Namespace) -> str:
    has_plain = "plain" in results.names
    lines = [
        f"{args.rounds} round(s) x {args.duration} s, one TCP stream site A -> site B, "
        f"{args.pings} pings at {args.ping_interval} s; medians",
        f"{'configuration':17} {'Mbit/s':>9} {'vs plain':>9} {'RTT ms':>8} {'gw CPU %':>9}"
        f" {'Mbit/s/core':>12}   per round (Mbit/s)",
    ]
    for name in results.names:
        mbps = results.mbps(name)
        vs_plain = f"{mbps / results.mbps('plain'):9.2f}" if has_plain else f"{'-':>9}"
        runs = " ".join(f"{s.mbps:.0f}" for s in results.samples[name])
        label = f"{name} ({args.tunneld_mode})" if name == "tunneld" else name
        cpu, core = results.gateway_cpu(name), results.per_core(name)
        per_core = f"{core:12.0f}" if core is not None else f"{'-':>12}"
        rtt = results.rtt_ms(name)
        lines.append(f"{label:17} {mbps:9.1f} {vs_plain} {rtt:8.3f} {cpu:9.0f} {per_core}   {runs}")
    if "tunneld/openvpn" in results.ratios():
        lines.append(f"tunneld/openvpn throughput ratio: {results.ratios()['tunneld/openvpn']:.2f}")
    return "\n".join(lines)


def to_json(results: Results, args: argparse.Namespace, load: list[float]) -> dict[str, Any]:
    per_round = ("mbps", "retransmits", "cpu_busy_pct", "gateway_cpu_pct")
    configs = {
        name: {
            "mbps": round(results.mbps(name), 1),
            "rtt_ms": round(results.rtt_ms(name), 4),
            "gateway_cpu_pct": round(results.gateway_cpu(name), 1),
            "mbps_per_gateway_core": results.per_core(name),
            "mtu": results.samples[name][0].mtu,
        }
        | {
            f"{key}_per_round": [getattr(s, key) for s in results.samples[name]]
            for key in per_round
        }
        for name in results.names
    }
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], timeout=5, check=False
        ).strip(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "tunneld_mode": args.tunneld_mode,
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": os.uname().release,
            "loadavg_start": load,  # other users of the machine show up here
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "configs": configs,
        "ratios": results.ratios(),
    }


# -- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, help="seconds per iperf3 run (default 10)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 3 s")
    p.add_argument("--configs", default="plain,tunneld,openvpn", help="comma-separated subset")
    p.add_argument("--tunneld-mode", choices=sorted(TUNNELD_MODES), default="daemon")
    p.add_argument("--pings", type=int, default=20, help="pings per measurement")
    p.add_argument("--ping-interval", type=float, default=0.1)
    p.add_argument("--prefix", default=f"bn{secrets.token_hex(3)}", help="namespace prefix")
    p.add_argument("--lab-script", type=Path, default=SCRIPTS / "lab.sh")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout")
    p.add_argument("--latency", action="store_true", help="the latency mode (tools.bench_latency)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 10)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGURATIONS]
    if unknown or not args.configs or len(set(args.configs)) != len(args.configs):
        p.error(f"--configs: choose among {', '.join(CONFIGURATIONS)} (got {args.configs})")
    if args.rounds < 1 or args.duration < 1 or args.pings < 1:
        p.error("--rounds, --duration and --pings must be positive")
    return args


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: full teardown


def preflight(configs: Sequence[str]) -> bool:
    """Root and the tools the configurations need (else a message, False); then
    SIGTERM and SIGINT end the run through its teardown. Both bench modes start so."""
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return False
    tools = ["ip", "ping", "ss", "iperf3"] + (["openvpn"] if "openvpn" in configs else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"bench: missing tools: {' '.join(missing)}", file=sys.stderr)
        return False
    signal.signal(signal.SIGTERM, _terminated)
    # Interruptible even when started in the background (where SIGINT arrives ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--latency" in argv:  # the latency mode (tools/bench_latency.py)
        from tools import bench_latency

        return bench_latency.main([a for a in argv if a != "--latency"])
    args = parse_args(argv)
    if not preflight(args.configs):
        return 2
    lab = Lab(args.prefix)
    ctx = Context(lab, REPO, Path(tempfile.mkdtemp(prefix="tunneld-bench-")))
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"bench: lab {args.prefix}, load average {load}", file=sys.stderr, flush=True)
    try:
        run(["bash", str(args.lab_script), "up", args.prefix], timeout=60)
        results = run_rounds(ctx, args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything torn down", file=sys.stderr)
        return 130
    finally:
        with uninterrupted():
            run(["bash", str(args.lab_script), "down", args.prefix], timeout=60, check=False)
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    print(format_table(results, args))
    if args.json:
        print(json.dumps(to_json(results, args, load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
