"""The handshake benchmark: strongSwan initiating many IKE SAs against a tunneld hub.

Two modes (``--mode``), one topology (``netns-scripts/lab.sh``: gateway A 192.0.2.1
and gateway B 192.0.2.2 on one bridge):

- ``rate``: ``tunneld run`` in gateway B is the responder, with one identity-pattern
  peer entry (``*.branch.example.org``, ECDSA P-256 certificates, max_spokes = N).
  One charon in gateway A has N connections, spoke i with identity
  ``s<i>.branch.example.org``, its own certificate, its own source address among
  ``--addresses`` on one veth (192.0.2.10 up) and its own IPv6 /64 of the pool
  2001:db8:1::/48 (documentation range; an IPv4 /24 holds too few spokes). Each
  batch initiates all N IKE+Child SAs at once (pipelined vici ``initiate`` with
  no wait), counts charon's ``child-updown`` events until all N are up, then
  terminates them all and waits for every ``ike-updown``. Per batch: SAs/s
  (wall clock, first initiate to last Child SA up), the responder's CPU time per
  SA (utime + stime from ``/proc/PID/stat``), its RSS after the deletes.
- ``hub``: N spokes, measured from the moment ``tunneld run`` is started (charon
  already loaded): the time until all N Child SAs are up, the hub's RSS then,
  and how long ``tunneld status --json`` takes (median of 3 CLI runs).

``--json`` ends the output with one JSON object. Everything (namespaces,
charon, tunneld, the temporary directory) is torn down also on failure, Ctrl-C
or SIGTERM. Nothing here is part of the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tools.lab import REPO, Gateway, Lab, unique_prefix
from tools.vici import Vici
from tunneld import pki

CHARON = "/usr/lib/ipsec/charon"
RESPONDER = "192.0.2.2"
DOMAIN = "branch.example.org"
HUB_SITE = "2001:db8:ffff::/48"
POOL = "2001:db8:1::/48"
MAX_ADDRESSES = 200  # 192.0.2.10 .. 192.0.2.209
PLUGINS = (
    "random nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints "
    "curve25519 kernel-libipsec kernel-netlink socket-default vici"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def spoke_id(i: int) -> str:
    return f"s{i}.{DOMAIN}"


def spoke_subnet(i: int) -> str:
    return f"2001:db8:1:{i:x}::/64"


def spoke_inner(i: int) -> str:
    return f"2001:db8:1:{i:x}::1"


def spoke_address(i: int, addresses: int) -> str:
    return f"192.0.2.{10 + i % addresses}"


# --- /proc ------------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (utime, stime of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --- files ------------------------------------------------------------------------------


def write_pki(work: Path, peers: int) -> Path:
    """The CA, the hub's certificate and one per spoke (ECDSA P-256), all in work/pki."""
    out = work / "pki"
    pki.init_ca(out / "ca", "tunneld handshake bench CA")
    pki.issue(out / "ca", "hub", out, dns=["hub.example.org"], ips=[RESPONDER])
    for i in range(peers):
        pki.issue(out / "ca", f"s{i}", out, dns=[spoke_id(i)])
    return out


def write_hub_config(work: Path, pki_dir: Path, peers: int) -> Path:
    text = f"""# written by tools.bench_handshake
[gateway]
name = "hub"
listen = ["{RESPONDER}"]
tun = "hs0"
mtu = 1400
control_socket = "{work / "hub.sock"}"
log_format = "json"

[identity]
id = "hub.example.org"
certificate = "{pki_dir / "hub.pem"}"
private_key = "{pki_dir / "hub.key"}"
ca = ["{pki_dir / "ca" / "ca.pem"}"]

[[peer]]
name = "branches"
id = "*.{DOMAIN}"
auto = "listen"
local_subnets = ["{HUB_SITE}"]
remote_subnets = ["{POOL}"]
max_spokes = {max(peers, 1)}
dpd_delay = "0s"
ike = ["aes256gcm16-prfsha256-x25519"]
esp = ["aes256gcm16"]
"""
    path = work / "hub.toml"
    path.write_text(text)
    return path


