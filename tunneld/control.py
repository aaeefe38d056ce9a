"""The control socket: one JSON request line in, one JSON response line out.

Requests: ``{"cmd": "status"}``, ``{"cmd": "up", "peer": NAME}``,
``{"cmd": "down", "peer": NAME}`` (optionally ``"for": SECONDS``: how long the
peer's new IKE SAs are refused; without it until ``up``),
``{"cmd": "rekey", "peer": NAME, "ike": bool}``.
Responses: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

The server side is a trio task; the client side (used by the CLI) is plain
blocking sockets so that ``tunneld status`` starts fast.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("tunneld.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The daemon is not reachable or answered with an error."""


async def serve(
    path: str, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on a Unix socket at *path* (mode 0600, parent made 0700) until cancelled."""
    sock_path = Path(path)
    sock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sock_path.is_socket():
        sock_path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await listener.bind(str(sock_path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            listeners = [trio.SocketListener(listener)]
            await trio.serve_listeners(
                lambda stream: _serve_one(stream, handler), listeners, handler_nursery=nursery
            )
    finally:
        with trio.CancelScope(shield=True):
            sock_path.unlink(missing_ok=True)


async def _serve_one(stream: trio.abc.Stream, handler: Handler) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(5):
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        try:
            request = json.loads(buf.split(b"\n", 1)[0] or b"null")
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            response = await handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            response = {"ok": False, "error": f"bad request: {exc}"}
        try:
            await stream.send_all(json.dumps(response).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("control client went away")


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Blocking client: send one request, return the decoded response."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"cannot reach tunneld at {path}: {exc.strerror or exc}") from None
    try:
        response = json.loads(data)
    except ValueError:
        raise ControlError(f"tunneld at {path} sent a malformed answer") from None
    if not isinstance(response, dict):
        raise ControlError(f"tunneld at {path} sent a malformed answer")
    return response
