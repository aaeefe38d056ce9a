"""Shared by the configuration tests: a tiny TOML writer, test credentials, a base config."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

from tunneld import pki
from tunneld.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
PSK_TEXT = "correct horse battery staple"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, keys quoted (identities have dots)
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(data: dict[str, Any]) -> str:
    """Enough of a TOML writer for these tests: tables, arrays of tables, scalars, arrays."""
    lines: list[str] = []
    for name, table in data.items():
        if isinstance(table, list) and table and all(isinstance(t, dict) for t in table):
            for item in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        elif isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        else:
            lines.insert(0, f"{name} = {toml_value(table)}")
    return "\n".join(lines) + "\n"


def make_pki(d: Path) -> Path:
    """CA, gw-a (DNS gw-a.example.org, IP 192.0.2.1), 'other' leaf, and a second CA in ca2/."""
    pki.init_ca(d, "test CA", now=NOW - dt.timedelta(days=1))
    pki.issue(
        d, "gw-a", dns=["gw-a.example.org"], ips=["192.0.2.1"], now=NOW - dt.timedelta(days=1)
    )
    pki.issue(d, "other", dns=["other.example.org"], now=NOW - dt.timedelta(days=1))
    pki.init_ca(d / "ca2", "another CA", now=NOW - dt.timedelta(days=1))
    return d


def make_confdir(tmp_path: Path, pki_dir: Path) -> Path:
    """A directory with the config's relative paths filled: pki/, psk/."""
    shutil.copytree(pki_dir, tmp_path / "pki")
    (tmp_path / "psk").mkdir()
    write_private(tmp_path / "psk" / "gw-b.psk", f"  {PSK_TEXT}\n".encode())
    return tmp_path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def base() -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-a"},
        "identity": {
            "id": "gw-a.example.org",
            "certificate": "pki/gw-a.pem",
            "private_key": "pki/gw-a.key",
            "ca": ["pki/ca.pem"],
        },
        "peer": [
            {
                "name": "gw-b",
                "address": "192.0.2.2",
                "id": "gw-b.example.org",
                "local_subnets": ["198.51.100.0/24"],
                "remote_subnets": ["203.0.113.0/24"],
            }
        ],
    }


def write(confdir: Path, data: dict[str, Any], name: str = "gw.toml") -> Path:
    path = confdir / name
    path.write_text(to_toml(data))
    return path


def load(confdir: Path, data: dict[str, Any]) -> Config:
    return load_config(write(confdir, data), now=NOW)