def conf_lines(settings: dict[str, str]) -> list[str]:
    """strongswan.conf lines for dotted keys: ``a.b = v`` becomes ``a {`` ``b = v`` ``}``."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})
        node[leaf] = value
    return _conf_tree(tree)


def _conf_tree(tree: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += [f"{key} {{", *("  " + line for line in _conf_tree(value)), "}"]
        else:
            lines.append(f"{key} = {value}")
    return lines


def write_charon_dir(
    directory: Path,
    pki_dir: Path,
    peers: int,
    addresses: int,
    settings: dict[str, str] | None = None,
) -> None:
    """strongswan.conf and swanctl/ (one connection and certificate per spoke).

    ``mobike = no``: tunneld does not do MOBIKE (DESIGN.md §2), and with it
    charon put MOBIKE_SUPPORTED and up to eight ADDITIONAL_IP*_ADDRESS notifies
    (its other local addresses: the one process holds hundreds, for all
    spokes) into every IKE_AUTH, which the responder parsed and ignored; a
    spoke on a device of its own would list its one or two.

    ``settings`` are extra keys of the ``charon`` section (``threads``, ...);
    ``log_level`` sets the file log's default level.
    """
    extra = dict(settings or {})
    log_level = extra.pop("log_level", "0")
    extra_lines = "".join(f"  {line}\n" for line in conf_lines(extra))
    sw = directory / "swanctl"
    for sub in ("conf.d", "x509", "x509ca", "private", "pubkey", "x509crl", "rsa", "ecdsa"):
        (sw / sub).mkdir(parents=True, exist_ok=True)
    (directory / "strongswan.conf").write_text(f"""# written by tools.bench_handshake
charon {{
  load_modular = no
  load = {PLUGINS}
  install_routes = no
  retransmit_timeout = 4.0
  retransmit_tries = 5
  ikesa_table_size = 4096
{extra_lines}  plugins {{
    vici {{
      socket = unix:///run/charon.vici
    }}
    revocation {{
      enable_ocsp = no
      enable_crl = no
    }}
  }}
  filelog {{
    charon {{
      path = /run/charon.log
      append = yes
      time_format = %F %T
      default = {log_level}
    }}
  }}
}}
""")
    shutil.copy(pki_dir / "ca" / "ca.pem", sw / "x509ca" / "ca.pem")
    conns = []
    for i in range(peers):
        shutil.copy(pki_dir / f"s{i}.pem", sw / "x509" / f"s{i}.pem")
        shutil.copy(pki_dir / f"s{i}.key", sw / "private" / f"s{i}.pem")
        conns.append(f"""  c{i} {{
    version = 2
    local_addrs = {spoke_address(i, addresses)}
    remote_addrs = {RESPONDER}
    proposals = aes256gcm16-prfsha256-x25519
    encap = yes
    mobike = no
    rekey_time = 0
    reauth_time = 0
    dpd_delay = 0
    send_cert = always
    local {{
      auth = pubkey
      certs = s{i}.pem
      id = "{spoke_id(i)}"
    }}
    remote {{
      auth = pubkey
      cacerts = ca.pem
      id = "hub.example.org"
    }}
    children {{
      net {{
        mode = tunnel
        local_ts = {spoke_subnet(i)}
        remote_ts = {HUB_SITE}
        esp_proposals = aes256gcm16-noesn
        rekey_time = 0
        start_action = none
      }}
    }}
  }}
