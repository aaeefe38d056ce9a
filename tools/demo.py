"""The main job: two sites joined by two tunneld gateways, in network namespaces.

    python -m tools.demo [--keep-dir DIR] [--psk] [--iperf-seconds N]

Steps, each announced as it runs: bring up the lab, make a throwaway PKI with
``tunneld pki``, write, print and check two configurations, start both
gateways, wait for the IKE and Child SAs, ping and iperf3 from site A to site
B through the tunnel, print ``tunneld status`` of both gateways (and what their
data plane drops mean), stop them (DELETE is sent) and tear the lab down. The
namespaces are removed on exit, also on failure; so are the configurations,
keys and logs unless ``--keep-dir DIR`` names where to write and keep them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.lab import HOST_B, Gateway, Lab, SiteOptions, gateways, unique_prefix
from tools.lab import write_site_configs as write_configs
from tunneld.cli import format_drops


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tunneld-demo", description=__doc__.splitlines()[0])
    p.add_argument("--psk", action="store_true", help="pre-shared key instead of certificates")
    p.add_argument("--iperf-seconds", type=int, default=3)
    p.add_argument("--prefix", default=None, help="namespace prefix (default: random)")
    p.add_argument(
        "--keep-dir",
        type=Path,
        metavar="DIR",
        help="write the configurations, PKI or PSK and the gateways' logs to DIR and keep "
        "them after the demo (default: a temporary directory, removed)",
    )
    args = p.parse_args(argv)
    lab = Lab(args.prefix or unique_prefix("demo"))
    with contextlib.ExitStack() as stack:
        if args.keep_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunneld-demo-")))
        else:
            work = args.keep_dir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        gws: tuple[Gateway, Gateway] | None = None
        try:
            step(f"bringing up the lab: namespaces {lab.prefix}-{{a,gwa,wan,gwb,b}}")
            lab.down()
            lab.up()
            show("site A 198.51.100.10/24 -- gw-a 192.0.2.1 == WAN == 192.0.2.2 gw-b -- site B")
            show("203.0.113.10/24; site A has no route to site B except through the tunnel")
            gws = _configure(lab, work, args.psk)
            _start(gws)
            _traffic(lab, args.iperf_seconds)
            _status(gws)
            step("stopping both gateways (SIGTERM: DELETE to the peer, routes and TUN removed)")
            for gw in gws:
                show(f"{gw.node}: exit code {gw.stop()}")
            show(_grep(gws[0], "IKE SA down") or "(no IKE SA down line)")
            return 0
        except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            if isinstance(exc, subprocess.CalledProcessError):
                print(exc.stderr or exc.stdout, file=sys.stderr)
            for gw in gws or ():
                print(f"--- {gw.node} log:\n{gw.tail_log()}", file=sys.stderr)
            return 1
        finally:
            for gw in gws or ():
                gw.kill()
            step("tearing down the lab")
            lab.down()
            show("namespaces removed")
            if args.keep_dir is not None:
                show(f"configurations, keys and logs kept in {work}")


def _configure(lab: Lab, work: Path, psk: bool) -> tuple[Gateway, Gateway]:
    auth = "psk" if psk else "pubkey"
    step(
        "making a throwaway PKI: tunneld pki init-ca / tunneld pki issue gw-a, gw-b (ECDSA P-256)"
        if not psk
        else "writing a random pre-shared key (mode 0600)"
    )
    conf_a, conf_b = write_configs(work, lab.prefix, SiteOptions(auth=auth, pki_via_cli=True))
    step("writing the gateways' configurations and checking them with `tunneld check`")
    for conf in (conf_a, conf_b):
        show(f"--- {conf}")
        show(conf.read_text().strip())
        out = subprocess.run(
            [sys.executable, "-m", "tunneld.cli", "check", "-c", str(conf)],
            capture_output=True,
            text=True,
            check=True,
        )
        show(out.stdout)
    show("gw-a: auto = start (initiates); gw-b: auto = listen (responds)")
    return gateways(lab, work, conf_a, conf_b)


def _start(gws: tuple[Gateway, Gateway]) -> None:
    step("starting tunneld on gw-b, then gw-a (`tunneld run -c ...` in each namespace)")
    gws[1].start()
    time.sleep(0.3)
    gws[0].start()
    step("waiting for IKE_SA_INIT + IKE_AUTH and the first Child SA")
    t0 = time.monotonic()
    child_a = gws[0].wait_for_child(20)
    child_b = gws[1].wait_for_child(20)
    show(f"tunnel up after {time.monotonic() - t0:.2f}s")
    show(f"gw-a Child SA: in {child_a['spi_in']} out {child_a['spi_out']} {child_a['algorithms']}")
    show(f"gw-b Child SA: in {child_b['spi_in']} out {child_b['spi_out']} {child_b['algorithms']}")


def _traffic(lab: Lab, seconds: int) -> None:
    step(f"ping site A ({lab.ns('a')}) -> site B {HOST_B} through the tunnel")
    ping = lab.run("a", "ping", "-c", "5", "-i", "0.2", "-W", "2", HOST_B, check=False)
    show("\n".join(ping.stdout.splitlines()[-2:]))
    if ping.returncode != 0:
        raise RuntimeError("ping through the tunnel failed")
    step(f"iperf3 site A -> site B, one TCP stream, {seconds}s")
    server = lab.popen("b", "iperf3", "-s", "-1", "-B", HOST_B, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = lab.run(
            "a", "timeout", str(seconds + 15), "iperf3", "-c", HOST_B, "-t", str(seconds),
            "-J", "--connect-timeout", "3000", timeout=seconds + 20,
        )  # fmt: skip
        result = json.loads(out.stdout)
        mbps = result["end"]["sum_received"]["bits_per_second"] / 1e6
        show(f"{mbps:.0f} Mbit/s received at site B")
    finally:
        server.kill()
        server.wait()


def _status(gws: tuple[Gateway, Gateway]) -> None:
    for gw in gws:
        step(f"tunneld status -c {gw.config.name}   ({gw.node})")
        out = gw.cli("status", "-s", str(gw.socket))
        show(out.stdout or out.stderr)
        note = explain_drops(gw.status()["dataplane"]["drops"])
        if note:
            show(note)


def explain_drops(drops: dict[str, int]) -> str | None:
    """What the data plane's drops mean: nothing to say, the expected one, or where to look."""
    shown = {reason: n for reason, n in drops.items() if n}
    if not shown:
        return None
    if set(shown) == {"no_policy"} and shown["no_policy"] <= 2:
        return (
            f"({format_drops(shown)}: expected right after start, a packet the kernel sent "
            "into the new TUN device with no Child SA for it; see 'Drop reasons' in "
            "docs/operations.md)"
        )
    return f"({format_drops(shown)}: see 'Drop reasons' in docs/operations.md)"


def _grep(gw: Gateway, needle: str) -> str:
    try:
        return "\n".join(line for line in gw.log.read_text().splitlines() if needle in line)
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
