"""Waiters: a wake for a node whose request is between its decision and its wait is kept.

The etcd backend answers a batch in order: a release that offers the queue's head a slot
can be answered (and wake the head) before the head's own refusal, decided on the state from
before that release, reaches its wait. Without the kept wake the head slept until its
recheck (10 s) while the slot stayed held for it.
"""

from __future__ import annotations

import asyncio
import time

from zincati_py.fleetlock.waiters import Waiters


async def _tick(group: str) -> None:
    return None


def test_a_wake_before_the_wait_is_not_lost() -> None:
    async def scenario() -> None:
        waiters = Waiters(_tick)
        asked = time.monotonic()
        waiters.wake("g", ("head",))  # the release's answer, before the head parks
        started = time.monotonic()
        assert await waiters.wait("g", "head", 5.0, asked=asked) is True
        assert time.monotonic() - started < 1.0
        await waiters.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_wake_from_before_the_request_asked_is_stale() -> None:
    async def scenario() -> None:
        waiters = Waiters(_tick)
        waiters.wake("g", ("head",))
        await asyncio.sleep(0.01)
        asked = time.monotonic()  # it asked the store after that wake: its answer saw it
        assert await waiters.wait("g", "head", 0.2, asked=asked) is False
        # and a kept wake is used once
        waiters.wake("g", ("head",))
        assert await waiters.wait("g", "head", 0.2, asked=asked) is True
        assert await waiters.wait("g", "head", 0.2, asked=asked) is False
        await waiters.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_its_own_decisions_offer_is_forgotten() -> None:
    async def scenario() -> None:
        waiters = Waiters(_tick)
        asked = time.monotonic()
        waiters.wake("g", ("me",))
        waiters.unwake("g", "me")
        assert await waiters.wait("g", "me", 0.2, asked=asked) is False
        await waiters.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
