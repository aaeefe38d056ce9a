"""Deadlines of many keys, and one trio task that wakes many peer tasks at theirs.

Theory of operation:

1. :class:`Deadlines` is the earliest of many keys' deadlines in a heap, with
   lazy deletion; each peer keeps its sessions' timers in one (peer.py rule 9).
2. A trio timeout (``move_on_at``) that runs out *cancels* its scope: the
   waiting task is woken by a ``Cancelled`` exception raised and caught, the
   scope's deadline is registered and withdrawn on every wait. A hub has a
   task per spoke and each wakes at least once a second (peer.py rule 4):
   with 1,000 spokes that was 13% of a responder's samples during a burst of
   handshakes (issue 12). So peer tasks wait on their inbox only, and
   :class:`Alarms`, one task for all of them, holds each peer's next deadline
   and, when it has come, wakes the peer with a poke into its inbox (a plain
   reschedule, no exception). Its own wait is one cancel scope whose deadline
   moves earlier when an earlier alarm is set (no new scope, no cancel).
3. Deadlines that are equal are served by one wake of the alarm task. The
   once-a-second look at every peer's Child SA counters is no peer deadline
   at all: the daemon's watcher reads them on whole seconds (:func:`next_tick`)
   and wakes only the peers whose counters moved (peer.py rule 4).
4. Time is ``trio.current_time()`` only: on trio's virtual clock a peer wakes
   at exactly its deadline, as it did under ``move_on_at``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

import trio

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """The earliest of many keys' deadlines without walking them (a heap, lazy deletion).

    The heap holds (deadline, ticket) pairs only; ``_keys`` maps a live ticket to its
    key. A superseded or removed entry thus keeps no key alive (a finished session and
    its keys are freed at once, not when its stale deadline comes up), and the stale
    pairs are compacted away once they outnumber the live ones."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._at: dict[K, tuple[float, int]] = {}
        self._keys: dict[int, K] = {}
        self._seq = itertools.count()

    def set(self, key: K, at: float | None) -> None:
        old = self._at.pop(key, None)
        if old is not None:
            if old[0] == at:
                self._at[key] = old
                return
            del self._keys[old[1]]
        if at is None or at == math.inf:
            return
        ticket = next(self._seq)
        self._at[key] = (at, ticket)
        self._keys[ticket] = key
        heapq.heappush(self._heap, (at, ticket))
        if len(self._heap) > 2 * len(self._at) + 16:  # superseded entries: compact
            self._heap = [entry for entry in self._heap if entry[1] in self._keys]
            heapq.heapify(self._heap)

    def earliest(self) -> float:
        while self._heap:
            at, ticket = self._heap[0]
            if ticket in self._keys:
                return at
            heapq.heappop(self._heap)
        return math.inf

    def pop_due(self, now: float) -> list[K]:
        """The keys whose deadline is at or before ``now`` (forgotten here)."""
        due: list[K] = []
        while self._heap and self._heap[0][0] <= now:
            _, ticket = heapq.heappop(self._heap)
            key = self._keys.pop(ticket, None)
            if key is not None:
                del self._at[key]
                due.append(key)
        return due

    def __len__(self) -> int:
        return len(self._at)


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now`` (rule 3: shared deadlines)."""
    return (math.floor(now / interval) + 1) * interval


class Wakeable(Hashable, Protocol):
    def wake(self) -> None: ...


W = TypeVar("W", bound=Wakeable)


class Alarms(Generic[W]):
    """Rule 2: wakes each key (a peer) once its deadline has come, from one task."""

    def __init__(self) -> None:
        self._due: Deadlines[W] = Deadlines()
        self._scope: trio.CancelScope | None = None
        self.wakes = 0  # the alarm task's wake-ups (each serves every key then due)

    def set(self, key: W, at: float | None) -> None:
        """Wake ``key`` at ``at`` (None or inf: never); replaces its earlier alarm."""
        self._due.set(key, at)
        scope = self._scope
        if scope is not None and at is not None and at < scope.deadline:
            scope.deadline = at  # moves the one registered deadline; cancels nothing

    def __len__(self) -> int:
        return len(self._due)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._due.earliest()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            self.wakes += 1
            for key in self._due.pop_due(trio.current_time()):
                key.wake()