""")
    (sw / "swanctl.conf").write_text("connections {\n" + "".join(conns) + "}\n")


# --- charon -----------------------------------------------------------------------------


@dataclass
class Charon:
    lab: Lab
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def vici_path(self) -> str:
        return str(self.directory / "charon.vici")

    def start(self, timeout: float = 20) -> None:
        env = {**os.environ, "STRONGSWAN_CONF": str(self.directory / "strongswan.conf")}
        with open(self.directory / "charon.stdout", "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns("gwa"), "unshare", "--mount",
                 "--propagation", "private", "/bin/sh", "-c",
                 'mount --bind "$1" /run && exec "$2"', "charon-netns",
                 str(self.directory), CHARON],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self._swanctl("--stats", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"charon did not start: {self.log_tail()}")
            time.sleep(0.1)
        loaded = self._swanctl("--load-all", "--noprompt", check=False, timeout=600)
        if loaded.returncode != 0:
            raise BenchError(f"swanctl --load-all failed: {loaded.stdout[-800:]}")

    def _swanctl(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SWANCTL_DIR": str(self.directory / "swanctl"),
            "STRONGSWAN_CONF": str(self.directory / "strongswan.conf"),
        }
        return subprocess.run(
            ["swanctl", *args, "--uri", f"unix://{self.vici_path}"],
            env=env, capture_output=True, text=True, timeout=timeout, check=check,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "charon.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- one batch ----------------------------------------------------------------------------


@dataclass
class Batch:
    seconds: float
    established: int
    responder_cpu_s: float
    rss_mb_after_delete: float
    rss_mb_up: float
    responder_system_s: float = 0.0
    initiator_cpu_s: float = 0.0

    @property
    def sas_per_s(self) -> float:
        return self.established / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_sa(self) -> float:
        return 1000 * self.responder_cpu_s / self.established if self.established else 0.0


def wait_events(events: Vici, kind: str, up: bool, count: int, timeout: float) -> int:
    """Count ``kind`` events (``up = yes`` or not) until ``count`` or the timeout."""
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        event = events.next_event(timeout=left)
        if event is None:
            break
        name, body = event
        if name == kind and (body.get("up") == "yes") == up:
            seen += 1
    return seen


def initiate_all(commands: Vici, peers: int) -> None:
    for i in range(peers):
        commands.send_command("initiate", {"ike": f"c{i}", "child": "net", "timeout": "-1"})
    for _ in range(peers):
        commands.next_answer()


def terminate_all(commands: Vici, peers: int) -> None:
    for i in range(peers):
        commands.send_command("terminate", {"ike": f"c{i}", "timeout": "-1"})
    for _ in range(peers):
        commands.next_answer()


def run_batch(
    pid: int, charon: int, commands: Vici, events: Vici, peers: int, timeout: float
) -> Batch:
    user0, system0 = cpu_times(pid)
    charon0 = cpu_seconds(charon)
    start = time.monotonic()
    initiate_all(commands, peers)
    established = wait_events(events, "child-updown", True, peers, timeout)
    seconds = time.monotonic() - start
    user1, system1 = cpu_times(pid)
    charon_cpu = cpu_seconds(charon) - charon0
    cpu = user1 - user0 + system1 - system0
    rss_up = rss_mb(pid)
    terminate_all(commands, peers)
    wait_events(events, "ike-updown", False, established, timeout)
    time.sleep(0.5)  # the responder's DELETE answers, then its bookkeeping
    return Batch(seconds, established, cpu, rss_mb(pid), rss_up, system1 - system0, charon_cpu)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    lab: Lab
    work: Path
    peers: int
    addresses: int
    charon: Charon | None = None
    hub: Gateway | None = None
    started_at: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    charon_settings: dict[str, str] = field(default_factory=dict)
    responder_tree: Path | None = None  # a checkout whose tunneld runs the hub

    def _tree_env(self) -> dict[str, str] | None:
        if self.responder_tree is None:
            return None
        return {**os.environ, "PYTHONPATH": str(self.responder_tree)}

    def setup(self) -> None:
        self.lab.up()
        iface = f"{self.lab.prefix}-ga0"
        batch = self.work / "addresses.ip"
        lines = [f"addr add 192.0.2.{10 + k}/24 dev {iface}" for k in range(self.addresses)]
        # charon (kernel-libipsec) routes a Child SA only with a local address in its TSi
        lines += [f"addr add {spoke_inner(i)}/64 dev lo" for i in range(self.peers)]
        batch.write_text("\n".join(lines) + "\n")
        self.lab.run("gwa", "ip", "-batch", str(batch))
        pki_dir = write_pki(self.work, self.peers)
        config = write_hub_config(self.work, pki_dir, self.peers)
        charon_dir = self.work / "charon"
        write_charon_dir(charon_dir, pki_dir, self.peers, self.addresses, self.charon_settings)
        self.charon = Charon(self.lab, charon_dir)
        self.charon.start()
        self.hub = Gateway(
            self.lab, "gwb", config, self.work / "hub.sock", self.work / "hub.log",
            env=self._tree_env(), cwd=self.responder_tree,
        )  # fmt: skip

    def start_hub(self) -> int:
        assert self.hub is not None
        self.started_at = time.monotonic()
        self.hub.start()
        self.hub.wait_ready(30)
        assert self.hub.proc is not None
        return self.hub.proc.pid

    def status_seconds(self, rounds: int = 3) -> list[float]:
        assert self.hub is not None
        times = []
        for _ in range(rounds):
            t = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "tunneld.cli", "status", "--json",
                 "--socket", str(self.hub.socket)],
                capture_output=True, text=True, timeout=60, check=False,
                env=self._tree_env(), cwd=self.responder_tree,
            )  # fmt: skip
            times.append(time.monotonic() - t)
            if out.returncode != 0:
                raise BenchError(f"tunneld status failed: {out.stderr[-400:]}")
        return times

    def teardown(self) -> None:
        if self.hub is not None:
            self.hub.stop(20)
        if self.charon is not None:
            self.charon.stop()
        self.lab.down()


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, gil: bool = False) -> Iterator[None]:
    """py-spy (from PATH) samples ``pid`` while the block runs, if ``out`` is given;
    ``gil``: only samples holding the GIL (CPU in Python, not a ``sendto`` descheduled)."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
         "--nonblocking", "--output", str(out), *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def run_rate(
    run: Run,
    batches: int,
    timeout: float,
    profile: Path | None = None,
    settle: float = 0.0,
    gil: bool = False,
) -> dict[str, Any]:
    pid = run.start_hub()
    assert run.charon is not None
    commands, events = Vici(run.charon.vici_path), Vici(run.charon.vici_path)
    events.register("child-updown")
    events.register("ike-updown")
    rss_start = rss_mb(pid)
    assert run.charon.proc is not None
    charon_pid = run.charon.proc.pid
    settled: dict[str, float] = {}
    for b in range(batches):
        with profiled(pid, profile.with_suffix(f".{b + 1}.txt") if profile else None, gil):
            batch = run_batch(pid, charon_pid, commands, events, run.peers, timeout)
        run.batches.append(batch)
        if settle and b in (0, batches - 1):
            time.sleep(settle)  # deleted IKE SAs linger to answer retransmissions
            settled[str(run.peers * (b + 1))] = rss_mb(pid)
            print(f"RSS {rss_mb(pid):.1f} MB {settle:.0f} s later", file=sys.stderr, flush=True)
        print(
            f"batch {b + 1}/{batches}: {batch.established}/{run.peers} up in "
            f"{batch.seconds:.2f} s = {batch.sas_per_s:.0f} SAs/s; responder "
            f"{batch.cpu_ms_per_sa:.2f} ms CPU/SA "
            f"({1000 * batch.responder_system_s / max(batch.established, 1):.2f} system), "
            f"charon {batch.initiator_cpu_s:.1f} s CPU; RSS {batch.rss_mb_up:.1f} MB up, "
            f"{batch.rss_mb_after_delete:.1f} MB after delete",
            file=sys.stderr,
            flush=True,
        )
        if batch.established < run.peers:
            print(f"charon log tail:\n{run.charon.log_tail()}", file=sys.stderr)
            break
    commands.close()
    events.close()
    assert run.hub is not None
    counters = {k: run.hub.status().get(k) for k in ("front_door", "ike_dispatch", "reception")}
    per_batch = run.batches
    rss_after = [b.rss_mb_after_delete for b in per_batch]
    handshakes = [run.peers * (k + 1) for k in range(len(per_batch))]
    return {
        "sas_per_s": statistics.median(b.sas_per_s for b in per_batch),
        "responder_cpu_ms_per_sa": statistics.median(b.cpu_ms_per_sa for b in per_batch),
        "sas_per_responder_core_s": statistics.median(
            1000 / b.cpu_ms_per_sa for b in per_batch if b.cpu_ms_per_sa
        ),
        "rss_mb_start": rss_start,
        "responder_counters": counters,
        "rss_kib_per_sa_up": 1024 * (per_batch[0].rss_mb_up - rss_start) / run.peers,
        "rss_mb_after_handshakes": dict(zip(map(str, handshakes), rss_after, strict=True)),
        "settle_s": settle,
        "rss_mb_settled_after_handshakes": settled,
        "per_batch": [
            {
                "seconds": b.seconds,
                "established": b.established,
                "sas_per_s": b.sas_per_s,
                "cpu_ms_per_sa": b.cpu_ms_per_sa,
                "system_ms_per_sa": 1000 * b.responder_system_s / max(b.established, 1),
                "initiator_cpu_s": b.initiator_cpu_s,
                "rss_mb_up": b.rss_mb_up,
                "rss_mb_after_delete": b.rss_mb_after_delete,
            }
            for b in per_batch
        ],
    }


