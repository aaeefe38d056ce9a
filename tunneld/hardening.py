"""Process hardening: no core dumps, and optionally no root after start-up.

The daemon's memory holds private keys, PSKs and every SA's keys, so:

1. :func:`no_core_dumps` (always, first thing in ``tunneld run``): the core
   size limit is 0 and the process is not dumpable (``PR_SET_DUMPABLE=0``:
   no core file, and no ptrace or /proc/PID/mem access by the same user).
2. :func:`drop_privileges` (``[gateway] user = "..."``): once the TUN
   device, the UDP sockets and the control socket are open, the process
   becomes that user and group and keeps exactly one capability,
   CAP_NET_ADMIN, which routes into the TUN device need (netlink). Nothing
   else the daemon does afterwards needs root: it never opens another
   device, binds another privileged port or writes outside its sockets.

Linux only (prctl and capset through libc, via ctypes: the standard library
has neither). Each step raises OSError with what failed; the caller refuses
to start rather than run with more privilege than asked for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import resource
from dataclasses import dataclass

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_KEEPCAPS = 8
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, arg: int) -> int:
    result = int(_libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {arg}): {os.strerror(errno)}")
    return result


def _capset(capabilities: int) -> None:
    """Effective and permitted sets = ``capabilities`` (a bit mask below 32); none inheritable."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = capabilities
    if _libc().capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"capset: {os.strerror(errno)}")


def no_core_dumps() -> None:
    """Rule 1: no core file, not dumpable."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE, 0) != 0


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int


def lookup(user: str, group: str | None = None) -> Account:
    """The account to run as; KeyError naming what does not exist."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise KeyError(f"no such user {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise KeyError(f"no such group {group!r}") from None
    return Account(user, entry.pw_uid, gid)


def drop_privileges(account: Account) -> None:
    """Rule 2: become ``account``, keeping only CAP_NET_ADMIN."""
    _prctl(PR_SET_KEEPCAPS, 1)  # keep the permitted set across setuid
    os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    _capset(1 << CAP_NET_ADMIN)
    _prctl(PR_SET_KEEPCAPS, 0)
    _prctl(PR_SET_DUMPABLE, 0)  # setuid resets it to the system default
    if os.getuid() != account.uid or os.geteuid() != account.uid:
        raise OSError(f"still uid {os.geteuid()} after dropping to {account.user}")


def effective_capabilities() -> int:
    """The CapEff mask from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise OSError("no CapEff in /proc/self/status")
