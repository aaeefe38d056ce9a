"""tunneld.alarms: one task wakes many peers at their deadlines (issue 12: a hub's
spokes no longer each wait in a cancel-scope timeout). On trio's virtual clock."""

from __future__ import annotations

import trio
import trio.testing

from tunneld.alarms import Alarms, next_tick


class Sleeper:
    def __init__(self) -> None:
        self.woken: list[float] = []

    def wake(self) -> None:
        self.woken.append(trio.current_time())


async def test_each_key_wakes_once_at_its_exact_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alarms: Alarms[Sleeper] = Alarms()
    early, late, moved, gone = Sleeper(), Sleeper(), Sleeper(), Sleeper()
    async with trio.open_nursery() as nursery:
        await nursery.start(alarms.run)
        alarms.set(late, 7.25)
        alarms.set(moved, 9.0)
        alarms.set(gone, 3.0)
        await trio.sleep(1)
        alarms.set(early, 2.5)  # earlier than the alarm task's current wait
        alarms.set(moved, 4.0)  # replaces 9.0
        alarms.set(gone, None)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert early.woken == [2.5] and late.woken == [7.25] and moved.woken == [4.0]
    assert gone.woken == [] and len(alarms) == 0


async def test_a_thousand_peers_on_one_tick_cost_one_wake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alarms: Alarms[Sleeper] = Alarms()
    peers = [Sleeper() for _ in range(1000)]
    async with trio.open_nursery() as nursery:
        await nursery.start(alarms.run)
        for k, peer in enumerate(peers):  # set at different times, due together
            alarms.set(peer, next_tick(0.1 + k / 2000, 1.0))
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert all(p.woken == [1.0] for p in peers)
    assert alarms.wakes == 1


def test_next_tick_is_the_next_multiple() -> None:
    assert next_tick(0.0, 1.0) == 1.0
    assert next_tick(41.999, 1.0) == 42.0
    assert next_tick(42.0, 1.0) == 43.0
