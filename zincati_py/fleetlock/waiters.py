"""Long-poll bookkeeping: which requests wait for a slot, whom to wake, when to look again.

A waiting ``pre-reboot`` (header ``fleet-lock-wait``) parks on an event keyed by group and
node. Decisions are told which nodes wait here (:meth:`Waiters.present`): a slot freed for
one of them is granted to it in the same write (``outcome.handed``) and handed to its
waiting request, which answers at once; other queued nodes offered a slot
(``outcome.offered``) are woken and re-ask the store. Nobody else is woken (no thundering
herd). When only time will change who may be granted (a cooldown ending, an
offer's grace running out, a lease expiring), one timer per group re-evaluates the group
then. A waiter also re-asks every ``recheck`` seconds, which is what keeps waiters of several
servers sharing one etcd moving when another server freed the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from zincati_py.fleetlock.decide import Holder

RECHECK_SECS = 10.0


class _Waiter:
    def __init__(self, alive: Callable[[], bool]) -> None:
        self.event = asyncio.Event()
        self.alive = alive
        self.grant: Holder | None = None


class Waiters:
    def __init__(self, tick: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        self._tick = tick
        self._events: dict[str, dict[str, _Waiter]] = {}
        # An immutable copy per group, which the SQLite thread may read while a decision
        # runs there (present() is called at decision time).
        self._snapshot: dict[str, tuple[tuple[str, _Waiter], ...]] = {}
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def waiting(self, group: str) -> int:
        return len(self._events.get(group, {}))

    def present(self, group: str) -> frozenset[str]:
        """Nodes whose request waits here now, client still connected."""
        return frozenset(n for n, w in self._snapshot.get(group, ()) if w.alive())

    def _snap(self, group: str) -> None:
        events = self._events.get(group)
        if events:
            self._snapshot[group] = tuple(events.items())
        else:
            self._snapshot.pop(group, None)

    async def wait(
        self,
        group: str,
        node: str,
        timeout: float,
        next_change: float | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> Holder | bool:
        """Park until woken or ``timeout``: the slot handed over, True if woken to re-ask,
        False at the timeout. ``next_change``: when time alone changes the group (the
        decision that refused this request said)."""
        events = self._events.setdefault(group, {})
        waiter = events.get(node)
        if waiter is None:
            waiter = events[node] = _Waiter(alive)
            self._snap(group)
        self.schedule(group, next_change)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await waiter.event.wait()
            return waiter.grant or True
        except TimeoutError:
            return waiter.grant or False
        finally:
            if events.get(node) is waiter:
                del events[node]
            if not events:
                self._events.pop(group, None)
            self._snap(group)

    def wake(self, group: str, nodes: tuple[str, ...]) -> None:
        waiters = self._events.get(group, {})
        for node in nodes:
            waiter = waiters.get(node)
            if waiter is not None:
                waiter.event.set()

    def hand_over(self, group: str, holder: Holder) -> bool:
        """Give a slot granted in a decision to the request waiting for it."""
        waiter = self._events.get(group, {}).get(holder.id)
        if waiter is None:
            return False
        waiter.grant = holder
        waiter.event.set()
        return True

    def schedule(self, group: str, at: float | None) -> None:
        """Re-evaluate ``group`` at wall-clock time ``at`` if someone waits there (one timer
        per group: the earliest wins)."""
        if at is None or not self._events.get(group):
            return
        current = self._timers.get(group)
        if current is not None and current[0] <= at and not current[1].cancelled():
            return
        if current is not None:
            current[1].cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time()) + 0.01
        self._timers[group] = (at, loop.call_later(delay, self._fire, group))

    def _fire(self, group: str) -> None:
        self._timers.pop(group, None)
        task = asyncio.get_running_loop().create_task(self._tick(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for waiters in self._events.values():
            for waiter in waiters.values():
                waiter.event.set()
