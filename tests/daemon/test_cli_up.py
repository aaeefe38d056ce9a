"""``tunneld up`` waits for the Child SA and ``tunneld down`` reports what happened.

Two daemons over in-memory devices on the real clock (the CLI polls the control
socket from a thread, as an operator's shell would). Both gateways listen
(``auto = "listen"``), so nothing is up until ``tunneld up`` initiates: the exit
code is the outcome of that one request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.helpers.daemon_memory import Pair, children, start_site
from tools.lab import SiteOptions, write_psk, write_site_configs
from tunneld import cli
from tunneld.io.udp import MemoryNetwork


async def start_pair(conf_a: Path, conf_b: Path) -> AsyncIterator[Pair]:
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        b, cancel_b = await start_site(nursery, conf_b, network)
        a, cancel_a = await start_site(nursery, conf_a, network)
        yield Pair(a, b, network, nursery, cancel_a, cancel_b)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Pair]:
    opts = SiteOptions(auth="psk", auto_a="listen", auto_b="listen")
    conf_a, conf_b = write_site_configs(tmp_path, "mem", opts)
    async for pair in start_pair(conf_a, conf_b):
        yield pair


@pytest.fixture
async def wrong_psk(tmp_path: Path) -> AsyncIterator[Pair]:
    """gw-b holds another PSK than gw-a: it refuses gw-a's IKE_AUTH."""
    opts = SiteOptions(auth="psk", auto_a="listen", auto_b="listen")
    conf_a, conf_b = write_site_configs(tmp_path, "mem", opts)
    (tmp_path / "other").mkdir()
    other = write_psk(tmp_path / "other")
    text = conf_b.read_text()
    shared = str(tmp_path / "psk.txt")
    assert shared in text
    conf_b.write_text(text.replace(shared, str(other)))
    async for pair in start_pair(conf_a, conf_b):
        yield pair


async def run_cli(*argv: str) -> tuple[int, float]:
    """``tunneld ARGV`` in a thread: its exit code and how long it took."""
    started = time.monotonic()
    code = await trio.to_thread.run_sync(cli.main, list(argv))
    return code, time.monotonic() - started


async def test_up_returns_0_once_the_child_sa_is_up(
    listening: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert children(listening.a) == []
    code, took = await run_cli("up", "gw-b", "-s", str(listening.a.socket), "--timeout", "20")
    out = capsys.readouterr().out
    assert code == 0, out
    assert children(listening.a), "exit 0 before the Child SA was up"
    assert "up gw-b: Child SA up" in out and "===" in out, out
    assert took < 20


async def test_up_against_a_refusing_peer_fails_with_its_reason(
    wrong_psk: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, took = await run_cli("up", "gw-b", "-s", str(wrong_psk.a.socket), "--timeout", "20")
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED, err
    assert took < 20
    assert "up gw-b: failed:" in err and "AUTHENTICATION_FAILED" in err, err
    assert children(wrong_psk.a) == []


async def test_up_times_out_when_the_peer_does_not_answer(
    listening: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    listening.cancel_b.cancel()  # gw-b is gone: IKE_SA_INIT goes unanswered
    await trio.sleep(0.1)
    code, took = await run_cli("up", "gw-b", "-s", str(listening.a.socket), "--timeout", "1.5")
    err = capsys.readouterr().err
    assert code == cli.EXIT_TIMEOUT, err
    assert 1.5 <= took < 5
    assert "no Child SA after 1.5s (state connecting" in err, err


async def test_up_of_an_unknown_peer_is_refused(
    listening: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await run_cli("up", "gw-x", "-s", str(listening.a.socket))
    assert code == cli.EXIT_FAILED
    assert "no peer named 'gw-x'" in capsys.readouterr().err


async def test_down_reports_the_deleted_sas(
    listening: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await run_cli("up", "gw-b", "-s", str(listening.a.socket))
    assert code == 0
    code, _ = await run_cli("down", "gw-b", "-s", str(listening.a.socket))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "down gw-b: deleted 1 IKE SA and 1 Child SA (DELETE answered)" in out, out
    code, _ = await run_cli("down", "gw-b", "-s", str(listening.a.socket))
    assert code == 0
    assert "down gw-b: no SA was up" in capsys.readouterr().out


async def test_down_without_an_answer_says_so(
    listening: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await run_cli("up", "gw-b", "-s", str(listening.a.socket))
    assert code == 0
    listening.cancel_b.cancel()  # gw-b is gone: the DELETE goes unanswered
    await trio.sleep(0.1)
    code, took = await run_cli("down", "gw-b", "-s", str(listening.a.socket), "--timeout", "1")
    err = capsys.readouterr().err
    assert code == cli.EXIT_TIMEOUT, err
    assert 1 <= took < 5
    assert "Child SAs removed, but the peer has not answered the DELETE within 1s" in err, err
    assert children(listening.a) == []
