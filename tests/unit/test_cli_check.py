"""`tunneld check -c FILE`, the real command line in a subprocess (issue 3, case 4).

A broken configuration exits 2 (configuration error, see tunneld.cli) and the
one line on stderr names the file, the key path and what is wrong; the same
file unbroken exits 0. The configurations are the lab's (tools.lab), so
these are the files the namespace tests and the demo run with.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.lab import SiteOptions, write_site_configs

REPO = Path(__file__).resolve().parents[2]


def check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "check", "-c", str(conf)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def replace(conf: Path, old: str, new: str) -> None:
    text = conf.read_text()
    assert old in text, f"{old!r} not in {conf}"
    conf.write_text(text.replace(old, new, 1))


def bad_cidr(conf: Path, work: Path) -> None:
    replace(conf, 'remote_subnets = ["203.0.113.0/24"]', 'remote_subnets = ["203.0.113.0/33"]')


def host_bits(conf: Path, work: Path) -> None:
    replace(conf, 'remote_subnets = ["203.0.113.0/24"]', 'remote_subnets = ["203.0.113.7/24"]')


def unknown_peer_key(conf: Path, work: Path) -> None:
    replace(conf, "remote_subnets =", "remote_subnet =")


def unknown_gateway_key(conf: Path, work: Path) -> None:
    replace(conf, "mtu = 1400", "mtu = 1400\nlisten_port = 500")


def world_readable_key(conf: Path, work: Path) -> None:
    (work / "pki" / "gw-a.key").chmod(0o644)


def world_readable_psk(conf: Path, work: Path) -> None:
    (work / "psk.txt").chmod(0o604)


CASES: list[tuple[str, Callable[[Path, Path], None], str, str, tuple[str, ...]]] = [
    # id, breakage, auth, key path, further words the message must hold
    ("bad-cidr", bad_cidr, "pubkey", "peer[0].remote_subnets[0]", ("203.0.113.0/33", "CIDR")),
    ("host-bits", host_bits, "pubkey", "peer[0].remote_subnets[0]", ("203.0.113.0/24",)),
    ("unknown-peer-key", unknown_peer_key, "pubkey", "peer[0].remote_subnet", ("unknown key",)),
    ("unknown-gw-key", unknown_gateway_key, "pubkey", "gateway.listen_port", ("unknown key",)),
    ("key-0644", world_readable_key, "pubkey", "identity.private_key", ("0644", "chmod 600")),
    ("psk-0604", world_readable_psk, "psk", "peer[0].psk_file", ("0604", "chmod 600")),
]


@pytest.mark.parametrize(
    ("breakage", "auth", "key", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check_names_file_and_key_of_a_broken_config(
    tmp_path: Path,
    breakage: Callable[[Path, Path], None],
    auth: str,
    key: str,
    words: tuple[str, ...],
) -> None:
    conf, _ = write_site_configs(tmp_path, "unit", SiteOptions(auth=auth))
    good = check(conf)
    assert good.returncode == 0, good.stderr
    assert f"{conf}: ok" in good.stdout
    # then what the daemon will make of it: each peer, its identity and selectors
    assert "\npeer gw-b: " + auth in good.stdout and "198.51.100.0/24 <=> 203.0.113.0/24" in (
        good.stdout
    )

    breakage(conf, tmp_path)
    bad = check(conf)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert bad.stdout == ""
    message = bad.stderr.strip()
    assert len(message.splitlines()) == 1, message  # one line, no traceback
    assert message.startswith(f"tunneld: {conf}: {key}: "), message
    for word in words:
        assert word in message, message


def test_check_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    out = check(missing)
    assert out.returncode == 2
    assert str(missing) in out.stderr and "cannot read" in out.stderr