def run_hub(
    run: Run, timeout: float, profile: Path | None = None, gil: bool = False
) -> dict[str, Any]:
    """With ``profile``, py-spy's second to attach counts in the all-up time."""
    assert run.charon is not None and run.charon.proc is not None
    commands, events = Vici(run.charon.vici_path), Vici(run.charon.vici_path)
    events.register("child-updown")
    charon0 = cpu_seconds(run.charon.proc.pid)
    pid = run.start_hub()
    ready = time.monotonic() - run.started_at
    cpu0 = cpu_seconds(pid)
    rss_ready = rss_mb(pid)
    with profiled(pid, profile, gil):
        initiate_all(commands, run.peers)
        established = wait_events(events, "child-updown", True, run.peers, timeout)
    all_up = time.monotonic() - run.started_at
    cpu = cpu_seconds(pid) - cpu0
    charon_cpu = cpu_seconds(run.charon.proc.pid) - charon0
    rss = rss_mb(pid)
    status = run.status_seconds()
    commands.close()
    events.close()
    print(
        f"hub: {established}/{run.peers} Child SAs up {all_up:.2f} s after start "
        f"(ready after {ready:.2f} s), hub CPU {cpu:.2f} s, charon CPU {charon_cpu:.2f} s, "
        f"RSS {rss:.1f} MB, status --json "
        f"{statistics.median(status):.2f} s",
        file=sys.stderr,
    )
    return {
        "established": established,
        "seconds_to_all_up": all_up,
        "seconds_to_ready": ready,
        "hub_cpu_s_handshakes": cpu,
        "initiator_cpu_s": charon_cpu,
        "hub_rss_mb_ready": rss_ready,
        "hub_rss_mb_all_up": rss,
        "status_json_s": statistics.median(status),
        "status_json_s_runs": status,
    }


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_handshake", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("rate", "hub"), default="rate")
    p.add_argument("--peers", type=int, default=1000, help="spokes = concurrent initiations")
    p.add_argument("--batches", type=int, default=10, help="rate mode: batches of --peers")
    p.add_argument("--addresses", type=int, default=MAX_ADDRESSES, help="source addresses")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per batch")
    p.add_argument(
        "--settle", type=float, default=0.0, metavar="S",
        help="rate mode: after the first and the last batch wait S seconds (past the 41 s "
        "a deleted IKE SA lingers to answer retransmissions) and measure RSS again",
    )  # fmt: skip
    p.add_argument(
        "--charon-set", action="append", default=[], metavar="KEY=VALUE",
        help="an extra key of strongswan.conf's charon section (threads=4, ...), "
        "or log_level=N for its file log; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--responder-tree", type=Path, default=None, metavar="DIR",
        help="run the hub's tunneld from this checkout (its directory and PYTHONPATH), "
        "e.g. a base for a before/after with the same harness",
    )  # fmt: skip
    p.add_argument("--prefix", default=None, help="namespace prefix (default hs + hex)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--py-spy", type=Path, default=None, metavar="FILE",
        help="record the responder with py-spy (raw collapsed stacks) into FILE "
        "(rate mode: one file per batch, FILE.N.txt)",
    )  # fmt: skip
    p.add_argument(
        "--py-spy-gil", action="store_true",
        help="py-spy records only samples holding the GIL (the responder's Python CPU)",
    )  # fmt: skip
    p.add_argument("--keep-dir", action="store_true", help="keep the logs and configurations")
    args = p.parse_args(argv)
    if not 1 <= args.peers <= 65535:
        p.error("--peers must be 1..65535")
    args.addresses = max(1, min(args.addresses, MAX_ADDRESSES, args.peers))
    settings = {}
    for item in args.charon_set:
        key, sep, value = item.partition("=")
        word = key.replace("_", "").replace("-", "").replace(".", "")
        if not sep or not word.isalnum() or any(c in value for c in "{}\n"):
            p.error(f"--charon-set wants KEY=VALUE, got {item!r}")
        settings[key] = value
    args.charon_set = settings
    return args


