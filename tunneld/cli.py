"""The ``tunneld`` command line.

    tunneld run -c FILE [--log-format text|json] [--log-level info]
    tunneld check -c FILE
    tunneld status (-c FILE | -s SOCKET) [--json]
    tunneld up PEER (-c FILE | -s SOCKET)
    tunneld down PEER [--for SECONDS] (-c FILE | -s SOCKET)
    tunneld rekey PEER [--ike | --child NAME] (-c FILE | -s SOCKET)
    tunneld pki init-ca ... | tunneld pki issue ...

Exit codes: 0 success, 1 runtime failure (daemon unreachable, command
refused), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tunneld import __version__, control, pki
from tunneld.config import ConfigError, load_config

log = logging.getLogger("tunneld")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"tunneld: {exc}", file=sys.stderr)
        return 2
    except control.ControlError as exc:
        print(f"tunneld: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunneld", description="userspace IPsec (IKEv2 + ESP) VPN")
    p.add_argument("--version", action="version", version=f"tunneld {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, type=Path)
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", required=True, type=Path)
    check.set_defaults(func=_cmd_check)

    status = sub.add_parser("status", help="show peers, SAs and counters of a running daemon")
    _add_target(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    up = sub.add_parser(
        "up", help="bring a peer's tunnel up (and accept its new IKE SAs again after `down`)"
    )
    up.add_argument("peer")
    _add_target(up)
    up.set_defaults(func=_cmd_peer, cmd="up")

    down = sub.add_parser(
        "down",
        help="delete a peer's SAs and refuse its new ones until `tunneld up PEER`",
        description="Delete the peer's IKE and Child SAs (its routes go at once) and hold it "
        "down: IKE_SA_INIT from the peer is dropped and counted (refused_initiations) until "
        "`tunneld up PEER`, or with --for until SECONDS have passed; then the peer's "
        "configured auto applies again (auto = start initiates).",
    )
    down.add_argument("peer")
    down.add_argument(
        "--for",
        dest="hold",
        type=_seconds,
        metavar="SECONDS",
        help="refuse the peer's new IKE SAs only this long (default: until `tunneld up`)",
    )
    _add_target(down)
    down.set_defaults(func=_cmd_peer, cmd="down")

    rekey = sub.add_parser("rekey", help="rekey a peer's Child SAs now (--ike: its IKE SA)")
    rekey.add_argument("peer")
    which = rekey.add_mutually_exclusive_group()
    which.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    which.add_argument("--child", help="rekey only the Child SAs of this [[peer.child]]")
    _add_target(rekey)
    rekey.set_defaults(func=_cmd_rekey)

    pki.add_pki_subcommands(sub)
    return p


def _add_target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("-c", "--config", type=Path, help="the daemon's configuration file")
    group.add_argument("-s", "--socket", type=Path, help="the daemon's control socket")


def _socket_of(args: argparse.Namespace) -> str:
    if args.socket is not None:
        return str(args.socket)
    return str(load_config(args.config).gateway.control_socket)


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from tunneld import hardening
    from tunneld.daemon import Daemon
    from tunneld.log import setup_logging

    # First, before the configuration brings keys into memory: no core file, not dumpable.
    try:
        hardening.no_core_dumps()
    except OSError as exc:
        print(f"tunneld: cannot start: cannot disable core dumps: {exc}", file=sys.stderr)
        return 1
    config = load_config(args.config)
    setup_logging(
        args.log_format or config.gateway.log_format, args.log_level or config.gateway.log_level
    )

    async def main() -> None:
        await Daemon(config, handle_signals=True).run()

    try:
        trio.run(main)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    peers = ", ".join(p.name for p in config.peers) or "none"
    print(f"{args.config}: ok (gateway {config.gateway.name}, peers: {peers})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    response = control.request(_socket_of(args), {"cmd": "status"})
    if not response.get("ok"):
        print(f"tunneld: {response.get('error')}", file=sys.stderr)
        return 1
    response.pop("ok")
    if args.json:
        print(json.dumps(response, indent=2))
    else:
        print(format_status(response))
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _cmd_peer(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": args.cmd, "peer": args.peer}
    hold = getattr(args, "hold", None)
    if hold is not None:
        request["for"] = hold
    response = control.request(_socket_of(args), request)
    if not response.get("ok"):
        print(f"tunneld: {response.get('error')}", file=sys.stderr)
        return 1
    if args.cmd == "down":
        until = f"for {hold:g}s" if hold is not None else f"until `tunneld up {args.peer}`"
        print(f"down {args.peer}: ok (its new IKE SAs are refused {until})")
    else:
        print(f"{args.cmd} {args.peer}: ok")
    return 0


def _cmd_rekey(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": "rekey", "peer": args.peer, "ike": args.ike}
    if args.child is not None:
        request["child"] = args.child
    response = control.request(_socket_of(args), request)
    if not response.get("ok"):
        print(f"tunneld: {response.get('error')}", file=sys.stderr)
        return 1
    what = "IKE SA" if args.ike else "Child SAs" if args.child is None else f"child {args.child}"
    print(f"rekey {what} of {args.peer}: started")
    return 0


def format_status(st: dict[str, Any]) -> str:
    """Human-readable status, one block per peer."""
    lines = [f"gateway {st['gateway']} (tun {st['tun']}, up {st['uptime']:.0f}s)"]
    for peer in st["peers"]:
        err = f", last error: {peer['last_error']}" if peer.get("last_error") else ""
        hold = peer.get("held_down")
        if hold is not None:
            left = hold.get("remaining")
            err += (
                f", held down until `tunneld up {peer['name']}`"
                if left is None
                else f", held down for {left:.0f}s more"
            )
        live = peer["liveness"]
        heard = "never" if live["last_heard"] is None else f"{live['last_heard']:.0f}s ago"
        remote = _remote_text(peer)
        lines.append(
            f"  peer {peer['name']} [{peer['state']}] remote {remote}{err}"
            f"  liveness {live['state']} (heard {heard})"
        )
        for ike in peer["ike_sas"]:
            superseded = " (superseded, until the peer deletes it)" if ike.get("superseded") else ""
            lines.append(
                "    IKE SA {spi_i}_i {spi_r}_r {state} {algorithms} id {remote_id}".format(**ike)
                + superseded
            )
        for ch in peer["child_sas"]:
            rekey = "-" if ch.get("rekey_in") is None else f"{ch['rekey_in']:.0f}s"
            lines.append(
                f"    Child SA {ch['spi_in']}_in {ch['spi_out']}_out {ch['algorithms']} "
                f"gen {ch['generation']} age {ch['age']:.0f}s rekey in {rekey}  "
                f"{','.join(ch['local_ts'])} === {','.join(ch['remote_ts'])}"
                + (f"  [child {ch['child']}]" if ch.get("child") else "")
            )
            lines.append(
                f"      in {ch['in']['packets']} pkts {ch['in']['bytes']} B, "
                f"out {ch['out']['packets']} pkts {ch['out']['bytes']} B"
                + (f", drops {ch['drops']}" if ch["drops"] else "")
            )
    drops = st["dataplane"]["drops"]
    lines.append(f"  data plane drops: {drops if drops else 'none'}")
    return "\n".join(lines)


def _remote_text(peer: dict[str, Any]) -> str:
    """The configured address, what a DNS name resolved to, and where the peer is now
    if that is elsewhere (it moved, or sits behind a NAT): not just port 4500."""
    remote = str(peer["remote"])
    host, _, port = remote.rpartition(":")
    resolved = peer.get("resolved")
    if resolved and resolved != host:
        remote, host = f"{remote} ({resolved})", resolved
    address = peer.get("address")
    if address and address not in (f"{host}:{port}", f"{host}:4500"):
        remote = f"{remote} at {address}"
    return remote


if __name__ == "__main__":
    sys.exit(main())
