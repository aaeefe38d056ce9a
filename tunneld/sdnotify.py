"""systemd's readiness protocol (sd_notify(3)), a few lines over one datagram.

With ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` to an AF_UNIX datagram
socket: a path, or an abstract name written with a leading ``@`` (the
first byte of the address is then NUL). The daemon sends newline-separated
``KEY=value`` assignments to it:

1. ``READY=1`` once the control socket, the TUN device and the UDP sockets
   are open and the tasks run (``Daemon.run``, just before it reports itself
   started): ``systemctl start`` returns then, and units ordered after
   tunneld find the tunnel device there.
2. ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, microseconds) when
   a reload that passed its checks begins (``tunneld reload``, SIGHUP), then
   ``READY=1`` once it is applied (``Daemon.reload``), as ``Type=notify-reload``
   expects; a refused reload sends nothing (the daemon stays ready throughout).
3. ``STOPPING=1`` when shutdown begins (SIGTERM, SIGINT, ``Daemon.stop``).

Without ``NOTIFY_SOCKET`` (not started by systemd, or by a unit of another
type) nothing is sent. A failure to send is logged and otherwise ignored:
readiness is a courtesy to the service manager, never a reason to stop
forwarding packets.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tunneld")


def address(value: str) -> str | bytes | None:
    """The socket address ``NOTIFY_SOCKET`` names: a path, or abstract bytes (``@name``)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # neither a path nor an abstract name (sd_notify ignores it too)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; whether it was sent."""
    env = os.environ if environ is None else environ
    target = address(env.get("NOTIFY_SOCKET", ""))
    if target is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning(
            "cannot notify the service manager",
            extra={"state": state.split("\n")[0], "error": exc.strerror or str(exc)},
        )
        return False
    return True
