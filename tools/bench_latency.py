"""The bench's latency mode: ping overhead over plain routing, idle and under one TCP stream.

Pipeline (``python -m tools.bench --latency``, ``netns-scripts/bench.sh --latency``):

1. ``netns-scripts/lab.sh up PREFIX`` (the throughput bench's topology).
2. For each round, for each configuration (the order rotates every round): set it up,
   check that the gateways route the remote site the way the configuration says, wait
   until site B answers, flush the route caches, then
   - **quiet**: no traffic for ``--quiet`` seconds; the CPU time of the gateway
     processes over it is their idle cost (a pump that polls shows up here);
   - **idle**: ``--pings`` pings at ``--ping-interval`` from site A to site B;
   - **load**: one iperf3 TCP stream site A -> site B; after ``--warmup`` seconds the
     same pings again, while the stream runs (queueing: what a standing queue adds);
   tear it down.
3. Per configuration: p50/p99 of every ping of every round (pooled), the same minus
   plain routing's pooled p50/p99 of the same run (the overhead), the median quiet
   CPU and the stream's median throughput; ``--json`` ends with one JSON object.
4. Everything torn down, also on failure, Ctrl-C or SIGTERM.

``--tree LABEL=PATH`` adds a configuration LABEL: the tunneld daemon run from another
source tree (``PYTHONPATH=PATH``), measured in the same interleaved rounds as the others:
before/after figures of a change from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import bench
from tools import lab as sitelab

IPERF_PORT = bench.IPERF_PORT
PERCENTILES = (50, 99)


# -- tunneld from another source tree ---------------------------------------------------


class TreeTunneld(bench.DaemonTunneld):
    """The tunneld daemon (``bench.DaemonTunneld``) run from the source tree at ``path``."""

    tunnel = True

    def __init__(self, ctx: bench.Context, name: str, path: Path) -> None:
        super().__init__(ctx)
        self.name = name
        self._path = path

    def setup(self) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self._ctx.workdir))
        lab = sitelab.Lab(self._ctx.lab.prefix)
        opts = sitelab.SiteOptions(mtu=bench.TUNNEL_MTU, esp=("aes256gcm16",))
        conf_a, conf_b = sitelab.write_site_configs(work, lab.prefix, opts)
        env = {**os.environ, "PYTHONPATH": str(self._path)}
        self._gateways = sitelab.gateways(lab, work, conf_a, conf_b)
        for gw in reversed(self._gateways):  # the responder first
            gw.env, gw.cwd = env, self._path  # `python -m` puts its cwd first on sys.path
            gw.start()
        for gw in self._gateways:
            gw.wait_for_child(bench.SETUP_TIMEOUT)


# -- one measurement --------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySample:
    """One configuration, one round."""

    idle_ms: list[float]
    load_ms: list[float]
    quiet_cpu_pct: float  # the gateway processes with no traffic, % of one core
    idle_cpu_pct: float  # ... during the idle pings
    load_mbps: float  # the stream the loaded pings shared the path with
    sent: int  # pings sent per phase


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def gateway_cpu(lab: bench.Lab, seconds: float) -> float:
    """% of one core the gateway processes used over ``seconds`` of doing nothing else."""
    before = bench.CpuUsage.now(lab)
    time.sleep(seconds)
    return bench.CpuUsage.now(lab).since(before)[1]


def start_stream(lab: bench.Lab, seconds: int) -> tuple[subprocess.Popen[str], ...]:
    """An iperf3 server in site B and one TCP stream from site A, in the background."""
    server = subprocess.Popen(
        lab.cmd("b", "iperf3", "-s", "-1", "-B", bench.SITE_B_HOST, "-p", str(IPERF_PORT)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, text=True,
    )  # fmt: skip
    try:
        bench.wait_until("the iperf3 server", lambda: bench._listening(lab), 5)
        argv = ["iperf3", "-c", bench.SITE_B_HOST, "-p", str(IPERF_PORT), "-t", str(seconds)]
        client = subprocess.Popen(
            lab.cmd("a", *argv, "-J", "--connect-timeout", "3000"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )  # fmt: skip
    except BaseException:
        bench.stop_process(server, grace=2)
        raise
    return server, client


def finish_stream(procs: tuple[subprocess.Popen[str], ...], seconds: int) -> float:
    """Wait for the stream started by :func:`start_stream`; its Mbit/s received."""
    server, client = procs
    try:
        out, _ = client.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired as exc:
        raise bench.BenchError("iperf3 did not finish") from exc
    finally:
        bench.stop_process(client, grace=2)
        bench.stop_process(server, grace=2)
    try:
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError, TypeError) as exc:
        raise bench.BenchError(f"iperf3 printed no result: {out[-300:]!r}") from exc


def measure(
    ctx: bench.Context, config: bench.Configuration, args: argparse.Namespace
) -> LatencySample:
    """Set ``config`` up; quiet CPU, idle pings, pings under one stream; tear it down."""
    lab = ctx.lab
    try:
        config.setup()
        bench.check_path(lab, config)
        bench.wait_reachable(lab, config)
        bench.flush_route_caches(lab)
        quiet = gateway_cpu(lab, args.quiet)
        before = bench.CpuUsage.now(lab)
        idle = bench.ping_rtts(lab, args.pings, args.ping_interval)
        idle_cpu = bench.CpuUsage.now(lab).since(before)[1]
        if not idle:
            raise bench.BenchError(f"{config.name}: no ping answered")
        bench.flush_route_caches(lab)
        seconds = math.ceil(args.warmup + args.pings * args.ping_interval * 1.2 + 1)
        stream = start_stream(lab, seconds)
        try:
            time.sleep(args.warmup)
            load = bench.ping_rtts(lab, args.pings, args.ping_interval)
        finally:
            mbps = finish_stream(stream, seconds)
    finally:
        with bench.uninterrupted():
            config.teardown()
    return LatencySample(
        idle, load, round(quiet, 2), round(idle_cpu, 1), round(mbps, 1), args.pings
    )


# -- rounds and report ------------------------------------------------------------------


@dataclass
class LatencyResults:
    names: list[str]
    samples: dict[str, list[LatencySample]] = field(default_factory=dict)

    def pooled(self, name: str, phase: str) -> list[float]:
        return [ms for s in self.samples[name] for ms in getattr(s, f"{phase}_ms")]

    def stat(self, name: str, phase: str, pct: int) -> float:
        return percentile(self.pooled(name, phase), pct)

    def overhead(self, name: str, phase: str, pct: int) -> float | None:
        """``name``'s pooled percentile minus plain routing's of the same run."""
        if "plain" not in self.names:
            return None
        return self.stat(name, phase, pct) - self.stat("plain", phase, pct)

    def lost(self, name: str, phase: str) -> int:
        return sum(s.sent - len(getattr(s, f"{phase}_ms")) for s in self.samples[name])

    def config_json(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for phase in ("idle", "load"):
            for pct in PERCENTILES:
                out[f"{phase}_p{pct}_ms"] = round(self.stat(name, phase, pct), 4)
                over = self.overhead(name, phase, pct)
                out[f"{phase}_p{pct}_overhead_ms"] = None if over is None else round(over, 4)
            out[f"{phase}_lost"] = self.lost(name, phase)
        samples = self.samples[name]
        out["quiet_cpu_pct"] = statistics.median(s.quiet_cpu_pct for s in samples)
        out["idle_ping_cpu_pct"] = statistics.median(s.idle_cpu_pct for s in samples)
        out["load_mbps"] = statistics.median(s.load_mbps for s in samples)
        out["per_round"] = [
            {
                "idle_p50_ms": percentile(s.idle_ms, 50),
                "idle_p99_ms": percentile(s.idle_ms, 99),
                "load_p50_ms": percentile(s.load_ms, 50),
                "load_p99_ms": percentile(s.load_ms, 99),
                "quiet_cpu_pct": s.quiet_cpu_pct,
                "load_mbps": s.load_mbps,
            }
            for s in samples
        ]
        return out


def run_rounds(
    ctx: bench.Context, args: argparse.Namespace, make: Callable[[str], bench.Configuration]
) -> LatencyResults:
    results = LatencyResults(args.configs, {name: [] for name in args.configs})
    for r in range(args.rounds):
        shift = r % len(args.configs)
        for name in args.configs[shift:] + args.configs[:shift]:
            sample = measure(ctx, make(name), args)
            results.samples[name].append(sample)
            print(
                f"round {r + 1}/{args.rounds} {name:10}"
                f" idle p50 {percentile(sample.idle_ms, 50):.3f} p99"
                f" {percentile(sample.idle_ms, 99):.3f} ms"
                f"  load p50 {percentile(sample.load_ms, 50):.3f} p99"
                f" {percentile(sample.load_ms, 99):.3f} ms ({sample.load_mbps:.0f} Mbit/s)"
                f"  quiet CPU {sample.quiet_cpu_pct:.1f}%",
                file=sys.stderr,
                flush=True,
            )
    return results


def _ms(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:+8.3f}"


def format_table(results: LatencyResults, args: argparse.Namespace) -> str:
    lines = [
        f"{args.rounds} round(s); {args.pings} pings at {args.ping_interval} s idle and under one"
        " TCP stream; pooled percentiles, overhead = minus plain routing's (ms)",
        f"{'configuration':14} {'idle p50':>9} {'p99':>8} {'+p50':>8} {'+p99':>8}"
        f" {'load p50':>9} {'p99':>8} {'+p50':>8} {'+p99':>8} {'Mbit/s':>8} {'quiet CPU%':>10}",
    ]
    for name in results.names:
        row = f"{name:14}"
        for phase in ("idle", "load"):
            row += f" {results.stat(name, phase, 50):9.3f} {results.stat(name, phase, 99):8.3f}"
            over = [_ms(results.overhead(name, phase, pct)) for pct in PERCENTILES]
            row += f" {over[0]} {over[1]}"
        cfg = results.config_json(name)
        row += f" {cfg['load_mbps']:8.0f} {cfg['quiet_cpu_pct']:10.2f}"
        lines.append(row)
    return "\n".join(lines)


def to_json(results: LatencyResults, args: argparse.Namespace, load: list[float]) -> dict[str, Any]:
    return {
        "mode": "latency",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": bench.run(
            ["git", "-C", str(bench.REPO), "rev-parse", "--short", "HEAD"], timeout=5, check=False
        ).strip(),
        "rounds": args.rounds,
        "pings": args.pings,
        "ping_interval_s": args.ping_interval,
        "tunneld_mode": args.tunneld_mode,
        "trees": {label: str(path) for label, path in args.trees.items()},
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": os.uname().release,
            "loadavg_start": load,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "configs": {name: results.config_json(name) for name in results.names},
    }


# -- command line -----------------------------------------------------------------------


def _tree(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or label in bench.CONFIGURATIONS or not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"LABEL=PATH with a new label and a directory: {text!r}")
    return label, Path(path).resolve()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench --latency", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--configs", default="plain,tunneld,openvpn", help="comma-separated subset")
    p.add_argument("--tunneld-mode", choices=sorted(bench.TUNNELD_MODES), default="daemon")
    p.add_argument(
        "--tree",
        action="append",
        type=_tree,
        default=[],
        metavar="LABEL=PATH",
        help="also measure tunneld from another source tree, as configuration LABEL",
    )
    p.add_argument("--pings", type=int, help="pings per phase (default 600; --quick: 100)")
    p.add_argument("--ping-interval", type=float, default=0.01, help="seconds (default 0.01)")
    p.add_argument("--warmup", type=float, default=2.0, help="stream seconds before the pings")
    p.add_argument("--quiet", type=float, default=3.0, help="seconds of idle CPU measurement")
    p.add_argument("--quick", action="store_true", help="1 round of 100 pings")
    p.add_argument("--prefix", default=f"bl{secrets.token_hex(3)}", help="namespace prefix")
    p.add_argument("--lab-script", type=Path, default=bench.SCRIPTS / "lab.sh")
    p.add_argument("--json", action="store_true", help="end with one JSON object on stdout")
    args = p.parse_args(argv)
    if args.quick:  # (an explicit --pings stands)
        args.rounds, args.quiet, args.warmup = 1, 1.0, 1.0
    if args.pings is None:
        args.pings = 100 if args.quick else 600
    args.trees = dict(args.tree)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.configs += [label for label in args.trees if label not in args.configs]
    known = [*bench.CONFIGURATIONS, *args.trees]
    unknown = [c for c in args.configs if c not in known]
    if unknown or not args.configs or len(set(args.configs)) != len(args.configs):
        p.error(f"--configs: choose among {', '.join(known)} (got {args.configs})")
    if args.rounds < 1 or args.pings < 1 or args.ping_interval <= 0:
        p.error("--rounds and --pings must be positive, --ping-interval above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not bench.preflight(args.configs):
        return 2
    ctx = bench.Context(bench.Lab(args.prefix), bench.REPO, Path(tempfile.mkdtemp(prefix="lat-")))

    def make(name: str) -> bench.Configuration:
        if name in args.trees:
            return TreeTunneld(ctx, name, args.trees[name])
        return bench.CONFIGURATIONS[name](ctx, args.tunneld_mode)

    load = [round(x, 2) for x in os.getloadavg()]
    print(f"bench: latency, lab {args.prefix}, load average {load}", file=sys.stderr, flush=True)
    try:
        bench.run(["bash", str(args.lab_script), "up", args.prefix], timeout=60)
        results = run_rounds(ctx, args, make)
    except bench.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything torn down", file=sys.stderr)
        return 130
    finally:
        with bench.uninterrupted():
            bench.run(["bash", str(args.lab_script), "down", args.prefix], timeout=60, check=False)
            with contextlib.suppress(OSError):
                shutil.rmtree(ctx.workdir, ignore_errors=True)
    print(format_table(results, args))
    if args.json:
        print(json.dumps(to_json(results, args, load)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
