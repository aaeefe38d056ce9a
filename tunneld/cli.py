"""The ``tunneld`` command line.

    tunneld run -c FILE [--log-format text|json] [--log-level info]
    tunneld check -c FILE
    tunneld status (-c FILE | -s SOCKET) [--json]
    tunneld up PEER [--timeout SECONDS] (-c FILE | -s SOCKET)
    tunneld down PEER [--for SECONDS] [--timeout SECONDS] (-c FILE | -s SOCKET)
    tunneld rekey PEER [--ike | --child NAME] (-c FILE | -s SOCKET)
    tunneld reload (-c FILE | -s SOCKET)
    tunneld pki init-ca ... | tunneld pki issue ...

Exit codes: see EXIT_CODES (printed by ``--help``).

The control verbs (:data:`CONTROL_VERBS`) take a thin path: the standard
library and :mod:`tunneld.client` only, no trio, cryptography or pyroute2, so
that they start in a fraction of the daemon's time (docs/performance.md,
"Start-up"). ``run``, ``check`` and ``pki`` import what they need when run;
only ``pki`` builds the ``pki`` commands' parser (it imports :mod:`tunneld.pki`,
0.4 MB that a running daemon would carry for nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunneld import __version__, client

if TYPE_CHECKING:
    from tunneld.config import Config

CONTROL_VERBS = frozenset({"status", "up", "down", "rekey", "reload"})


class UsageError(Exception):
    """A configuration or usage error found by the CLI (exit 2)."""


EXIT_CODES = """\
exit codes:
  0  success; `up`: the peer's Child SA is up; `down`: its SAs are deleted
  1  failure: the daemon is unreachable or refused the command, or the peer's
     negotiation failed (`up` prints the reason: the peer's last error)
  2  usage or configuration error; `reload`: the daemon refused the new
     configuration (it prints the file, key and reason; the daemon runs on
     with the configuration it had)
  3  timeout: `up` or `down` did not finish within --timeout (prints the peer's state)
"""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
POLL_INTERVAL = 0.1  # seconds between two status requests while `up`/`down` wait


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(full=_subcommand(argv) == "pki")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"tunneld: {exc}", file=sys.stderr)
        return 2
    except client.ControlError as exc:
        print(f"tunneld: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _subcommand(argv: list[str]) -> str | None:
    """The subcommand word of ``argv`` (the first one not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def _load_config(path: Path) -> Config:
    """The full configuration (imports the daemon's world); UsageError if it is wrong."""
    from tunneld.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _parser(*, full: bool = True) -> argparse.ArgumentParser:
    """The command line; ``full=False`` leaves out the ``pki`` commands' options
    (they import cryptography and tunneld.pki) for every other verb: the control
    verbs' fast start, the daemon's memory."""
    p = argparse.ArgumentParser(
        prog="tunneld",
        description="userspace IPsec (IKEv2 + ESP) VPN",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tunneld {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "-c", "--config", required=True, type=Path, help="the gateway's configuration file (TOML)"
    )
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log line format (default: [gateway] log_format, else text)",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe level logged (default: [gateway] log_level, else info)",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument(
        "-c", "--config", required=True, type=Path, help="the configuration file to validate"
    )
    check.set_defaults(func=_cmd_check)

    status = sub.add_parser("status", help="show peers, SAs and counters of a running daemon")
    _add_target(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    up = sub.add_parser(
        "up",
        help="bring a peer's tunnel up and wait for its Child SA",
        description="End a hold (`down`), initiate now (unless an IKE SA is being set up) and "
        "wait until the peer's Child SA is up (exit 0), its negotiation fails (exit 1, with "
        "the peer's last error) or --timeout passes (exit 3). A peer with a dynamic address "
        "cannot be initiated to: `up` waits for it to connect.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("peer", help="the [[peer]] name")
    up.add_argument(
        "--timeout",
        type=_wait_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the Child SA (default 30; 0: do not wait)",
    )
    _add_target(up)
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser(
        "down",
        help="delete a peer's SAs and refuse its new ones until `tunneld up PEER`",
        description="Delete the peer's IKE and Child SAs (its routes go at once) and hold it "
        "down: IKE_SA_INIT from the peer is dropped and counted (refused_initiations) until "
        "`tunneld up PEER`, or with --for until SECONDS have passed; then the peer's "
        "configured auto applies again (auto = start initiates). Waits until the peer has "
        "answered the DELETE (its IKE SAs are gone), at most --timeout.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    down.add_argument("peer", help="the [[peer]] name")
    down.add_argument(
        "--for",
        dest="hold",
        type=_seconds,
        metavar="SECONDS",
        help="refuse the peer's new IKE SAs only this long (default: until `tunneld up`)",
    )
    down.add_argument(
        "--timeout",
        type=_wait_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the peer to answer the DELETE (default 10; 0: do not wait)",
    )
    _add_target(down)
    down.set_defaults(func=_cmd_down)

    rekey = sub.add_parser("rekey", help="rekey a peer's Child SAs now (--ike: its IKE SA)")
    rekey.add_argument("peer", help="the [[peer]] name")
    which = rekey.add_mutually_exclusive_group()
    which.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    which.add_argument("--child", help="rekey only the Child SAs of this [[peer.child]]")
    _add_target(rekey)
    rekey.set_defaults(func=_cmd_rekey)

    reload = sub.add_parser(
        "reload",
        help="make the daemon read its configuration file again and apply what changed",
        description="The daemon reads the configuration file it was started with again, "
        "checks it as `tunneld check` does and applies the difference (SIGHUP does the "
        "same): unchanged peers keep their SAs; lifetimes, limits and credentials apply to "
        "the next rekey or authentication; a peer with another identity, address or "
        "proposals is re-established make-before-break; a peer with other subnets is "
        "restarted; removed peers get a DELETE; new peers start. An invalid file, or a "
        "changed [gateway] key, is refused (exit 2) and the daemon runs on unchanged.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target(reload)
    reload.set_defaults(func=_cmd_reload)

    if full:
        from tunneld import pki

        pki.add_pki_subcommands(sub)
    else:
        sub.add_parser("pki", help="create a CA and issue gateway certificates")
    return p


def _add_target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("-c", "--config", type=Path, help="the daemon's configuration file")
    group.add_argument("-s", "--socket", type=Path, help="the daemon's control socket")


def _socket_of(args: argparse.Namespace) -> str:
    """The control socket: -s, else what the configuration names (read without
    loading it in full; a file that cannot be read so is loaded for its error)."""
    if args.socket is not None:
        return str(args.socket)
    path = client.control_socket_of(args.config)
    if path is None:
        path = _load_config(args.config).gateway.control_socket
    return str(path)


def _cmd_run(args: argparse.Namespace) -> int:
    import logging

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
    config = _load_config(args.config)
    setup_logging(
        args.log_format or config.gateway.log_format, args.log_level or config.gateway.log_level
    )

    async def main() -> None:
        await Daemon(config, handle_signals=True).run()

    try:
        try:
            trio.run(main)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except OSError as exc:
        logging.getLogger("tunneld").error("cannot start: %s", exc)
        return 1
    return 0


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a nursery wrapped (trio's strict exception groups), so that
    the CLI's handlers (OSError, ControlError, Ctrl-C) see what failed; a group of
    several stays a group (a traceback: more than one thing failed at once)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    from tunneld.config import describe

    peers = ", ".join(p.name for p in config.peers) or "none"
    print(f"{args.config}: ok (gateway {config.gateway.name}, peers: {peers})")
    print(describe(config))  # what the daemon will do with it (no secrets)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    response = client.request(_socket_of(args), {"cmd": "status"})
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


def _wait_seconds(text: str) -> float:
    """A --timeout: seconds, or 0 for "do not wait"."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return _seconds(text)


def _peer_status(path: str, name: str) -> dict[str, Any]:
    response = client.request(path, {"cmd": "status"})
    if not response.get("ok"):
        raise client.ControlError(str(response.get("error")))
    for peer in response.get("peers", []):
        if peer.get("name") == name:
            result: dict[str, Any] = peer
            return result
    raise client.ControlError(f"no peer named {name!r}")


def _command(path: str, request: dict[str, Any]) -> str | None:
    """Send ``request``; None if the daemon accepted it, else its reason."""
    response = client.request(path, request)
    return None if response.get("ok") else str(response.get("error"))


def _child_up(peer: dict[str, Any]) -> bool:
    return peer.get("state") == "established" and bool(peer.get("child_sas"))


def _cmd_up(args: argparse.Namespace) -> int:
    """Like `swanctl --initiate`: wait for the Child SA or for the reason it failed.
    The daemon clears the peer's last_error on `up`, so an error seen after it is new."""
    path = _socket_of(args)
    refused = _command(path, {"cmd": "up", "peer": args.peer})
    if refused is not None:
        print(f"tunneld: up {args.peer}: {refused}", file=sys.stderr)
        return EXIT_FAILED
    if args.timeout == 0:
        print(f"up {args.peer}: initiating (not waiting)")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while True:
        peer = _peer_status(path, args.peer)
        if _child_up(peer):
            child = peer["child_sas"][0]
            print(
                f"up {args.peer}: Child SA up ({child['spi_in']}_in {child['spi_out']}_out, "
                f"{','.join(child['local_ts'])} === {','.join(child['remote_ts'])}) "
                f"with {_remote_text(peer)}"
            )
            return EXIT_OK
        if peer.get("last_error"):
            print(f"tunneld: up {args.peer}: failed: {peer['last_error']}", file=sys.stderr)
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            print(f"tunneld: up {args.peer}: {_why_not_up(peer, args.timeout)}", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(POLL_INTERVAL)


def _why_not_up(peer: dict[str, Any], timeout: float) -> str:
    why = f"no Child SA after {timeout:g}s (state {peer.get('state')}"
    if peer.get("remote") is None and peer.get("address") is None:
        why += ", dynamic address: waiting for the peer to connect"
    if peer.get("half_open_ike_sas"):
        why += f", {peer['half_open_ike_sas']} half-open IKE SA(s)"
    if peer.get("last_unauthenticated_failure"):
        why += f", last unauthenticated failure: {peer['last_unauthenticated_failure']}"
    return why + ")"


def _cmd_down(args: argparse.Namespace) -> int:
    path = _socket_of(args)
    before = _peer_status(path, args.peer)
    request: dict[str, Any] = {"cmd": "down", "peer": args.peer}
    if args.hold is not None:
        request["for"] = args.hold
    refused = _command(path, request)
    if refused is not None:
        print(f"tunneld: down {args.peer}: {refused}", file=sys.stderr)
        return EXIT_FAILED
    until = f"for {args.hold:g}s" if args.hold is not None else f"until `tunneld up {args.peer}`"
    held = f"its new IKE SAs are refused {until}"
    ike, child = len(before["ike_sas"]), len(before["child_sas"])
    if not ike and not child:
        print(f"down {args.peer}: no SA was up; {held}")
        return EXIT_OK
    deleted = f"{_count(ike, 'IKE SA')} and {_count(child, 'Child SA')}"
    if args.timeout == 0:
        print(f"down {args.peer}: deleting {deleted} (not waiting); {held}")
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while True:
        after = _peer_status(path, args.peer)
        if not after["ike_sas"]:
            print(f"down {args.peer}: deleted {deleted} (DELETE answered); {held}")
            return EXIT_OK
        if time.monotonic() >= deadline:
            print(
                f"tunneld: down {args.peer}: Child SAs removed, but the peer has not answered "
                f"the DELETE within {args.timeout:g}s ({_count(len(after['ike_sas']), 'IKE SA')}"
                f" still held until it does or the retransmissions give up); {held}",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        time.sleep(POLL_INTERVAL)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _cmd_rekey(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": "rekey", "peer": args.peer, "ike": args.ike}
    if args.child is not None:
        request["child"] = args.child
    response = client.request(_socket_of(args), request)
    if not response.get("ok"):
        print(f"tunneld: {response.get('error')}", file=sys.stderr)
        return 1
    what = "IKE SA" if args.ike else "Child SAs" if args.child is None else f"child {args.child}"
    print(f"rekey {what} of {args.peer}: started")
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    # the socket also when the file no longer passes the checks (client.control_socket_of
    # reads only [gateway]): the daemon refuses the file itself, logs why and answers it
    response = client.request(_socket_of(args), {"cmd": "reload"}, timeout=30.0)
    if not response.get("ok"):
        print(f"tunneld: reload refused: {response.get('error')}", file=sys.stderr)
        return EXIT_USAGE
    print(format_reload(response.get("changes") or {}))
    return EXIT_OK


def format_reload(changes: dict[str, Any]) -> str:
    """``reload: 1 added (s3), 2 unchanged (s1, s2)``, and the keys per changed peer."""
    kinds = ("added", "removed", "restarted", "reauthenticated", "updated", "unchanged")
    parts = [
        f"{len(names)} {kind} ({', '.join(names)})"
        for kind in kinds
        if (names := changes.get(kind))
    ]
    lines = ["reload: " + (", ".join(parts) or "no peers")]
    for name, keys in (changes.get("keys") or {}).items():
        lines.append(f"  {name}: {', '.join(keys)}")
    return "\n".join(lines)


def _reception_lines(rec: dict[str, Any]) -> list[str]:
    """The reception (peers found by identity; docs/operations.md): only if it did anything."""
    hubs = rec.get("hubs", [])
    if not (hubs or rec.get("identity_unknown") or rec.get("half_open_ended")):
        return []
    line = (
        f"  reception: {rec.get('half_open_ike_sas', 0)} half-open, "
        f"{rec.get('identity_unknown', 0)} unknown identities"
    )
    if rec.get("last_unauthenticated_failure"):
        line += f", last refused: {rec['last_unauthenticated_failure']}"
    out = [line]
    for hub in hubs:
        out.append(
            f"  hub {hub['name']} ({hub['id']}): {hub['spokes']}/{hub['max_spokes']} spokes, "
            f"{hub['spokes_refused']} refused"
        )
    return out


def format_status(st: dict[str, Any]) -> str:
    """Human-readable status, one block per peer."""
    lines = [f"gateway {st['gateway']} (tun {st['tun']}, up {st['uptime']:.0f}s)"]
    for peer in st["peers"]:
        lines.append(_peer_line(peer))
        for ike in peer["ike_sas"]:
            lines.append(_ike_line(ike))
        if peer.get("closed_ike_sas"):
            n = peer["closed_ike_sas"]
            lines.append(f"    ({_count(n, 'closed IKE SA')} kept to answer retransmissions)")
        for ch in peer["child_sas"]:
            lines.extend(_child_lines(ch))
    lines += _reception_lines(st.get("reception") or {})
    if held := (st.get("deleted_ike_sas") or {}).get("held"):
        lines.append(f"  {_count(held, 'deleted IKE SA')} kept to answer retransmissions")
    lines.append(f"  data plane drops: {format_drops(st['dataplane']['drops'])}")
    return "\n".join(lines)


def format_drops(drops: dict[str, int]) -> str:
    """``{'no_policy': 1}`` as ``1 no_policy``; ``none`` when there are none."""
    shown = [f"{n} {reason}" for reason, n in sorted(drops.items()) if n]
    return ", ".join(shown) if shown else "none"


def _peer_line(peer: dict[str, Any]) -> str:
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
    return (
        f"  peer {peer['name']} [{peer['state']}] remote {_remote_text(peer)}{_nat_text(peer)}"
        f"{err}  liveness {live['state']} (heard {heard})"
    )


def _ike_line(ike: dict[str, Any]) -> str:
    role = ike.get("role", "?")
    spi_r = ike.get("spi_r") or "0" * 16
    words = [f"    IKE SA {ike['spi_i']}_i {spi_r}_r {role} {ike['state']}"]
    if ike.get("algorithms"):
        words.append(ike["algorithms"])
    if ike.get("remote_id"):
        words.append(f"id {ike['remote_id']}")
    if ike.get("superseded"):
        words.append("(superseded, until the peer deletes it)")
    return " ".join(words)


def _child_lines(ch: dict[str, Any]) -> list[str]:
    rekey = "-" if ch.get("rekey_in") is None else f"{ch['rekey_in']:.0f}s"
    drops = ch.get("drops")
    shown = f", drops {format_drops(drops)}" if drops else ""
    return [
        f"    Child SA {ch['spi_in']}_in {ch['spi_out']}_out {ch['algorithms']} "
        f"gen {ch['generation']} age {ch['age']:.0f}s rekey in {rekey}  "
        f"{','.join(ch['local_ts'])} === {','.join(ch['remote_ts'])}"
        + (f"  [child {ch['child']}]" if ch.get("child") else ""),
        f"      in {ch['in']['packets']} pkts {ch['in']['bytes']} B, "
        f"out {ch['out']['packets']} pkts {ch['out']['bytes']} B{shown}",
    ]


def _split_hostport(text: str) -> tuple[str, str]:
    """``1.2.3.4:500``, ``[2001:db8::1]:500`` or ``2001:db8::1:500`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), port


def _bracketed(host: str, port: str | int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remote_text(peer: dict[str, Any]) -> str:
    """Where the peer is now (the address and port its IKE SA and ESP use, e.g. 4500 after
    NAT-T), then what the configuration says if that is elsewhere (a DNS name and what it
    resolved to, another port, a peer that moved); a dynamic peer that is not connected
    says so. IPv6 addresses in brackets."""
    current = peer.get("address")
    configured = None
    host = ""
    if peer.get("remote") is not None:
        host, port = _split_hostport(str(peer["remote"]))
        configured = _bracketed(host, port)
        resolved = peer.get("resolved")
        if resolved and resolved != host:
            configured = f"{configured} ({resolved})"
    if current is None:
        return f"{configured} (not connected)" if configured else "dynamic, not connected"
    if configured is None:
        return f"{current} (dynamic)"
    now_host, _ = _split_hostport(str(current))
    if now_host == host:
        return str(current)
    if now_host == peer.get("resolved"):  # a DNS name: say which
        return f"{current} ({host})"
    return f"{current} (configured {configured})"


def _nat_text(peer: dict[str, Any]) -> str:
    """The established IKE SA's role and NAT-T, e.g. ``, initiator, NAT-T, we are behind a
    NAT``. (NAT-T is on also without a NAT: ESP always goes in UDP 4500, and a peer that
    forces encapsulation fakes its NAT detection hash, so only our own side is certain.)"""
    for ike in peer["ike_sas"]:
        if ike.get("state") == "established" and not ike.get("superseded"):
            text = f", {ike.get('role')}"
            if ike.get("nat_t"):
                text += ", NAT-T"
            if ike.get("behind_nat"):
                text += ", NAT detected: we are behind a NAT"
            return text
    return ""


if __name__ == "__main__":
    sys.exit(main())
