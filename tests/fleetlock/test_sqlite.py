"""Issue 17, the SQLite backend's write path: one fsynced transaction per change (WAL,
synchronous=FULL), none for a request that changes nothing, and a decision made on the
connection's parsed copy is made again when another connection wrote meanwhile."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import pytest

from zincati_py.fleetlock.backends import BackendUnavailable, GroupState
from zincati_py.fleetlock.backends.sqlite import SqliteBackend
from zincati_py.fleetlock.decide import LockRequest, Policy, decide_lock, decide_unlock

POLICY = Policy(slots=1, lease_seconds=600)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def lock(node: str, now: float | None = None) -> Any:
    return functools.partial(
        decide_lock,
        request=LockRequest(node),
        policy=POLICY,
        lease_seconds=POLICY.lease_seconds,
        now=time.time() if now is None else now,
    )


def unlock(node: str) -> Any:
    return functools.partial(decide_unlock, node=node, policy=POLICY, now=time.time())


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
        one = SqliteBackend(str(tmp_path / "f.db"))
        two = SqliteBackend(str(tmp_path / "f.db"))
        try:
            assert (await one.apply("g", lock("a"))).granted
            assert (await two.apply("g", unlock("a"))).released
            assert (await two.apply("g", lock("b"))).granted
            again = await one.apply("g", lock("a"))
            return again, await two.state("g")
        finally:
            await one.close()
            await two.close()

    again, stored = run(scenario())
    assert not again.granted and again.refusal == "group_full" and again.position == 1
    assert set(stored.holders) == {"b"} and [w.id for w in stored.queue] == ["a"]


def test_a_change_decided_on_a_stale_copy_is_decided_again_under_the_write_lock(
    tmp_path: Path,
) -> None:
    """On the first connection's copy ``a`` holds the only slot, so ``c`` would be queued;
    the other connection released ``a`` meanwhile: ``c`` is granted, and nothing else."""

    async def scenario() -> tuple[Any, GroupState]:
        one = SqliteBackend(str(tmp_path / "f.db"))
        two = SqliteBackend(str(tmp_path / "f.db"))
        try:
            assert (await one.apply("g", lock("a"))).granted
            assert (await two.apply("g", unlock("a"))).released
            granted = await one.apply("g", lock("c"))
            return granted, await two.state("g")
        finally:
            await one.close()
            await two.close()

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
