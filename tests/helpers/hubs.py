"""Hub-and-spoke configurations: one hub gateway, N listen-only-from-the-hub's-view
spokes that initiate to it (issue 10). Two shapes of the hub's configuration:

- ``entries``: one ``[[peer]]`` per spoke, none with an address, each matched by
  its ``id`` at IKE_AUTH;
- ``pattern``: one ``[[peer]]`` with ``id = "*.branch.example.org"`` serving every
  spoke, each spoke's subnets narrowed from its traffic selectors (or, with
  ``table``, taken from the entry's ``spokes`` table).

Addresses: hub 192.0.2.1, spoke k 192.0.2.(10+k); hub site 198.51.100.0/24,
spoke k's site 203.0.113.(16k)/28 (k = 1..3 stay inside 203.0.113.0/24).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunneld import pki

HUB_UNDERLAY = "192.0.2.1"
HUB_SITE = "198.51.100.0/24"
HUB_HOST = "198.51.100.10"
POOL = "203.0.113.0/24"
DOMAIN = "branch.example.org"


def spoke_underlay(k: int) -> str:
    return f"192.0.2.{10 + k}"


def spoke_site(k: int) -> str:
    return f"203.0.113.{16 * k}/28"


def spoke_host(k: int) -> str:
    return f"203.0.113.{16 * k + 10}"


def spoke_id(k: int) -> str:
    return f"s{k}.{DOMAIN}"


@dataclass
class HubFiles:
    hub: Path
    spokes: list[Path]
    pki: Path


def _q(items: Sequence[str]) -> str:
    return ", ".join(json.dumps(s) for s in items)


def _gateway(name: str, listen: str, sock: Path, ident: str, pki_dir: Path, tun: str) -> str:
    return f"""[gateway]
name = "{name}"
listen = ["{listen}"]
tun = "{tun}"
control_socket = "{sock}"
log_format = "json"

[identity]
id = "{ident}"
certificate = "{pki_dir / (name + ".pem")}"
private_key = "{pki_dir / (name + ".key")}"
ca = ["{pki_dir / "ca" / "ca.pem"}"]
"""


def write_hub_configs(
    directory: Path,
    shape: str,
    spokes: int = 3,
    *,
    table: bool = False,
    max_spokes: int | None = None,
    # refused spokes retry within seconds (the default back-off after AUTHENTICATION_FAILED
    # is 30 s, doubling): the tests watch several attempts
    extra: str = 'dpd_delay = "0s"\nauth_failure_backoff = "1s"\n',
    tun: str = "tunneld0",
    psk: bool = False,
) -> HubFiles:
    """The hub's and the spokes' configuration files (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki_dir = directory / "pki"
    pki.init_ca(pki_dir / "ca", "tunneld hub lab CA")
    pki.issue(pki_dir / "ca", "hub", pki_dir, dns=["hub.example.org"], ips=[HUB_UNDERLAY])
    for k in range(1, spokes + 1):
        pki.issue(pki_dir / "ca", f"s{k}", pki_dir, dns=[spoke_id(k)], ips=[spoke_underlay(k)])
    ks = range(1, spokes + 1)
    auth = dict.fromkeys(ks, "")
    if psk:  # entries only: each spoke its own key (a pattern refuses PSKs)
        for k in ks:
            path = directory / f"s{k}.psk"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("0x" + secrets.token_hex(32) + "\n")
            auth[k] = f'auth = "psk"\npsk_file = "{path}"\n'
    hub = _gateway("hub", HUB_UNDERLAY, directory / "hub.sock", "hub.example.org", pki_dir, tun)
    if shape == "entries":
        for k in ks:
            others = [spoke_site(j) for j in ks if j != k]
            hub += f"""
[[peer]]
name = "s{k}"
id = "{spoke_id(k)}"
auto = "listen"
local_subnets = [{_q([HUB_SITE, *others])}]
remote_subnets = [{_q([spoke_site(k)])}]
{auth[k]}{extra}"""
    else:
        hub += f"""
[[peer]]
name = "branches"
id = "*.{DOMAIN}"
auto = "listen"
local_subnets = [{_q([HUB_SITE, POOL])}]
remote_subnets = [{_q([POOL])}]
{"" if max_spokes is None else f"max_spokes = {max_spokes}"}
{extra}"""
        if table:
            hub += "[peer.spokes]\n" + "".join(
                f'"{spoke_id(k)}" = ["{spoke_site(k)}"]\n' for k in ks
            )
    (directory / "hub.toml").write_text(hub)
    paths = []
    for k in ks:
        others = [spoke_site(j) for j in ks if j != k]
        text = (
            _gateway(
                f"s{k}", spoke_underlay(k), directory / f"s{k}.sock", spoke_id(k), pki_dir, tun
            )
            + f"""
[[peer]]
name = "hub"
address = "{HUB_UNDERLAY}"
id = "hub.example.org"
auto = "start"
local_subnets = [{_q([spoke_site(k)])}]
remote_subnets = [{_q([HUB_SITE, *others])}]
{auth[k]}{extra}"""
        )
        path = directory / f"s{k}.toml"
        path.write_text(text)
        paths.append(path)
    return HubFiles(directory / "hub.toml", paths, pki_dir)
