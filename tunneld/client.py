"""The control socket's client side, standard library only.

``tunneld status`` and the other control verbs (up, down, rekey, reload) run
this and nothing of the daemon's world: no trio, no cryptography, no pyroute2,
no IKE. Starting the interpreter is most of what they cost
(docs/performance.md, "Start-up"); ``tests/unit/test_startup_imports.py``
checks what they import.

The protocol (one JSON request line, one JSON response line) and the server
side are in :mod:`tunneld.control`, which re-exports :class:`ControlError` and
:func:`request` from here.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

DEFAULT_SOCKET_DIR = Path("/run/tunneld")  # tunneld.config: /run/tunneld/NAME.sock
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # tunneld.config's gateway name


class ControlError(Exception):
    """The daemon is not reachable or answered with an error."""


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
        raise ControlError(f"tunneld at {path} sent a malformed answer") from None
    return response


def control_socket_of(config: Path) -> Path | None:
    """The control socket a configuration file names, read as :mod:`tunneld.config`
    does (``[gateway] control_socket``, relative to the file's directory, else
    ``/run/tunneld/NAME.sock``), without validating the rest of the file.

    None when the file cannot be read this way (unreadable, not TOML, no usable
    ``[gateway]``): the caller then loads it in full for a precise error.
    """
    import tomllib  # only here: `-s SOCKET` does without

    file = config.absolute()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    gateway = data.get("gateway")
    if not isinstance(gateway, dict):
        return None
    text = gateway.get("control_socket")
    if isinstance(text, str) and text:
        path = Path(text).expanduser()
        return path if path.is_absolute() else file.parent / path
    if "control_socket" in gateway:
        return None
    name = gateway.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return None
    return DEFAULT_SOCKET_DIR / f"{name}.sock"
