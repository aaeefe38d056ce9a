"""strongSwan as the other gateway: a thin wrapper around netns-scripts/strongswan.sh.

One `StrongSwan` object is one charon running in one network namespace, with
everything it owns (configuration, credentials, log, vici socket) in one
directory. The methods are blocking (they run swanctl); from a trio test that
also runs tunneld in-process, call them through `trio.to_thread.run_sync` so
that the IKE exchange they wait for can progress.

`list_sas_raw()` returns the raw vici `list-sa` messages, not swanctl's human
summary. It reads `--list-sas --pretty` (the same message, one item per line)
because `--raw` prints values unquoted on one line, which is ambiguous for
identities that contain spaces, such as distinguished names.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "netns-scripts" / "strongswan.sh"
CHARON = "/usr/lib/ipsec/charon"

# A vici message as parsed: sections are dicts, lists are lists of str.
ViciValue = str | list[str] | dict[str, Any]


class SwanError(Exception):
    """strongswan.sh or swanctl failed; carries the command's output."""


@dataclass(frozen=True)
class SwanConfig:
    """One gateway's connection, mapped one to one onto strongswan.sh options."""

    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    local_ts: str
    remote_ts: str
    auth: Literal["pubkey", "psk"]
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    psk_file: Path | None = None
    ike: str = "aes256gcm16-prfsha256-x25519"
    esp: str = "aes256gcm16"
    esn: Literal["yes", "no", "both"] = "no"
    rekey_time: str = "1h"
    life_time: str | None = None  # swanctl: rekey_time + 10%; give it for short rekey times
    ike_rekey_time: str = "4h"
    ike_over_time: str | None = None  # swanctl: 10% of ike_rekey_time
    reauth_time: str = "0s"  # 0: no periodic reauthentication
    dpd_delay: str = "0s"
    start_action: Literal["none", "start", "trap"] = "none"
    make_before_break: bool = False
    delete_rekeyed_delay: int = 5
    replay_window: int = 32
    send_cert: Literal["always", "ifasked", "never"] = "always"
    conn: str = "gw"
    child: str = "net"
    # more children with the same settings: (name, local_ts, remote_ts)
    extra_children: tuple[tuple[str, str, str], ...] = ()
    log_levels: tuple[str, ...] = field(default=())  # e.g. ("enc=2",)

    def script_args(self) -> list[str]:
        """The options for `strongswan.sh start`, in the script's spelling."""
        pairs: list[tuple[str, object | None]] = [
            ("--local-addr", self.local_addr),
            ("--remote-addr", self.remote_addr),
            ("--local-id", self.local_id),
            ("--remote-id", self.remote_id),
            ("--local-ts", self.local_ts),
            ("--remote-ts", self.remote_ts),
            ("--auth", self.auth),
            ("--cert", self.cert),
            ("--key", self.key),
            ("--ca", self.ca),
            ("--psk-file", self.psk_file),
            ("--ike", self.ike),
            ("--esp", self.esp),
            ("--esn", self.esn),
            ("--rekey-time", self.rekey_time),
            ("--life-time", self.life_time),
            ("--ike-rekey-time", self.ike_rekey_time),
            ("--ike-over-time", self.ike_over_time),
            ("--reauth-time", self.reauth_time),
            ("--dpd-delay", self.dpd_delay),
            ("--start-action", self.start_action),
            ("--make-before-break", "yes" if self.make_before_break else "no"),
            ("--delete-rekeyed-delay", self.delete_rekeyed_delay),
            ("--replay-window", self.replay_window),
            ("--send-cert", self.send_cert),
            ("--conn", self.conn),
            ("--child", self.child),
        ]
        pairs += [("--extra-child", ",".join(extra)) for extra in self.extra_children]
        pairs += [("--log", level) for level in self.log_levels]
        args: list[str] = []
        for option, value in pairs:
            if value is not None:
                args += [option, str(value)]
        return args


