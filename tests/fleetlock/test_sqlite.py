"""Issue 17, the SQLite backend's write path: one fsynced transaction per change (WAL,
synchronous=FULL), none for a request that changes nothing, and a decision made on the
connection's parsed copy is made again when another connection wrote meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleetlock import decisions
from zincati_py.fleetlock.backends import BackendUnavailable, GroupState
from zincati_py.fleetlock.backends.sqlite import SqliteBackend
from zincati_py.fleetlock.decide import Policy

POLICY = Policy(slots=1, lease_seconds=600)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def lock(node: str, now: float | None = None) -> Any:
    return decisions.lock(node, POLICY, now)


def unlock(node: str) -> Any:
    return decisions.unlock(node, POLICY)


@contextlib.asynccontextmanager
async def stale_copy(tmp_path: Path) -> AsyncIterator[tuple[SqliteBackend, SqliteBackend]]:
    """Two connections to one file (as two server processes): ``a`` granted on the first,
    released on the second, so the first one's copy still has ``a`` holding the slot."""
    one = SqliteBackend(str(tmp_path / "f.db"))
    two = SqliteBackend(str(tmp_path / "f.db"))
    try:
        assert (await one.apply("g", lock("a"))).granted
        assert (await two.apply("g", unlock("a"))).released
        yield one, two
    finally:
        await one.close()
        await two.close()


def test_one_durable_transaction_per_change_and_none_for_a_noop(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, bool]]:
        backend = SqliteBackend(str(tmp_path / "f.db"))
        steps: list[tuple[int, bool]] = []
        try:
            for decide in (lock("a"), lock("a"), unlock("zz"), unlock("a"), unlock("a")):
                outcome = await backend.apply("g", decide)
                steps.append((backend.commits, outcome.written))
            modes = await backend._run(
                lambda c: (
                    c.execute("PRAGMA journal_mode").fetchone()[0],
                    c.execute("PRAGMA synchronous").fetchone()[0],
                )
            )
            # Durable: write-ahead log, fsynced at every commit (FULL = 2).
            assert modes == ("wal", 2)
            ledger = await backend.history(group="g")
            assert [e["kind"] for e in ledger] == ["grant", "release"]
        finally:
            await backend.close()
        return steps

    # grant: commit; renew early in the lease, unlock of a slot not held: nothing written,
    # no transaction; release: commit; releasing again: nothing.
    assert run(scenario()) == [(1, True), (1, False), (1, False), (2, True), (2, False)]


def test_a_noop_on_a_stale_copy_is_decided_again_on_what_another_writer_stored(
    tmp_path: Path,
) -> None:
    """Two connections to one file (as two server processes): ``a`` renewing early in its
    lease changes nothing on the first connection's copy, but the other released ``a`` and
    granted ``b`` meanwhile, so ``a`` is refused and queued (and that is written)."""

    async def scenario() -> tuple[Any, GroupState]:
        async with stale_copy(tmp_path) as (one, two):
            assert (await two.apply("g", lock("b"))).granted
            again = await one.apply("g", lock("a"))
            return again, await two.state("g")

    again, stored = run(scenario())
    assert not again.granted and again.refusal == "group_full" and again.position == 1
    assert set(stored.holders) == {"b"} and [w.id for w in stored.queue] == ["a"]


def test_a_change_decided_on_a_stale_copy_is_decided_again_under_the_write_lock(
    tmp_path: Path,
) -> None:
    """On the first connection's copy ``a`` holds the only slot, so ``c`` would be queued;
    the other connection released ``a`` meanwhile: ``c`` is granted, and nothing else."""

    async def scenario() -> tuple[Any, GroupState]:
        async with stale_copy(tmp_path) as (one, two):
            granted = await one.apply("g", lock("c"))
            return granted, await two.state("g")

    granted, stored = run(scenario())
    assert granted.granted
    assert set(stored.holders) == {"c"} and stored.queue == []


