"""The small interface between the agent's loop and its collaborators.

``service.Agent`` is the loop and lifecycle: it owns the collaborators (``deployments``,
``reboot``, ``reload``, ``publish``; ``graph`` for the update graph) and calls into them. They
talk back to it only through :class:`Host` (wake me, run this task, announce the state now),
and read each other one way:
``reboot`` and ``publish`` read ``deployments`` and ``reload``; ``deployments`` and ``reload``
read nobody. None of them imports ``service``, so there is no cycle.

:class:`Retries` is the per-action retry bookkeeping the loop and the collaborators share
(backoff, "not before", the failure text the status shows meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from zincati_py.agent.machine import Action
from zincati_py.backoff import Backoff

log = logging.getLogger("zincati_py.agent")

# What an action leaves behind: None when it made progress (evaluate again at once), else the
# reason the agent waits and the wall-clock time to evaluate again without an event.
Outcome = tuple[str, float | None] | None

T = TypeVar("T")


class Interrupted(Exception):
    """A wait given up because the agent has other work (see :meth:`Host.interruptible`);
    the message says what came."""


class Host(Protocol):
    """What a collaborator may ask of the loop."""

    lock: asyncio.Lock  # held by every evaluation

    def claim(self, why: str) -> AbstractAsyncContextManager[None]:
        """The lock, for a collaborator changing facts: an interruptible wait the running
        evaluation is in is given up rather than waited for."""

    async def interruptible(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro``, a wait that may last (a strategy's long poll for a reboot slot),
        unless the agent has other work first: a wake (an event, the timer), a ``claim`` of
        the lock (a configuration change, RebootNow) or a stop. Then ``coro`` is cancelled,
        :class:`Interrupted` is raised and the loop evaluates again once that work is done."""

    def wake(self, reason: str) -> None:
        """Evaluate again soon (safe from any callback in the loop)."""

    def note_event(self) -> None:
        """An event arrived that will wake the loop later: the decision latency starts now."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the loop cancels and awaits at shutdown."""

    def announce(self) -> None:
        """Publish the state the facts describe right now (before an action that may end
        the host before another evaluation runs)."""


class Waits:
    """The interruptible wait of the running evaluation (``Host.interruptible``) and the
    claims of the lock that give it up (``Host.claim``)."""

    def __init__(self, lock: asyncio.Lock, again: Callable[[str], None]) -> None:
        self.lock = lock
        # Told (why) when a wait is given up: the loop asks again once that work is done.
        self.again = again
        self._waiting: asyncio.Task[Any] | None = None
        self._interrupted: str | None = None
        self._claims: list[str] = []  # why each collaborator waiting for the lock wants it

    @contextlib.asynccontextmanager
    async def claim(self, why: str) -> AsyncIterator[None]:
        self._claims.append(why)
        self.interrupt(why)
        try:
            await self.lock.acquire()
        finally:
            self._claims.remove(why)
        try:
            yield
        finally:
            self.lock.release()

    async def interruptible(self, coro: Coroutine[Any, Any, T], came: str | None) -> T:
        """Await ``coro`` unless interrupted; ``came``: work that arrived already."""
        why = self._claims[0] if self._claims else came
        if why is not None:
            coro.close()
            self.again(why)
            raise Interrupted(why)
        task: asyncio.Task[T] = asyncio.get_running_loop().create_task(coro)
        self._waiting, self._interrupted = task, None
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._interrupted is not None and (me is None or not me.cancelling()):
                raise Interrupted(self._interrupted) from None
            raise  # the evaluation itself is cancelled (shutdown)
        finally:
            self._waiting = None

    def interrupt(self, why: str) -> bool:
        """Give up the interruptible wait, if one runs; whether one did."""
        task = self._waiting
        if task is None or task.done() or self._interrupted is not None:
            return False
        log.info("%s: the strategy's wait is interrupted (asked again afterwards)", why)
        self._interrupted = why
        task.cancel()
        self.again(why)
        return True


class Retries:
    """Backoff per action, the time before which it is not tried again, and why."""

    def __init__(self) -> None:
        self.backoffs = {a: Backoff(1.0, 300.0) for a in Action}
        self.not_before: dict[Action, float] = {}
        self.failure: dict[Action, str] = {}

    def retry(self, action: Action, message: str) -> tuple[str, float]:
        from zincati_py.agent.status import iso

        at = self.defer(action)
        text = f"{message}; retrying at {iso(at)}"
        self.failure[action] = text
        return (text, at)

    def defer(self, action: Action) -> float:
        """Do not try ``action`` before the next backoff delay has passed; returns when."""
        at = time.time() + self.backoffs[action].next_delay()
        self.not_before[action] = at
        return at

    def succeeded(self, action: Action) -> None:
        self.backoffs[action].reset()
        self.failure.pop(action, None)
        self.not_before.pop(action, None)

    def forget(self) -> None:
        """A new boot: earlier failures and waits no longer apply (backoffs keep growing)."""
        self.not_before.clear()
        self.failure.clear()


_malloc_trim: Any = None  # glibc's malloc_trim, False where there is none


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim``): what start-up
    and an evaluation allocated and freed stays resident otherwise (about 0.5 MiB at idle,
    bench/agent_idle.py). A no-op without glibc. ctypes is loaded already (pyinotify)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


async def save(saved: Awaitable[Any], what: str) -> None:
    """Await a durable write nothing waits for (a record no action depends on)."""
    try:
        await saved
    except OSError as exc:
        log.warning("%s not saved: %s", what, exc)
