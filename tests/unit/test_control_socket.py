"""The control socket's place on disk (tunneld/control.py rules 1-3, issue #9).

Its directory must belong to the account the daemon runs as and be writable
by nobody else; a socket that answers is another daemon's (refused, left
alone); a stale one is replaced; at exit only the socket we bound goes.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunneld import control
from tunneld.control import ControlSocketError

ME = os.geteuid()
as_root = pytest.mark.skipif(ME != 0, reason="needs root to own files as another user")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def opened() -> Iterator[list[control.ControlSocket]]:
    sockets: list[control.ControlSocket] = []
    yield sockets
    for s in sockets:
        s.close()


def bind(path: Path, opened: list[control.ControlSocket], **kw: int) -> control.ControlSocket:
    s = control.bind(path, owner=kw.get("owner", ME), group=kw.get("group", -1))
    opened.append(s)
    return s


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def test_a_missing_directory_is_made_0700_and_the_socket_0600(
    tmp_path: Path, opened: list[control.ControlSocket]
) -> None:
    path = tmp_path / "a" / "b" / "gw-a.sock"
    s = bind(path, opened)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert answers(path)
    s.close()
    assert not path.exists() and path.parent.exists()


@as_root
def test_a_missing_directory_is_made_for_the_account_tunneld_becomes(
    tmp_path: Path, opened: list[control.ControlSocket]
) -> None:
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "ctl" / "gw-a.sock"
    bind(path, opened, owner=nobody.pw_uid, group=nobody.pw_gid)
    st = path.parent.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o700)


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o770, "its group"), (0o757, "others"), (0o777, "its group and others"),
     (0o1777, "its group and others")],
    ids=["group", "others", "both", "sticky-tmp"],
)  # fmt: skip
def test_a_directory_others_can_write_is_refused(
    run_dir: Path, opened: list[control.ControlSocket], mode: int, who: str
) -> None:
    run_dir.chmod(mode)
    path = run_dir / "gw-a.sock"
    with pytest.raises(ControlSocketError) as info:
        bind(path, opened)
    assert str(info.value) == (
        f"control socket directory {run_dir} (owner {pwd.getpwuid(ME).pw_name} (uid {ME}), "
        f"mode {mode:04o}) is writable by {who}, who could replace the socket (the sticky bit "
        f"is not enough): chmod 0750 {run_dir}, or choose another [gateway] control_socket"
    )
    assert not path.exists()


def test_a_directory_its_owner_cannot_write_is_refused(
    run_dir: Path, opened: list[control.ControlSocket]
) -> None:
    run_dir.chmod(0o500)
    with pytest.raises(ControlSocketError, match=r"not writable by its owner .*chmod 0750"):
        bind(run_dir / "gw-a.sock", opened)


@as_root
def test_a_directory_of_another_account_is_refused(
    run_dir: Path, opened: list[control.ControlSocket]
) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chown(run_dir, nobody.pw_uid, -1)
    with pytest.raises(ControlSocketError) as info:
        bind(run_dir / "gw-a.sock", opened)  # the daemon stays root: nobody's dir won't do
    assert str(info.value) == (
        f"control socket directory {run_dir} (owner nobody (uid {nobody.pw_uid}), mode 0700) "
        f"must belong to root (uid 0), the account tunneld runs as: chown root {run_dir}, "
        "or choose another [gateway] control_socket"
    )
    os.chown(run_dir, 0, -1)  # and the other way round: root's dir for a daemon that drops
    with pytest.raises(ControlSocketError, match=r"must belong to nobody .*chown nobody"):
        bind(run_dir / "gw-a.sock", opened, owner=nobody.pw_uid)


def test_a_socket_that_answers_is_refused_and_left_alone(
    run_dir: Path, opened: list[control.ControlSocket]
) -> None:
    path = run_dir / "gw-a.sock"
    first = bind(path, opened)
    with pytest.raises(ControlSocketError) as info:
        bind(path, opened)
    assert str(info.value) == (
        f"control socket {path} answers: another tunneld is running with this name"
    )
    assert answers(path) and path.lstat().st_ino == first.identity[1]


def test_a_stale_socket_is_replaced(run_dir: Path, opened: list[control.ControlSocket]) -> None:
    path = run_dir / "gw-a.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: a crashed daemon's leftover
    stale.close()
    assert not answers(path)
    s = bind(path, opened)
    assert answers(path) and path.lstat().st_ino == s.identity[1]


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_anything_else_at_the_path_is_refused_and_kept(
    run_dir: Path, opened: list[control.ControlSocket], kind: str
) -> None:
    path = run_dir / "gw-a.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "symlink":
        path.symlink_to(run_dir / "elsewhere.sock")
    else:
        path.mkdir()
    with pytest.raises(ControlSocketError, match="exists and is not a socket: remove it"):
        bind(path, opened)
    assert path.is_symlink() if kind == "symlink" else path.exists()


def test_at_exit_only_our_own_socket_is_removed(
    run_dir: Path, opened: list[control.ControlSocket]
) -> None:
    path = run_dir / "gw-a.sock"
    ours = bind(path, opened)
    path.unlink()  # someone removed ours and another daemon bound the name meanwhile
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(path))
    theirs.listen(1)
    try:
        ours.close()
        assert answers(path), "the other daemon's socket was removed"
    finally:
        theirs.close()


def test_our_socket_is_removed_even_when_the_path_above_is_renamed(
    tmp_path: Path, opened: list[control.ControlSocket]
) -> None:
    """The file is removed through a descriptor of its directory, not by path."""
    path = tmp_path / "run" / "gw-a.sock"
    ours = bind(path, opened)
    (tmp_path / "run").rename(tmp_path / "moved")
    path.parent.mkdir()
    path.write_text("not ours")
    ours.close()
    assert not (tmp_path / "moved" / "gw-a.sock").exists()
    assert path.read_text() == "not ours"


async def test_serve_on_a_path_binds_it_by_the_same_rules_and_removes_it(run_dir: Path) -> None:
    """tests/tools/static_pair.py serves its counters this way."""
    import trio

    path = run_dir / "stats.sock"

    async def handler(request: dict[str, object]) -> dict[str, object]:
        return {"ok": True, "cmd": request["cmd"]}

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, str(path), handler)
        answer = await trio.to_thread.run_sync(control.request, str(path), {"cmd": "status"})
        assert answer == {"ok": True, "cmd": "status"}
        with pytest.raises(ControlSocketError, match="answers: another tunneld"):
            await nursery.start(control.serve, str(path), handler)
        nursery.cancel_scope.cancel()
    assert not path.exists()
