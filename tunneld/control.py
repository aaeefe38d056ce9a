"""The control socket: one JSON request line in, one JSON response line out.

Requests: ``{"cmd": "status"}``, ``{"cmd": "up", "peer": NAME}``,
``{"cmd": "down", "peer": NAME}`` (optionally ``"for": SECONDS``: how long the
peer's new IKE SAs are refused; without it until ``up``),
``{"cmd": "rekey", "peer": NAME, "ike": bool, "child": NAME (optional)}``,
``{"cmd": "reload"}`` (read the daemon's configuration file again and apply it:
:mod:`tunneld.reload`; answered ``{"ok": true, "changes": {...}}`` once applied, or
``{"ok": false, "error": "FILE: KEY: REASON"}`` and nothing changed). Other fields
are ignored. Responses: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

The server side is a trio task; the client side (used by the CLI) is plain
blocking sockets so that ``tunneld status`` starts fast.

Rules (issue #9, "Hostile networks"):

1. The socket (:func:`bind`, at start-up, before any device opens) lives in a
   directory owned by the account the daemon runs as (after any privilege
   drop) and writable by nobody else (no sticky-bit exception); otherwise the
   daemon refuses to start, naming the directory, what it found and the fix.
   A missing directory is made, mode 0700, for that account.
2. A socket at the path that answers belongs to another running daemon: refuse
   to start and leave it alone. One that does not answer is stale and
   replaced; anything else at the path (a file, a symlink) is refused.
3. At exit only our own socket is removed: the inode and device of the file
   we bound are checked, through a descriptor of the directory (so it works
   after the privilege drop, whatever the directories above it allow).
4. A request is one line of at most :data:`MAX_REQUEST` bytes, nested at most
   :data:`MAX_DEPTH` levels (counted on the raw bytes before ``json.loads``
   can recurse), sent within :data:`REQUEST_TIMEOUT` seconds; a line that
   breaks a bound, is not JSON, is not an object, names no known command or
   has a field of the wrong type is answered ``{"ok": false, "error": "bad
   request: ..."}`` and the connection closed. The handler only sees requests
   that passed :func:`parse_request`.
5. An exception while handling a request is a bug, but it must not stop the
   daemon: it is logged with the command's name (never the raw request) and
   answered ``{"ok": false, "error": "internal error: ..."}``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pwd
import re
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("tunneld.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024  # bytes in one request line, newline excluded
MAX_DEPTH = 32  # nesting of [ and { in one request
REQUEST_TIMEOUT = 5.0  # seconds for the client to send its line
COMMANDS = (
    "status",
    "up",
    "down",
    "rekey",
    "reload",
)  # the daemon's; serve(commands=) for another server
_ERROR_DETAIL = 200  # characters of an exception's text in an internal error answer


class ControlError(Exception):
    """The daemon is not reachable or answered with an error."""


class ControlSocketError(OSError):
    """The control socket cannot be set up safely: the daemon refuses to start (rules 1, 2)."""


class BadRequest(ValueError):
    """A request line the protocol refuses (rule 4); the text is the answer's reason."""


# --- the socket (rules 1-3) ------------------------------------------------------------


