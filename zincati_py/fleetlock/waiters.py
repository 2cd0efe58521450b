"""Long-poll bookkeeping: which requests wait for a slot, whom to wake, when to look again.

A waiting ``pre-reboot`` (header ``fleet-lock-wait``) parks on an event keyed by group and
node. Decisions are told which nodes wait here (:meth:`Waiters.present`): a slot freed for
one of them is granted to it in the same write (``outcome.handed``) and handed to its
waiting request, which answers at once; other queued nodes offered a slot
(``outcome.offered``) are woken and re-ask the store. Nobody else is woken (no thundering
herd). A wake for a node with no request parked yet (its request is still between its
decision and its wait, e.g. decided in the same batch as the write that offered it the slot)
is kept: its wait, if its request was decided before the wake, re-asks at once instead of
sleeping until the recheck. When only time will change who may be granted (a cooldown ending, an
offer's grace running out, a lease expiring), one timer per group re-evaluates the group
then. A waiter also re-asks every ``recheck`` seconds, which is what keeps waiters of several
servers sharing one etcd moving when another server freed the slot.

A waiting request whose client went away (closed or half-closed its connection; the
request's ``closed`` future, :func:`zincati_py.fleetlock.guard.closed`) wakes at once and
leaves the wait: it is no longer present, nobody asks again on its behalf, and
:meth:`Waiters.abandon` settles what it leaves behind. Its queue entry keeps its place (it
expires like any entry of a node that stopped asking) but holds no free slot: it is marked
as an offer that lapsed, so a freed slot goes to the next in line, and the node asking again
renews it (our agent interrupts its waits and asks again with the same id). A slot granted
to it in a write that raced with the disconnect is given back at once, as is one granted to
a node with no live request here to hand it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from zincati_py.fleetlock.decide import (
    Event,
    GroupState,
    Holder,
    Policy,
    decide_admin,
    decide_unlock,
)

log = logging.getLogger("zincati_py.fleetlock.server")

RECHECK_SECS = 10.0
# How long a node whose waiting request went away is remembered: a decision that asked who
# waits here before that may hand it a slot later (bounded by the store's timeout).
GONE_SECS = 60.0


class _Store(Protocol):
    def apply(self, group: str, decide: Callable[[GroupState], Any]) -> Awaitable[Any]: ...


class Host(Protocol):
    """What :meth:`Waiters.abandon` needs of the server to settle a gone waiter."""

    @property
    def backend(self) -> _Store: ...

    def policy(self, group: str) -> Policy: ...

    async def backend_call(self, op: Awaitable[Any], *, change: bool = False) -> Any: ...

    def after(self, group: str, outcome: Any) -> None: ...


class _Waiter:
    """One parked request."""

    def __init__(self, alive: Callable[[], bool]) -> None:
        self.event = asyncio.Event()
        self.alive = alive
        self.grant: Holder | None = None


def lapse(node: str, grace_secs: float, now: float) -> Callable[[GroupState], Event | None]:
    """The change (for :func:`~zincati_py.fleetlock.decide.decide_admin`) a waiting request
    that went away unanswered makes: its node's queue entry keeps its place but holds no
    slot, as if its offer's grace had run out now (asking again restarts it)."""

    def change(state: GroupState) -> Event | None:
        for i, w in enumerate(state.queue):
            if w.id != node:
                continue
            lapsed = now - grace_secs
            if w.offered is not None and w.offered <= lapsed:
                return None  # lapsed already: blocks nobody
            state.queue[i] = w._replace(offered=lapsed)
            return Event(
                "wait_abandoned", now, node, to_version=w.to_version, detail={"position": i + 1}
            )
        return None

    return change


def _stamp(table: dict[str, dict[str, float]], group: str, node: str) -> None:
    """``table[group][node]`` = now (monotonic), dropping the group's entries older than
    GONE_SECS (nodes remembered for a while: gone clients, kept wakes)."""
    now = time.monotonic()
    stamps = table.setdefault(group, {})
    for n in [n for n, t in stamps.items() if now - t > GONE_SECS]:
        del stamps[n]
    stamps[node] = now


