"""Handshakes do not accumulate memory on a hub (issue 12): spokes that come and go
again and again leave no finished IKE session behind, in any peer's timers or
tables. Before the fix each peer's deadline heap kept up to 64 superseded entries,
each holding a finished session with its keys and messages (about 12 KiB per
handshake on a hub). In-memory devices on trio's virtual clock; the
configurations: tests/helpers/hubs.py.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from ike.session import IkeSession
from ike.states import IkeState
from tests.helpers.daemon_memory import Site, start_site
from tests.helpers.hubs import write_hub_configs
from tunneld.alarms import Deadlines
from tunneld.io.udp import MemoryNetwork

CYCLES = 6
SPOKES = 2


def up(site: Site) -> set[str]:
    return {
        p["name"]
        for p in site.daemon.status()["peers"]
        if p["state"] == "established" and p["child_sas"]
    }


async def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def live_sessions() -> list[IkeSession]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, IkeSession)]


async def test_spokes_coming_and_going_leave_no_session_behind(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    files = write_hub_configs(tmp_path, "pattern", spokes=SPOKES, max_spokes=10)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub, _ = await start_site(nursery, files.hub, network)
        spokes = [(await start_site(nursery, p, network))[0] for p in files.spokes]
        await wait_until(lambda: len(up(hub)) == SPOKES)
        for _ in range(CYCLES):
            for spoke in spokes:
                spoke.daemon.peers["hub"].down(None)
            await wait_until(lambda: not up(hub))
            for spoke in spokes:
                spoke.daemon.peers["hub"].up()
            await wait_until(lambda: len(up(hub)) == SPOKES)
        await trio.sleep(300)  # past every closed session's retransmission window
        sessions = live_sessions()
        # one established IKE SA per spoke on each side, nothing else alive
        assert [s.state for s in sessions] == [IkeState.ESTABLISHED] * (2 * SPOKES)
        hub_spokes = hub.daemon.directory.hubs["branches"].spokes  # type: ignore[union-attr]
        assert len(hub_spokes) == SPOKES
        nursery.cancel_scope.cancel()


class Key:
    """A stand-in for a session: hashable, weakly referenceable."""


def test_deadlines_keep_no_removed_or_superseded_key_alive() -> None:
    deadlines: Deadlines[Key] = Deadlines()
    keep = Key()
    deadlines.set(keep, 100.0)
    refs = []
    for k in range(200):
        gone = Key()
        deadlines.set(gone, 50.0 + k)
        deadlines.set(gone, 60.0 + k)  # superseded: the first entry is stale
        deadlines.set(gone, None)  # removed, as a finished session is
        refs.append(weakref.ref(gone))
        del gone
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert len(deadlines) == 1 and deadlines.earliest() == 100.0
    assert len(deadlines._heap) <= 2 * len(deadlines) + 16  # stale pairs compacted
    assert deadlines.pop_due(99.0) == [] and deadlines.pop_due(100.0) == [keep]


async def test_finished_sessions_go_without_the_cycle_collector(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A finished IKE session is freed when its record goes, on either side: nothing it
    holds (its keys included) waits for a full collection. The initiator's session used
    to hold the peer's initial-contact callback, which held the session."""
    files = write_hub_configs(tmp_path, "pattern", spokes=SPOKES, max_spokes=10)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        hub, _ = await start_site(nursery, files.hub, network)
        spokes = [(await start_site(nursery, p, network))[0] for p in files.spokes]
        await wait_until(lambda: len(up(hub)) == SPOKES)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
        try:
            for _ in range(2):
                for spoke in spokes:
                    spoke.daemon.peers["hub"].down(None)
                await wait_until(lambda: not up(hub))
                for spoke in spokes:
                    spoke.daemon.peers["hub"].up()
                await wait_until(lambda: len(up(hub)) == SPOKES)
            await trio.sleep(300)  # past every closed session's retransmission window
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, IkeSession)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert cyclic == []
        assert len(live_sessions()) == 2 * SPOKES  # the finished ones are gone
        nursery.cancel_scope.cancel()