class ControlSocket:
    """A bound, listening control socket that :func:`bind` made; :meth:`close` removes it."""

    def __init__(self, path: Path, sock: socket.socket, dir_fd: int) -> None:
        self.path = path
        self.sock = sock
        self._dir_fd = dir_fd
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        self.identity = (st.st_dev, st.st_ino)
        self.closed = False

    def close(self) -> None:
        """Close the socket; remove the file only if it is still the one we bound (rule 3)."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        try:
            st = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self.identity:
                os.unlink(self.path.name, dir_fd=self._dir_fd)
            else:
                log.warning(
                    "control socket path holds another file now: left alone",
                    extra={"path": str(self.path)},
                )
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(
                "cannot remove the control socket",
                extra={"path": str(self.path), "error": exc.strerror or str(exc)},
            )
        finally:
            os.close(self._dir_fd)


def bind(path: str | Path, *, owner: int, group: int = -1) -> ControlSocket:
    """The control socket at ``path``, listening (rules 1 and 2).

    ``owner`` is the uid the daemon runs as once started (after any privilege
    drop): its directory must belong to it. A missing directory is made for
    ``owner`` and ``group``. :class:`ControlSocketError` says why not.
    """
    sock_path = Path(path)
    directory = sock_path.parent
    dir_fd = _open_directory(directory, owner, group)
    try:
        _check_directory(directory, os.fstat(dir_fd), owner)
        _clear_stale(sock_path, dir_fd)
        sock = _bind_listening(sock_path)
        try:
            return ControlSocket(sock_path, sock, dir_fd)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(
                f"control socket {sock_path} vanished after bind: {exc.strerror or exc}"
            ) from None
    except BaseException:
        os.close(dir_fd)
        raise


def _open_directory(directory: Path, owner: int, group: int) -> int:
    if not directory.exists():
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # whatever the umask
            if owner != os.geteuid() or group != -1:
                os.chown(directory, owner, group)
        except FileExistsError:
            pass  # made meanwhile: checked below like any other
        except OSError as exc:
            raise ControlSocketError(
                f"cannot create the control socket directory {directory}: {exc.strerror or exc}"
            ) from None
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ControlSocketError(
            f"control socket directory {directory}: {exc.strerror or exc}"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _account_name(uid: int) -> str:
    name = _user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def _check_directory(directory: Path, st: os.stat_result, owner: int) -> None:
    mode = stat.S_IMODE(st.st_mode)
    found = f"owner {_account_name(st.st_uid)}, mode {mode:04o}"
    if st.st_uid != owner:
        raise ControlSocketError(
            f"control socket directory {directory} ({found}) must belong to "
            f"{_account_name(owner)}, the account tunneld runs as: "
            f"chown {_user_name(owner)} {directory}, or choose another [gateway] control_socket"
        )
    if mode & 0o022:
        who = {0o020: "its group", 0o002: "others"}.get(mode & 0o022, "its group and others")
        raise ControlSocketError(
            f"control socket directory {directory} ({found}) is writable by {who}, "
            "who could replace the socket (the sticky bit is not enough): "
            f"chmod 0750 {directory}, or choose another [gateway] control_socket"
        )
    if mode & 0o300 != 0o300:
        raise ControlSocketError(
            f"control socket directory {directory} ({found}) is not writable by its owner "
            f"(the socket could not be removed at exit): chmod 0750 {directory}"
        )


def _clear_stale(sock_path: Path, dir_fd: int) -> None:
    """Rule 2: nothing at the path, or a stale socket (removed); else refuse."""
    try:
        st = os.stat(sock_path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"control socket path {sock_path} exists and is not a socket: "
            "remove it, or choose another [gateway] control_socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(sock_path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.ETIMEDOUT) and not isinstance(exc, TimeoutError):
            raise ControlSocketError(
                f"control socket {sock_path}: cannot tell whether another tunneld "
                f"uses it: {exc.strerror or exc}"
            ) from None
        raise _answers(sock_path) from None  # a full backlog: someone listens
    else:
        raise _answers(sock_path)
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path.name, dir_fd=dir_fd)
    log.info("replaced a stale control socket", extra={"path": str(sock_path)})


def _answers(sock_path: Path) -> ControlSocketError:
    return ControlSocketError(
        f"control socket {sock_path} answers: another tunneld is running with this name"
    )


def _bind_listening(sock_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is made mode 0600
    try:
        sock.bind(str(sock_path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _answers(sock_path) from None  # another one bound it just now
        raise ControlSocketError(
            f"cannot bind control socket {sock_path}: {exc.strerror or exc}"
        ) from None
    finally:
        os.umask(old_umask)
    sock.listen(16)
    sock.setblocking(False)
    return sock


# --- serving (rules 4, 5) --------------------------------------------------------------


async def serve(
    control: ControlSocket | str | Path,
    handler: Handler,
    *,
    commands: Sequence[str] = COMMANDS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests on the bound ``control`` socket until cancelled; closing it is
    the caller's (:meth:`ControlSocket.close`). Given a path instead, bind it here for
    this process's own account and close it on the way out. ``commands``: the ``cmd``
    values the handler takes (other than the daemon's, their fields are not checked)."""
    if isinstance(control, ControlSocket):
        bound, own = control, False
    else:
        bound, own = bind(control, owner=os.geteuid()), True
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
        async with trio.open_nursery() as nursery:
            task_status.started()

            async def serve(stream: trio.SocketStream) -> None:
                await _serve_one(stream, handler, commands)

            await trio.serve_listeners(serve, [listener], handler_nursery=nursery)
    finally:
        if own:
            bound.close()