class StrongSwan:
    """charon in namespace `ns`, owning `directory`."""

    def __init__(self, ns: str, directory: Path, script: Path = SCRIPT) -> None:
        self.ns = ns
        self.directory = Path(directory)
        self.script = script
        self.config: SwanConfig | None = None
        self.started_pid: int | None = None

    def __repr__(self) -> str:  # configs may name a PSK file: never its content
        return f"StrongSwan(ns={self.ns!r}, directory={str(self.directory)!r})"

    @property
    def log_path(self) -> Path:
        return self.directory / "charon.log"

    @property
    def vici_uri(self) -> str:
        return f"unix://{self.directory}/charon.vici"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- lifecycle ---------------------------------------------------------

    def start(self, config: SwanConfig, timeout: int = 15) -> None:
        """Write the configuration, start charon, load it; raises SwanError."""
        self.config = config
        args = ["start", "--ns", self.ns, "--dir", str(self.directory)]
        args += [*config.script_args(), "--timeout", str(timeout)]
        self._script(*args, timeout=timeout + 10)
        self.started_pid = int((self.directory / "daemon.pid").read_text())

    def stop(self) -> None:
        """Kill charon (SIGTERM, then SIGKILL) and check it is gone."""
        self._script("stop", "--dir", str(self.directory), timeout=20)
        left = charons_using(self.directory)
        if left:
            raise SwanError(f"charon {left} still running after stop")

    def running(self) -> bool:
        return self.started_pid is not None and pid_alive(self.started_pid)

    # --- swanctl -----------------------------------------------------------

    def swanctl(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon (the script adds --uri)."""
        return self._script(
            "swanctl", "--dir", str(self.directory), "--", *args, timeout=timeout, check=check
        )

    def initiate(self, child: str | None = None, timeout: int = 10) -> None:
        self.swanctl(
            "--initiate", "--child", child or self._config().child, "--timeout", str(timeout),
            timeout=timeout + 5,
        )  # fmt: skip

    def rekey_child(self, child: str | None = None) -> None:
        self.swanctl("--rekey", "--child", child or self._config().child)

    def rekey_ike(self, ike: str | None = None) -> None:
        self.swanctl("--rekey", "--ike", ike or self._config().conn)

    def reauthenticate(self, ike: str | None = None) -> None:
        """A new IKE SA and Child SAs from scratch (IKE_SA_INIT, IKE_AUTH), then the old
        IKE SA deleted; with make_before_break the new one comes up first."""
        self.swanctl("--rekey", "--ike", ike or self._config().conn, "--reauth")

    def terminate(self, ike: str | None = None, child: str | None = None) -> None:
        """Close the named Child SA, else the named (or configured) IKE SA."""
        which = ["--child", child] if child else ["--ike", ike or self._config().conn]
        self.swanctl("--terminate", *which, "--timeout", "5", timeout=10)

    def list_sas_raw(self) -> list[dict[str, Any]]:
        """One dict per IKE SA: `name` (the connection) plus the vici fields,
        with `child-sas` a dict of child dicts keyed `<child>-<uniqueid>`."""
        events = parse_vici_pretty(self.swanctl("--list-sas", "--pretty").stdout)
        sas: list[dict[str, Any]] = []
        for event_name, body in events:
            if event_name != "list-sa event" or not isinstance(body, dict):
                continue
            for conn, sa in body.items():
                if isinstance(sa, dict):
                    sas.append({"name": conn, **sa})
        return sas

    def child_sas(
        self, child: str | None = None, state: str | None = "INSTALLED"
    ) -> list[dict[str, Any]]:
        """Child SAs named `child` (default: the configured one) in `state`
        (None: any state), across all IKE SAs, oldest first."""
        name = child or self._config().child
        found = [
            c
            for sa in self.list_sas_raw()
            for c in sa.get("child-sas", {}).values()
            if c.get("name") == name and (state is None or c.get("state") == state)
        ]
        return sorted(found, key=lambda c: int(c.get("uniqueid", 0)))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
        """Poll `predicate` every 50 ms; raise SwanError with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_text().splitlines()[-30:])
                raise SwanError(f"timed out waiting for {what or predicate}:\n{tail}")
            time.sleep(0.05)

    # --- internals ---------------------------------------------------------

    def _config(self) -> SwanConfig:
        if self.config is None:
            raise SwanError("start() first")
        return self.config

    def _script(
        self, *args: str, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.script), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise SwanError(
                f"strongswan.sh {args[0]} failed ({proc.returncode}): "
                f"{proc.stdout.strip()}\n{proc.stderr.strip()}"
            )
        return proc


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def charons_using(directory: Path) -> list[int]:
    """Running (non-zombie) charons started with `directory`'s strongswan.conf:
    finds a charon even when its pid file is gone, for leak checks."""
    marker = f"STRONGSWAN_CONF={Path(directory).resolve()}/strongswan.conf".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/exe") != CHARON:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


# --- the vici message as printed by `swanctl --pretty` -------------------------


def parse_vici_pretty(text: str) -> list[tuple[str, ViciValue]]:
    """Parse swanctl's pretty vici dump into (message name, section) pairs.

    Grammar, one item per line: `name {` opens a section, `}` closes it,
    `key = [` opens a list whose items are bare lines up to `]`, and
    `key = value` is a key/value pair (the value may contain spaces).
    """
    lines = iter(line.strip() for line in text.splitlines())
    messages: list[tuple[str, ViciValue]] = []
    for line in lines:
        if not line:
            continue
        if not line.endswith(" {"):
            raise ValueError(f"expected a message, got {line!r}")
        messages.append((line[:-2], _parse_section(lines)))
    return messages


def _parse_section(lines: Iterator[str]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for line in lines:
        if line == "}":
            return section
        if line.endswith(" {"):
            section[line[:-2]] = _parse_section(lines)
        elif line.endswith(" = ["):
            section[line[:-4]] = _parse_list(lines)
        elif " = " in line:
            key, value = line.split(" = ", 1)
            section[key] = value
        elif line.endswith(" ="):  # an empty value
            section[line[:-2]] = ""
        else:
            raise ValueError(f"unexpected line {line!r}")
    raise ValueError("unterminated section")


def _parse_list(lines: Iterator[str]) -> list[str]:
    items: list[str] = []
    for line in lines:
        if line == "]":
            return items
        items.append(line)
    raise ValueError("unterminated list")
