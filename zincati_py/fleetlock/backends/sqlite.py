"""Embedded SQLite backend: one file, WAL, one transaction per change.

A group's state is rows (holders, queue entries) plus one JSON document, laid out by
:mod:`.sqlite_rows`; ledger events are rows written in the same transaction as the change
they record. Every commit is fsynced (``synchronous=FULL``) before the client hears the
answer, so neither a SIGKILL nor a power cut can lose a grant and hand the slot out twice.
Other processes sharing the file are serialised by ``BEGIN IMMEDIATE``.

Where transactions run: on the event loop, like Redis's ``appendfsync always`` (the fsync of
a few WAL pages takes 0.1-0.2 ms here; handing each change to a thread and the answer back
cost more CPU than the transaction itself: server CPU per sequential request 600 -> 470 us,
lock+unlock pairs/s +30 %, measured on this 2-core machine). The loop never waits on
someone else, though: the first connection, reads for the admin API, a transaction that
finds another process holding the write lock (busy timeout 0 on the loop; the thread waits
up to 5 s), and every transaction for 30 s after three in a row took over 50 ms each (a slow
or stalled disk) run on one dedicated SQLite thread instead. A disk that hangs in the middle
of an fsync still holds the loop up for that one commit.

Group commit: changes that arrive while a transaction is in flight, or in the same step of
the loop, are applied together, in arrival order, in the next transaction (one fsync for all
of them); each caller hears its answer only once that transaction committed, so "answered"
still means "durable".

A change costs one transaction and one fsync (the WAL's, at COMMIT): ``BEGIN IMMEDIATE``,
``PRAGMA data_version``, the rows that differ, the ledger rows, ``COMMIT``. States are decided
on the parsed copy this connection keeps as of its last commit, valid while ``PRAGMA
data_version`` says no other connection committed (else re-read and decided again under the
write lock). A request that changes nothing (a holder asking again early in its lease, an
unlock of a slot not held, a queued node asking again) costs one ``PRAGMA data_version`` and
no transaction, hence no fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Decide,
    GroupState,
    LedgerQuery,
    events_of,
)
from zincati_py.fleetlock.backends import sqlite_rows as rows

T = TypeVar("T")
log = logging.getLogger("zincati_py.fleetlock.server")

BUSY_TIMEOUT_MS = 5000
# INLINE_SLOW_COMMITS inline commits in a row slower than INLINE_SLOW_SECS (a slow or
# stalled disk; one alone may be the loop preempted on a busy machine), or one that found
# another process holding the write lock, send the next transactions to the SQLite thread
# for INLINE_PAUSE_SECS, so that the event loop is not held up again.
INLINE_SLOW_SECS = 0.05
INLINE_SLOW_COMMITS = 3
INLINE_PAUSE_SECS = 30.0


# A change waiting for its transaction (on the loop or the SQLite thread): (group, decide,
# the caller's future).
_Change = tuple[str, Decide[Any], "asyncio.Future[Any]"]
_Results = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


@dataclass
class _Plan:
    """A batch decided: the states it started from and ended with, the ledger rows."""

    loaded: dict[str, GroupState]
    states: dict[str, GroupState]
    ledger: list[tuple[float, str, str]] = field(default_factory=list)
    results: _Results = field(default_factory=list)

    def writes(self) -> bool:
        return bool(self.ledger) or any(
            state is not self.loaded[group] for group, state in self.states.items()
        )


def _settle_all(results: _Results) -> None:
    for future, result, error in results:
        if future.done():
            continue  # the caller gave up (timeout): the change is committed all the same
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class SqliteBackend(Backend):
    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("sqlite backend needs a path: 'sqlite:/var/lib/.../fleetlock.db'")
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetlock-sqlite")
        self._conn: sqlite3.Connection | None = None
        # Changes waiting for the next transaction, and whether a drain is queued for them.
        self._pending: list[_Change] = []
        self._pending_lock = threading.Lock()
        self._scheduled = False
        # The connection is used by one thread at a time: the SQLite thread or the loop.
        self._conn_lock = threading.Lock()
        # Transactions run on the SQLite thread until then (monotonic time).
        self._inline_after = 0.0
        self._slow = 0  # inline commits in a row slower than INLINE_SLOW_SECS
        self._closed = False
        # Transactions committed and changes they carried (group commit, for diagnostics).
        self.commits = 0
        self.changes = 0
        # Parsed states as of this connection's last commit, valid while no other connection
        # has committed since (PRAGMA data_version, which our own commits don't change).
        self._cache: dict[str, GroupState] = {}
        self._data_version: int | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = rows.connect(self.path, BUSY_TIMEOUT_MS)
        return self._conn

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[sqlite3.Connection]:
        """The connection, waiting up to BUSY_TIMEOUT_MS for another process's lock (on the
        SQLite thread only)."""
        conn = self._connect()
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA busy_timeout = 0")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._conn_lock, self._waiting() as conn:
                try:
                    return fn(conn)
                except sqlite3.Error:
                    if conn.in_transaction:
                        conn.rollback()
                    raise

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.Error, OSError) as exc:
            # OSError: the database directory cannot be created.
            raise BackendUnavailable(f"sqlite {self.path}: {exc}") from exc

    async def apply(self, group: str, decide: Decide[T]) -> T:
        if self._closed:
            raise BackendUnavailable(f"sqlite {self.path}: closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((group, decide, future))
            first, self._scheduled = not self._scheduled, True
        if first:
            # One drain scheduled at a time; it takes every change pending when it runs
            # (those that came in the same step of the loop, or while a commit was in
            # flight: group commit).
            if self._inline_ok():
                loop.call_soon(self._drain_here, loop)
            else:
                self._to_thread(loop)
        return await future

    def _to_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have the SQLite thread drain the pending changes (they fail once closed)."""
        try:
            self._executor.submit(self._drain, loop)
        except RuntimeError:  # closed: the executor takes no more work
            batch = self._take_pending()
            closed = BackendUnavailable(f"sqlite {self.path}: closed")
            _settle_all([(future, None, closed) for _, _, future in batch])

    def _take_pending(self) -> list[_Change]:
        """Every change pending, for one transaction (the next apply() schedules a drain)."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
        return batch

    def _inline_ok(self) -> bool:
        """Whether the next transaction runs on the event loop: the connection is open and
        the recent ones neither waited for another process's write lock nor were slow."""
        return self._conn is not None and time.monotonic() >= self._inline_after

    def _drain_here(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the event loop: the pending changes in one transaction, the answers at once
        (no hand-over to a thread and back: on this 2-core machine they cost more CPU
        than the transaction). Never waits: if the SQLite thread is busy, another process
        holds the write lock or the last inline commit was slow, the thread takes them."""
        if not (self._inline_ok() and self._conn_lock.acquire(blocking=False)):
            self._to_thread(loop)
            return
        conn = self._conn
        if conn is None:  # closed meanwhile
            self._conn_lock.release()
            self._to_thread(loop)
            return
        try:
            batch = self._take_pending()
            if not batch:
                return
            started = time.monotonic()
            try:
                results = self._commit(conn, batch)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                # Another process holds the write lock: the thread waits for it (up to the
                # busy timeout); the loop does not, for a while.
                self._abort()
                self._inline_after = time.monotonic() + INLINE_PAUSE_SECS
                with self._pending_lock:
                    self._pending[:0] = batch
                    first, self._scheduled = not self._scheduled, True
                if first:
                    self._to_thread(loop)
                return
            took = time.monotonic() - started
            self._slow = self._slow + 1 if took > INLINE_SLOW_SECS else 0
            if self._slow >= INLINE_SLOW_COMMITS:
                self._slow = 0
                self._inline_after = time.monotonic() + INLINE_PAUSE_SECS
                log.info(
                    "sqlite %s: %d commits in a row took over %.0f ms (the last %.0f ms): the "
                    "next ones run on the SQLite thread for %.0f s",
                    self.path,
                    INLINE_SLOW_COMMITS,
                    INLINE_SLOW_SECS * 1000,
                    took * 1000,
                    INLINE_PAUSE_SECS,
                )
        except BaseException as exc:
            results = self._failed(batch, exc)
        finally:
            self._conn_lock.release()
        _settle_all(results)

    def _version(self, conn: sqlite3.Connection) -> int:
        """PRAGMA data_version: moves when another connection commits (not with ours)."""
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _decide(self, conn: sqlite3.Connection, batch: list[_Change]) -> _Plan:
        """Every change of ``batch`` decided in arrival order, each on the state the previous
        one left; states from the cache (valid as of ``self._data_version``), else read."""
        groups = {group for group, _, _ in batch}
        if not groups <= self._cache.keys():
            version = self._version(conn)
            if version != self._data_version:
                self._cache.clear()  # another process wrote: read everything afresh
                self._data_version = version
        loaded = {
            group: cached
            if (cached := self._cache.get(group)) is not None
            else rows.load(conn, group)
            for group in groups
        }
        states = dict(loaded)
        plan = _Plan(loaded, states)
        for group, decide, future in batch:
            try:
                new, result = decide(states[group])
            except Exception as exc:  # a bug in one decision fails only its caller
                plan.results.append((future, None, exc))
                continue
            if new is not None:
                states[group] = new
                plan.ledger += [
                    (e.at, group, rows.encode(e.to_json(group))) for e in events_of(result)
                ]
            plan.results.append((future, result, None))
        return plan

    def _commit(self, conn: sqlite3.Connection, batch: list[_Change]) -> _Results:
        """Decide ``batch`` and make it durable: one transaction, one fsync (the WAL's, at
        COMMIT), or none at all when no change writes anything."""
        plan = self._decide(conn, batch)
        if not plan.writes() and self._version(conn) == self._data_version:
            # Decided on what is stored now (nobody else wrote since): nothing to make
            # durable, no transaction, no fsync.
            self._cache.update(plan.loaded)
            self.changes += len(batch)
            return plan.results
        conn.execute("BEGIN IMMEDIATE")
        version = self._version(conn)
        if version != self._data_version:
            # Another process committed since these states were read: decide again on
            # what is stored, under the write lock.
            self._cache.clear()
            self._data_version = version
            plan = self._decide(conn, batch)
        # One write per group however many changes it took.
        for group, state in plan.states.items():
            if state is not plan.loaded[group]:
                rows.store(conn, group, plan.loaded[group], state)
        if plan.ledger:
            conn.executemany("INSERT INTO ledger (at, grp, doc) VALUES (?, ?, ?)", plan.ledger)
        conn.execute("COMMIT")
        self._cache.update(plan.states)
        self.commits += 1
        self.changes += len(batch)
        return plan.results

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the SQLite thread: every change pending, in one transaction; the answers in
        one call_soon_threadsafe."""
        with self._conn_lock:
            batch = self._take_pending()
            if not batch:
                return
            results: _Results
            try:
                if self._closed:  # submitted before close(): do not open the file again
                    raise BackendUnavailable(f"sqlite {self.path}: closed")
                with self._waiting() as conn:
                    results = self._commit(conn, batch)
            except BaseException as exc:  # every caller hears of it, whatever it is
                results = self._failed(batch, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_all, results)

    def _abort(self) -> None:
        self._cache.clear()
        if self._conn is not None and self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.rollback()

    def _failed(self, batch: list[_Change], exc: BaseException) -> _Results:
        self._abort()
        failure: BaseException = exc
        if isinstance(exc, sqlite3.Error | OSError):
            failure = BackendUnavailable(f"sqlite {self.path}: {exc}")
        return [(future, None, failure) for _, _, future in batch]

    async def state(self, group: str) -> GroupState:
        def op(conn: sqlite3.Connection) -> GroupState:
            # Nobody else committed since this connection's last commit: the parsed state
            # is current (admin views poll this; a 1,000-node queue is 60 KB of JSON).
            cached = self._cache.get(group)
            if cached is not None and self._version(conn) == self._data_version:
                return cached
            return rows.load(conn, group)

        return await self._run(op)

    async def all_states(self) -> dict[str, GroupState]:
        def op(conn: sqlite3.Connection) -> dict[str, GroupState]:
            names = {r[0] for r in conn.execute("SELECT DISTINCT grp FROM holders")}
            names |= {r[0] for r in conn.execute("SELECT grp FROM groups")}
            names |= {r[0] for r in conn.execute("SELECT DISTINCT grp FROM queue")}
            return {name: rows.load(conn, name) for name in sorted(names)}

        return await self._run(op)

    async def _history(self, query: LedgerQuery) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = "SELECT doc FROM ledger WHERE at >= ?"
            args: list[object] = [query.since or 0.0]
            if query.group is not None:
                sql += " AND grp = ?"
                args.append(query.group)
            out: list[dict[str, Any]] = []
            for (doc,) in conn.execute(sql + " ORDER BY seq DESC", args):
                event = json.loads(doc)
                if query.matches(event):
                    out.append(event)
                    if len(out) >= query.limit:
                        break
            return out[::-1]

        return await self._run(op)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT count(*) FROM holders").fetchone())

    async def close(self) -> None:
        self._closed = True

        def op() -> None:
            with self._conn_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, op)
        self._executor.shutdown(wait=True)
