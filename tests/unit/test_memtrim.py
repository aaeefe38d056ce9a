"""When the daemon gives freed heap back (tunneld.memtrim): at ready, after churn once
it is quiet (or MAX_DELAY into continuous churn), never when idle. trio's virtual
clock; the trim itself is a stand-in that records when it ran, plus one real call."""

from __future__ import annotations

import trio
import trio.testing

from tunneld.memtrim import MAX_DELAY, QUIET, HeapTrimmer, _malloc_trim


class Recorder:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self, pad: int) -> int:
        assert pad == 0  # every free page, not just the top
        self.at.append(trio.current_time())
        return 1


async def test_trims_at_ready_then_after_churn_once_quiet_and_never_when_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trim = Recorder()
    trimmer = HeapTrimmer(trim)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        nursery.start_soon(trimmer.run)
        await trio.sleep(100)  # idle: no trim but the first
        assert trim.at == [t0]
        trimmer.churn()  # a handshake: a session created ...
        await trio.sleep(0.01)
        trimmer.churn()  # ... and one forgotten
        churned = trio.current_time()
        await trio.sleep(10)
        assert len(trim.at) == 2
        assert churned + QUIET <= trim.at[1] <= churned + 2 * QUIET
        await trio.sleep(100)
        assert len(trim.at) == 2 and trimmer.trims == 2
        nursery.cancel_scope.cancel()


async def test_continuous_churn_still_trims_every_max_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trim = Recorder()
    trimmer = HeapTrimmer(trim)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        await trio.sleep(1)
        start = trio.current_time()
        while trio.current_time() < start + 3.5 * MAX_DELAY:  # a hub's spokes come and go
            trimmer.churn()
            await trio.sleep(QUIET / 4)
        gaps = [b - a for a, b in zip(trim.at[1:], trim.at[2:], strict=False)]
        assert len(trim.at) - 1 == 3, trim.at
        assert all(MAX_DELAY <= gap <= MAX_DELAY + 2 * QUIET for gap in gaps), gaps
        nursery.cancel_scope.cancel()


async def test_without_malloc_trim_nothing_happens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trimmer = HeapTrimmer()
    trimmer._trim = None  # a C library without malloc_trim (musl)
    with trio.move_on_after(5):
        await trimmer.run()  # returns at once
    trimmer.churn()
    trimmer.trim_now()
    assert trimmer.trims == 0 and not trimmer.available


def test_the_real_malloc_trim_is_found_and_runs() -> None:
    trim = _malloc_trim()
    assert trim is not None  # glibc: the platform tunneld runs on
    blocks = [bytearray(4096) for _ in range(4096)]  # 16 MB in the heap, then freed
    del blocks
    trim(0)
    trimmer = HeapTrimmer()
    trimmer.trim_now()
    assert trimmer.available and trimmer.trims == 1 and trimmer.seconds >= 0
