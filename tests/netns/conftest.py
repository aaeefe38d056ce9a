"""Fixtures for tests in real network namespaces (root only).

- ``lab``: the five-namespace lab of netns-scripts/lab.sh under a fresh
  random prefix, always torn down (processes inside killed) afterwards.
- ``static_pair``: the lab plus two static-key gateways
  (tests/tools/static_pair.py).
- ``inside_netns``: runs the test's own thread inside a fresh, empty
  namespace (loopback up), for tests of the kernel TUN and UDP devices.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "netns-scripts" / "lab.sh"
CLONE_NEWNET = 0x40000000
PREFIX_BASE = "hio"  # + 5 random hex digits: <= 8 characters, as lab.sh requires


def _need_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root, network namespaces and /dev/net/tun")


def fresh_prefix() -> str:
    return PREFIX_BASE + secrets.token_hex(3)[:5]


def run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command, raise with its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def lab() -> Iterator[str]:
    _need_root()
    prefix = fresh_prefix()
    try:
        run("bash", str(LAB), "up", prefix)
        yield prefix
    finally:
        subprocess.run(["bash", str(LAB), "down", prefix], capture_output=True, timeout=60)


@pytest.fixture
def static_pair(lab: str) -> Iterator[str]:
    harness = [sys.executable, "-m", "tests.tools.static_pair"]
    try:
        run(*harness, "up", lab)
        yield lab
    finally:
        subprocess.run([*harness, "down", lab], capture_output=True, timeout=60, cwd=REPO)
        shutil.rmtree(f"/run/tunneld-static-pair/{lab}", ignore_errors=True)  # its logs


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def inside_netns() -> Iterator[str]:
    """Move this thread into a new namespace for the test; back and delete after."""
    _need_root()
    name = fresh_prefix() + "-io"
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(original)
    finally:
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