@contextlib.contextmanager
def terminated_on_signal() -> Iterator[None]:
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def commit(tree: Path = REPO) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_handshake: needs root (network namespaces)", file=sys.stderr)
        return 2
    lab = Lab(args.prefix or unique_prefix("hs"))
    work = Path(tempfile.mkdtemp(prefix="tunneld-hs-"))
    run = Run(
        lab, work, args.peers, args.addresses,
        charon_settings=args.charon_set, responder_tree=args.responder_tree,
    )  # fmt: skip
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "mode": args.mode,
        "peers": args.peers,
        "addresses": args.addresses,
        "charon_settings": args.charon_set,
        "responder_tree": str(args.responder_tree or REPO),
        "responder_commit": commit(args.responder_tree or REPO),
        "machine": {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg()[0]},
    }
    try:
        with terminated_on_signal():
            run.setup()
            if args.mode == "rate":
                result["batches"] = args.batches
                result["rate"] = run_rate(
                    run, args.batches, args.timeout, args.py_spy, args.settle, args.py_spy_gil
                )
            else:
                result["hub"] = run_hub(run, args.timeout, args.py_spy, args.py_spy_gil)
    except KeyboardInterrupt:
        print("bench_handshake: interrupted", file=sys.stderr)
        return 130
    finally:
        run.teardown()
        if args.keep_dir:
            print(f"bench_handshake: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
