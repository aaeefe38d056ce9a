"""Driving the namespace lab from Python: the demo, the netns tests and the benchmark share it.

:class:`Lab` wraps ``netns-scripts/lab.sh`` (namespaces ``PREFIX-a``,
``PREFIX-gwa``, ``PREFIX-wan``, ``PREFIX-gwb``, ``PREFIX-b``);
:class:`Gateway` runs one ``tunneld run`` in a gateway namespace and talks to
it over its control socket; :func:`write_site_configs` writes the two
gateways' configuration files. Nothing here is needed by the daemon itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunneld import control, pki

REPO = Path(__file__).resolve().parent.parent
LAB_SH = REPO / "netns-scripts" / "lab.sh"

# The lab's addresses (netns-scripts/lab.sh): documentation ranges only.
GWA_UNDERLAY = "192.0.2.1"
GWB_UNDERLAY = "192.0.2.2"
SITE_A = "198.51.100.0/24"
SITE_B = "203.0.113.0/24"
HOST_A = "198.51.100.10"
HOST_B = "203.0.113.10"


def unique_prefix(stem: str = "t") -> str:
    """A namespace prefix unique to this run (lab.sh wants <= 8 chars of [a-z0-9])."""
    return f"{stem}{secrets.token_hex(3)}"[:8]


class Lab:
    """Two sites, two gateways and a WAN in network namespaces."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def up(self) -> None:
        subprocess.run(["bash", str(LAB_SH), "up", self.prefix], check=True, capture_output=True)

    def down(self) -> None:
        subprocess.run(["bash", str(LAB_SH), "down", self.prefix], check=False, capture_output=True)

    def run(
        self, node: str, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, node: str, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(node), *cmd], **kw)

    @contextlib.contextmanager
    def running(self) -> Iterator[Lab]:
        self.down()
        try:
            self.up()
            yield self
        finally:
            self.down()


