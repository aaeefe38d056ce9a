"""sd_notify(3) over NOTIFY_SOCKET: a path, an abstract name (``@``), or nothing.

The socket is one the test binds, as systemd would; what arrives is what a
``Type=notify`` unit's manager reads. tests/netns/test_systemd_netns.py sees
READY=1 and STOPPING=1 from a real ``tunneld run``.
"""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path

import pytest

from tunneld import sdnotify


def test_addresses() -> None:
    assert sdnotify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.address("@/org/freedesktop/systemd1/notify/42") == (
        b"\0/org/freedesktop/systemd1/notify/42"
    )
    assert sdnotify.address("") is None
    assert sdnotify.address("relative/path") is None


def test_a_path_socket_receives_the_state(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        assert sdnotify.notify("READY=1\nSTATUS=running", {"NOTIFY_SOCKET": str(path)})
        assert manager.recv(4096) == b"READY=1\nSTATUS=running"


def test_an_abstract_socket_receives_the_state() -> None:
    name = f"tunneld-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(b"\0" + name.encode())
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not sdnotify.notify("READY=1", {})


def test_a_socket_that_is_gone_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tunneld"):
        assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    (record,) = caplog.records
    assert record.getMessage() == "cannot notify the service manager"
    assert record.state == "READY=1"  # type: ignore[attr-defined]