def test_a_failing_decision_fails_only_its_caller_and_a_closed_store_is_unavailable(
    tmp_path: Path,
) -> None:
    def broken(state: GroupState) -> Any:
        raise RuntimeError("a bug in one decision")

    async def scenario() -> None:
        backend = SqliteBackend(str(tmp_path / "f.db"))
        results = await asyncio.gather(
            backend.apply("g", lock("a")),
            backend.apply("g", broken),
            backend.apply("g", lock("b")),
            return_exceptions=True,
        )
        assert results[0].granted  # type: ignore[union-attr]
        assert isinstance(results[1], RuntimeError)
        assert results[2].refusal == "group_full"  # type: ignore[union-attr]
        await backend.close()
        with pytest.raises(BackendUnavailable):
            await backend.apply("g", lock("c"))

    run(scenario())


def test_a_change_runs_on_the_loop_but_never_waits_there_for_another_writer(
    tmp_path: Path,
) -> None:
    """Once the connection is open, a transaction runs on the event loop (no hand-over to
    the SQLite thread and back). When another process holds the write lock, the loop does
    not wait for it: the SQLite thread does (the loop keeps running meanwhile), and the
    change commits once the lock is free; the next changes stay on the thread for a while."""
    import sqlite3
    import threading

    where: list[str] = []

    def probe(decide: Any) -> Any:
        def run_it(state: GroupState) -> Any:
            where.append(threading.current_thread().name)
            return decide(state)

        return run_it

    async def scenario() -> None:
        backend = SqliteBackend(str(tmp_path / "f.db"))
        other = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
        try:
            assert (await backend.apply("g", probe(lock("a")))).granted  # opens: thread
            assert (await backend.apply("g", probe(unlock("a")))).released  # on the loop
            assert where[1] == threading.current_thread().name != where[0]
            other.execute("BEGIN IMMEDIATE")  # another process writing
            change = asyncio.create_task(backend.apply("g", probe(lock("b"))))
            started = time.monotonic()
            for _ in range(20):  # the loop runs while the change waits for the lock
                await asyncio.sleep(0.01)
            assert time.monotonic() - started < 2  # the busy timeout is 5 s
            assert not change.done()
            other.execute("COMMIT")
            assert (await asyncio.wait_for(change, 10)).granted
            assert where[-1] == where[0]  # decided on the SQLite thread
            assert (await backend.apply("g", probe(unlock("b")))).released
            assert where[-1] == where[0]  # and the next one too, for a while
            fresh = sqlite3.connect(tmp_path / "f.db")
            kinds = [json.loads(d)["kind"] for (d,) in fresh.execute("SELECT doc FROM ledger")]
            fresh.close()
            assert kinds == ["grant", "release", "grant", "release"]
        finally:
            other.close()
            await backend.close()

    run(scenario())


def test_slow_commits_in_a_row_send_the_next_ones_to_the_thread(tmp_path: Path) -> None:
    """A stalled disk must not hold the event loop up commit after commit: after three
    inline transactions in a row slower than 50 ms (here: slow decisions), the next ones
    run on the SQLite thread; one slow transaction alone (the loop preempted) does not."""
    import threading

    from zincati_py.fleetlock.backends import sqlite as module

    where: list[str] = []

    def slow(decide: Any, secs: float) -> Any:
        def run_it(state: GroupState) -> Any:
            where.append(threading.current_thread().name)
            time.sleep(secs)
            return decide(state)

        return run_it

    async def scenario() -> None:
        backend = SqliteBackend(str(tmp_path / "f.db"))
        here = threading.current_thread().name
        over = module.INLINE_SLOW_SECS + 0.01
        try:
            await backend.apply("g", slow(lock("a"), 0))  # opens the connection: thread
            await backend.apply("g", slow(unlock("a"), over))
            await backend.apply("g", slow(lock("a"), 0))  # fast: the count starts again
            assert where[1:] == [here, here]
            for decide in (unlock("a"), lock("a"), unlock("a")):
                await backend.apply("g", slow(decide, over))
            assert where[3:] == [here, here, here]
            await backend.apply("g", slow(lock("b"), 0))
            assert where[-1] == where[0] != here  # on the SQLite thread now
        finally:
            await backend.close()

    run(scenario())