async def _serve_one(
    stream: trio.abc.Stream, handler: Handler, commands: Sequence[str] = COMMANDS
) -> None:
    """One connection: one request line, one answer line, close (rules 4 and 5)."""
    async with stream:
        try:
            line = await _read_request(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        try:
            request = parse_request(line, commands)
        except BadRequest as exc:
            answer = _encode({"ok": False, "error": f"bad request: {exc}"})
        else:
            answer = await _answer(request, handler)
        try:
            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("control client went away")


async def _read_request(stream: trio.abc.Stream) -> bytes | BadRequest:
    """The request line without its newline (at end of stream: what came), or what is
    wrong with it: too long, or too slow."""
    buf = bytearray()
    too_long = BadRequest(f"request line longer than {MAX_REQUEST} bytes")
    with trio.move_on_after(REQUEST_TIMEOUT):
        while len(buf) <= MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return bytes(buf)
            start = len(buf)
            buf += chunk
            end = buf.find(b"\n", start)
            if end >= 0:
                return bytes(buf[:end]) if end <= MAX_REQUEST else too_long
        return too_long
    return BadRequest(f"no complete request line within {REQUEST_TIMEOUT:g} s")


_TOKEN = re.compile(rb'[][{}"\\]')  # what the nesting scan looks at


def too_deep(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``[`` and ``{`` nest more than ``limit`` levels in ``line`` outside JSON
    strings. One pass, no recursion, no backtracking: safe before ``json.loads``,
    whatever the line."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False  # the common case, without a look at each bracket
    depth = 0
    in_string = False
    escaped = -1  # the position a backslash in a string escapes
    for match in _TOKEN.finditer(line):
        pos = match.start()
        if pos == escaped:
            continue
        char = line[pos]
        if in_string:
            if char == 0x5C:  # backslash
                escaped = pos + 1
            elif char == 0x22:  # closing quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth = max(0, depth - 1)
    return False


def parse_request(line: bytes | BadRequest, commands: Sequence[str] = COMMANDS) -> dict[str, Any]:
    """A request that passed rule 4: a dict with a ``cmd`` of ``commands``; for the
    daemon's commands only their fields, well-typed."""
    if isinstance(line, BadRequest):
        raise line
    if not line.strip():
        raise BadRequest("empty request")
    if too_deep(line):
        raise BadRequest(f"request nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)[:_ERROR_DETAIL]
        raise BadRequest(f"not JSON ({reason})") from None
    if not isinstance(value, dict):
        raise BadRequest(f"a request is a JSON object, not {_kind(value)}")
    cmd = value.get("cmd")
    if cmd is None:
        raise BadRequest("'cmd' is missing")
    if not isinstance(cmd, str):
        raise BadRequest(f"'cmd' must be a string, not {_kind(cmd)}")
    if cmd not in commands:
        raise BadRequest(f"unknown command {cmd[:64]!r} (known: {', '.join(commands)})")
    if cmd not in COMMANDS:
        return value  # another server's command (serve(commands=)): its handler checks it
    request: dict[str, Any] = {"cmd": cmd}
    if cmd in ("status", "reload"):
        return request
    peer = value.get("peer")
    if peer is None:
        raise BadRequest(f"'peer' is missing (cmd {cmd!r} needs a peer name)")
    if not isinstance(peer, str):
        raise BadRequest(f"'peer' must be a string, not {_kind(peer)}")
    request["peer"] = peer
    if cmd == "down" and value.get("for") is not None:
        request["for"] = _seconds(value["for"])
    if cmd == "rekey":
        ike = value.get("ike", False)
        if not isinstance(ike, bool):
            raise BadRequest(f"'ike' must be true or false, not {_kind(ike)}")
        request["ike"] = ike
        child = value.get("child")
        if child is not None:
            if not isinstance(child, str):
                raise BadRequest(f"'child' must be a string, not {_kind(child)}")
            request["child"] = child
    return request


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if 0 < seconds < math.inf:
            return seconds
    shown = _kind(value) if not isinstance(value, int | float) else "out of range"
    raise BadRequest(f"'for' must be a positive number of seconds, not {shown}")


def _kind(value: object) -> str:
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return kinds.get(type(value), "something else")


async def _answer(request: dict[str, Any], handler: Handler) -> bytes:
    """Rule 5: the handler's answer, or an internal error answer (and a log line)."""
    try:
        return _encode(await handler(request))
    except Exception as exc:
        log.error(
            "control request failed (a bug): answered with an internal error",
            exc_info=True,
            extra={"cmd": request["cmd"]},
        )
        detail = f"{type(exc).__name__}: {exc}"[:_ERROR_DETAIL]
        return _encode({"ok": False, "error": f"internal error: {detail}"})


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response).encode() + b"\n"


# --- the client --------------------------------------------------------------------------


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
