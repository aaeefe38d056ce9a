"""tunneld/hardening.py in a child process (it changes the process for good)."""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
from typing import Any

import pytest

from tunneld import hardening

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _in_child(target: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(queue,))
    process.start()
    result: dict[str, Any] = queue.get(timeout=30)
    process.join(30)
    return result


def _no_core(queue: Any) -> None:
    hardening.no_core_dumps()
    queue.put({"core": resource.getrlimit(resource.RLIMIT_CORE), "dumpable": hardening.dumpable()})


def _drop(queue: Any) -> None:
    hardening.no_core_dumps()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # opened as root
    listener.bind(("127.0.0.1", 0))
    hardening.drop_privileges(hardening.lookup("nobody"))
    caps = hardening.effective_capabilities()
    try:
        low = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        low.bind(("127.0.0.1", 501))  # a privileged port: needs CAP_NET_BIND_SERVICE
        can_bind_low = True
    except PermissionError:
        can_bind_low = False
    try:
        os.open("/etc/shadow", os.O_RDONLY)
        can_read_shadow = True
    except PermissionError:
        can_read_shadow = False
    queue.put({
        "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "caps": caps,
        "dumpable": hardening.dumpable(), "can_bind_low": can_bind_low,
        "can_read_shadow": can_read_shadow, "socket_still_open": listener.fileno() >= 0,
    })  # fmt: skip


def test_no_core_dumps() -> None:
    assert _in_child(_no_core) == {"core": (0, 0), "dumpable": False}


def test_drop_privileges_keeps_only_cap_net_admin() -> None:
    nobody = hardening.lookup("nobody")
    result = _in_child(_drop)
    assert result["uid"] == result["euid"] == nobody.uid and result["groups"] == []
    assert result["caps"] == 1 << hardening.CAP_NET_ADMIN
    assert not result["dumpable"] and not result["can_bind_low"]
    assert not result["can_read_shadow"] and result["socket_still_open"]


def test_lookup_names_what_does_not_exist() -> None:
    with pytest.raises(KeyError, match="no such user 'no-such-user-tunneld'"):
        hardening.lookup("no-such-user-tunneld")
    with pytest.raises(KeyError, match="no such group"):
        hardening.lookup("nobody", "no-such-group-tunneld")