@dataclass
class Gateway:
    """One ``tunneld run`` process inside a gateway namespace."""

    lab: Lab
    node: str  # "gwa" or "gwb"
    config: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # the daemon's environment (None: ours)
    cwd: Path | None = None  # its working directory (`python -m` imports from there first)

    def start(self, *extra: str) -> None:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = self.lab.popen(
            self.node,
            sys.executable,
            "-m",
            "tunneld.cli",
            "run",
            "-c",
            str(self.config),
            *extra,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        logf.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (DELETE to peers, routes and TUN removed), SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        return control.request(str(self.socket), payload)

    def status(self) -> dict[str, Any]:
        return self.request({"cmd": "status"})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunneld.cli", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def child_sas(self, peer: str | None = None) -> list[dict[str, Any]]:
        try:
            st = self.status()
        except control.ControlError:
            return []
        return [
            ch
            for p in st.get("peers", [])
            if peer is None or p["name"] == peer
            for ch in p["child_sas"]
        ]

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the control socket answers: TUN open, UDP bound, peers started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tunneld on {self.node} exited: {self.tail_log()}")
            with contextlib.suppress(control.ControlError):
                if self.status().get("ok"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"tunneld on {self.node} not ready after {timeout}s: {self.tail_log()}")

    def wait_for_child(self, timeout: float = 20.0, peer: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tunneld on {self.node} exited: {self.tail_log()}")
            children = self.child_sas(peer)
            if children:
                return children[0]
            time.sleep(0.1)
        raise TimeoutError(f"no Child SA on {self.node} after {timeout}s: {self.tail_log()}")

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- configuration files for the two-site lab ---------------------------------

PEER_BLOCK = """
[[peer]]
name = "{peer_name}"
{address_line}
id = "{peer_id}"
auto = "{auto}"
local_subnets = ["{local_subnet}"]
remote_subnets = ["{remote_subnet}"]
ike = [{ike}]
esp = [{esp}]
{auth_lines}{extra}
"""

GATEWAY_BLOCK = """# written by tools.lab for the namespace lab
[gateway]
name = "{name}"
listen = ["{listen}"]
tun = "{tun}"
mtu = {mtu}
control_socket = "{socket}"
log_format = "{log_format}"

[identity]
id = "{local_id}"
{identity_lines}"""


@dataclass
class SiteOptions:
    auth: str = "pubkey"  # or "psk"
    ike: Sequence[str] = ("aes256gcm16-prfsha256-x25519",)
    esp: Sequence[str] = ("aes256gcm16",)
    auto_a: str = "start"
    auto_b: str = "listen"
    key_type: str = "ecdsa"
    pki_via_cli: bool = False  # the demo shows the real `tunneld pki` commands
    mtu: int = 1400
    log_format: str = "text"
    extra_peer: str = ""  # additional TOML lines in both [[peer]] tables
    # named Child SAs instead of the top-level selectors: (name, site A subnet,
    # site B subnet, extra TOML lines of both [[peer.child]] tables)
    children: Sequence[tuple[str, str, str, str]] = ()


# The second pair of halves of the sites, for labs with two Child SAs: a host
# address in each upper half (the lower halves hold the hosts' .10).
SITE_A_HALVES = ("198.51.100.0/25", "198.51.100.128/25")
SITE_B_HALVES = ("203.0.113.0/25", "203.0.113.128/25")
TWO_CHILDREN = (
    ("low", SITE_A_HALVES[0], SITE_B_HALVES[0], ""),
    ("high", SITE_A_HALVES[1], SITE_B_HALVES[1], ""),
)


def _child_tables(children: Sequence[tuple[str, str, str, str]], side_a: bool) -> str:
    """``[[peer.child]]`` tables for one side (local/remote swap between the sides)."""
    out = ""
    for name, net_a, net_b, extra in children:
        local, remote = (net_a, net_b) if side_a else (net_b, net_a)
        out += (
            f'\n[[peer.child]]\nname = "{name}"\n'
            f'local_subnets = ["{local}"]\nremote_subnets = ["{remote}"]\n{extra}'
        )
    return out


def make_pki(directory: Path, *, key_type: str = "ecdsa", cli: bool = False) -> dict[str, Path]:
    """A throwaway CA and one certificate per gateway (``cli``: through ``tunneld pki``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = directory / "ca"
    if cli:
        _tunneld(
            "pki", "init-ca", "--out", str(ca), "--name", "tunneld lab CA", "--key-type", key_type
        )
    else:
        pki.init_ca(ca, "tunneld lab CA", key_type=key_type)  # type: ignore[arg-type]
    for name, ip in (("gw-a", GWA_UNDERLAY), ("gw-b", GWB_UNDERLAY)):
        dns = f"{name}.example.org"
        if cli:
            _tunneld(
                "pki", "issue", "--ca", str(ca), "--name", name, "--dns", dns, "--ip", ip,
                "--out", str(directory), "--key-type", key_type,
            )  # fmt: skip
        else:
            pki.issue(ca, name, directory, dns=[dns], ips=[ip], key_type=key_type)  # type: ignore[arg-type]
    return {
        "ca": ca / "ca.pem",
        "gw-a.pem": directory / "gw-a.pem",
        "gw-a.key": directory / "gw-a.key",
        "gw-b.pem": directory / "gw-b.pem",
        "gw-b.key": directory / "gw-b.key",
    }


def _tunneld(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunneld.cli", *args], check=True, capture_output=True)


def write_psk(directory: Path) -> Path:
    path = directory / "psk.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("0x" + secrets.token_hex(32) + "\n")
    return path


def _quote_list(items: Sequence[str]) -> str:
    return ", ".join(json.dumps(s) for s in items)


def write_site_configs(
    directory: Path, prefix: str, opts: SiteOptions | None = None
) -> tuple[Path, Path]:
    """Configuration files for gateway A and gateway B of the lab."""
    opts = opts or SiteOptions()
    directory.mkdir(parents=True, exist_ok=True)
    certs = (
        make_pki(directory / "pki", key_type=opts.key_type, cli=opts.pki_via_cli)
        if opts.auth == "pubkey"
        else {}
    )
    psk = write_psk(directory) if opts.auth == "psk" else None
    sides = (
        ("gw-a", GWA_UNDERLAY, GWB_UNDERLAY, "gw-b", SITE_A, SITE_B, opts.auto_a),
        ("gw-b", GWB_UNDERLAY, GWA_UNDERLAY, "gw-a", SITE_B, SITE_A, opts.auto_b),
    )
    paths = []
    for name, me, other, peer, local, remote, auto in sides:
        if opts.auth == "pubkey":
            local_id, peer_id = f"{name}.example.org", f"{peer}.example.org"
            identity_lines = (
                f'certificate = "{certs[name + ".pem"]}"\n'
                f'private_key = "{certs[name + ".key"]}"\n'
                f'ca = ["{certs["ca"]}"]\n'
            )
            auth_lines = ""
        else:
            local_id, peer_id = me, other
            identity_lines = ""
            auth_lines = f'auth = "psk"\npsk_file = "{psk}"\n'
        text = GATEWAY_BLOCK.format(
            name=name,
            listen=me,
            tun="tunneld0",
            mtu=opts.mtu,
            socket=directory / f"{name}.sock",
            log_format=opts.log_format,
            local_id=local_id,
            identity_lines=identity_lines,
        ) + PEER_BLOCK.format(
            peer_name=peer,
            address_line=f'address = "{other}"',
            peer_id=peer_id,
            auto=auto,
            local_subnet=local,
            remote_subnet=remote,
            ike=_quote_list(opts.ike),
            esp=_quote_list(opts.esp),
            auth_lines=auth_lines,
            extra=opts.extra_peer,
        )
        if opts.children:  # named Child SAs replace the top-level selectors
            text = re.sub(r"(?m)^(local|remote)_subnets = .*\n", "", text)
            text += _child_tables(opts.children, side_a=name == "gw-a")
        path = directory / f"{name}.toml"
        path.write_text(text)
        paths.append(path)
    return paths[0], paths[1]


def gateways(lab: Lab, directory: Path, conf_a: Path, conf_b: Path) -> tuple[Gateway, Gateway]:
    return (
        Gateway(lab, "gwa", conf_a, directory / "gw-a.sock", directory / "gw-a.log"),
        Gateway(lab, "gwb", conf_b, directory / "gw-b.sock", directory / "gw-b.log"),
    )