class Waiters:
    def __init__(
        self, tick: Callable[[str], Coroutine[Any, Any, None]], host: Host | None = None
    ) -> None:
        self._tick = tick
        self._host = host
        # group -> node -> its parked requests (a node may have more than one for a moment:
        # our agent interrupts a wait and asks again).
        self._events: dict[str, dict[str, list[_Waiter]]] = {}
        # An immutable copy per group, which the SQLite thread may read while a decision
        # runs there (present() is called at decision time).
        self._snapshot: dict[str, tuple[tuple[str, tuple[_Waiter, ...]], ...]] = {}
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # group -> node -> when its last waiting request here ended with its client gone.
        self._gone: dict[str, dict[str, float]] = {}
        # group -> node -> when it was last woken with no request of it parked here.
        self._woken: dict[str, dict[str, float]] = {}

    def waiting(self, group: str) -> int:
        return len(self._events.get(group, {}))

    def present(self, group: str) -> frozenset[str]:
        """Nodes with a request waiting here now, client still connected."""
        return frozenset(n for n, ws in self._snapshot.get(group, ()) if any(w.alive() for w in ws))

    def _snap(self, group: str) -> None:
        events = self._events.get(group)
        if events:
            self._snapshot[group] = tuple((n, tuple(ws)) for n, ws in events.items())
        else:
            self._snapshot.pop(group, None)

    async def wait(
        self,
        group: str,
        node: str,
        timeout: float,
        next_change: float | None = None,
        alive: Callable[[], bool] = lambda: True,
        closed: asyncio.Future[None] | None = None,
        asked: float | None = None,
    ) -> Holder | bool:
        """Park until woken, ``timeout`` or the client's connection ``closed``: the slot
        handed over, True if woken (to re-ask, unless the client went away), False at the
        timeout. ``next_change``: when time alone changes the group (the decision that
        refused this request said). ``asked``: when (``time.monotonic()``) the request asked
        the store; a wake for this node since then, while it was not parked, returns True at
        once (it was offered a slot its decision did not see)."""
        woken = self._woken.get(group, {}).pop(node, None)
        if asked is not None and woken is not None and woken >= asked:
            return True
        waiter = _Waiter(alive)
        self._gone.get(group, {}).pop(node, None)
        events = self._events.setdefault(group, {})
        events.setdefault(node, []).append(waiter)
        self._snap(group)

        def gone(_: object) -> None:
            waiter.event.set()

        if closed is not None:
            closed.add_done_callback(gone)
        try:
            self.schedule(group, next_change)
            async with asyncio.timeout(max(0.0, timeout)):
                await waiter.event.wait()
            return waiter.grant or True
        except TimeoutError:
            return waiter.grant or False
        finally:
            if closed is not None:
                closed.remove_done_callback(gone)
            mine = events.get(node, [])
            if waiter in mine:
                mine.remove(waiter)
            if not mine:
                events.pop(node, None)
            if not events and self._events.get(group) is events:
                del self._events[group]
            self._snap(group)
            if not waiter.alive() and waiter.grant is None:
                self._note_gone(group, node)

    def _note_gone(self, group: str, node: str) -> None:
        _stamp(self._gone, group, node)

    def wake(self, group: str, nodes: tuple[str, ...]) -> None:
        waiters = self._events.get(group, {})
        for node in nodes:
            parked = waiters.get(node, ())
            for waiter in parked:
                waiter.event.set()
            if not parked:
                _stamp(self._woken, group, node)

    def unwake(self, group: str, node: str) -> None:
        """Forget a kept wake of ``node`` (its own decision's offer: no news to it)."""
        self._woken.get(group, {}).pop(node, None)

    def hand_over(self, group: str, holder: Holder) -> bool:
        """Give a slot granted in a decision to a live request waiting for it; False if
        there is none. If the node's client went away since the decision asked who waits
        here, the slot is given back (with a host) rather than idled for a lease: by its
        request if still parked, else here. (A request that left the wait for another reason
        asks the store again and is told it holds the slot.)"""
        waiters = self._events.get(group, {}).get(holder.id, [])
        waiter = next((w for w in waiters if w.alive()), None)
        if waiter is None and waiters:
            # Its client went away but the request has not left the wait yet (it wakes in
            # a later step of the loop): it takes the slot, finds its client gone and gives
            # the slot back (the server's pre-reboot, through abandon()).
            waiter = waiters[0]
        if waiter is None:
            went = self._gone.get(group, {}).pop(holder.id, None)
            recent = went is not None and time.monotonic() - went <= GONE_SECS
            if recent and not waiters and self._host is not None:
                self._spawn(self.abandon(group, holder.id, holder))
            return False
        waiter.grant = holder
        for w in waiters:  # another request of the node re-asks: it holds the slot now
            w.event.set()
        return True

    async def abandon(self, group: str, node: str, handed: Holder | None = None) -> None:
        """Settle what ``node``'s request that went away unanswered leaves behind, unless
        another request of that node waits here: the slot ``handed`` to it given back, else
        its queue entry lapsed (:func:`lapse`)."""
        host = self._host
        if host is None or node in self.present(group):
            if handed is not None and host is not None:
                # Another live request of the node waits: it takes the slot instead.
                self.hand_over(group, handed)
            return
        try:
            policy = host.policy(group)
            now = time.time()
            present = functools.partial(self.present, group)
            decide: Callable[[GroupState], Any]
            if handed is not None:
                log.info("slot in group %s given back: %s went away", group, node)
                decide = functools.partial(
                    decide_unlock, node=node, policy=policy, now=now, present=present
                )
            else:
                change = lapse(node, policy.grace_secs, now)
                decide = functools.partial(
                    decide_admin, policy=policy, now=now, change=change, present=present
                )
            outcome = await host.backend_call(host.backend.apply(group, decide), change=True)
        except Exception as exc:  # the lease or the queue TTL settles it then
            log.warning(
                "settling the abandoned wait of %s in group %s failed: %s", node, group, exc
            )
            return
        host.after(group, outcome)

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
        self._spawn(self._tick(group))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
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
            for ws in waiters.values():
                for waiter in ws:
                    waiter.event.set()
