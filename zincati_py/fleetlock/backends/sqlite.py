"""Embedded SQLite backend: one file, WAL, one transaction per change.

Holders are rows of ``holders``, queue entries rows of ``queue`` (in queue order ``ord``; a
change writes only the entries it changed); the rest of a group's state (cooldowns, pause,
rollout counters) is one JSON document in ``groups``; ledger events are rows of ``ledger``,
written in the same transaction as the change they record. Every commit is fsynced
(``synchronous=FULL``) before the client hears the answer, so neither a SIGKILL nor a power
cut can lose a grant and hand the slot out twice. SQLite calls block, so they run on one
dedicated thread, which also serialises this process's writers; other processes sharing the
file are serialised by ``BEGIN IMMEDIATE``.

Group commit: changes that arrive while the thread is busy are applied together, in arrival
order, in the next transaction (one fsync for all of them); each caller hears its answer only
once that transaction committed, so "answered" still means "durable".

A change costs one transaction and one fsync (the WAL's, at COMMIT): ``BEGIN IMMEDIATE``,
``PRAGMA data_version``, the rows that differ, the ledger rows, ``COMMIT``. States are decided
on the parsed copy this connection keeps as of its last commit, valid while ``PRAGMA
data_version`` says no other connection committed (else re-read and decided again under the
write lock). A request that changes nothing (a holder asking again early in its lease, an
unlock of a slot not held, a queued node asking again) costs one ``PRAGMA data_version`` and
no transaction, hence no fsync. The SQLite thread and the event loop hand over once each way
per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Decide,
    GroupState,
    Holder,
    LedgerQuery,
    events_of,
)
from zincati_py.fleetlock.state import Waiter

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS holders (
        grp TEXT NOT NULL,
        id TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (grp, id)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS groups (grp TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS queue (
        grp TEXT NOT NULL,
        id TEXT NOT NULL,
        ord INTEGER NOT NULL,
        since REAL NOT NULL,
        seen REAL NOT NULL,
        offered REAL,
        to_version TEXT,
        PRIMARY KEY (grp, id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ledger (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        grp TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
)
_HOLDER_COLUMNS = ("from_version", "to_version")


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
# A change waiting for the SQLite thread: (group, decide, the caller's future).
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
        # Transactions committed and changes they carried (group commit, for diagnostics).
        self.commits = 0
        self.changes = 0
        # Parsed states as of this connection's last commit, valid while no other connection
        # has committed since (PRAGMA data_version, which our own commits don't change).
        self._cache: dict[str, GroupState] = {}
        self._data_version: int | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
            # Databases from before rollout tracking: add the holders' version columns.
            have = {row[1] for row in conn.execute("PRAGMA table_info(holders)")}
            for column in _HOLDER_COLUMNS:
                if column not in have:
                    conn.execute(f"ALTER TABLE holders ADD COLUMN {column} TEXT")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connect()
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

    @staticmethod
    def _holder(row: tuple[Any, ...]) -> Holder:
        return Holder(row[0], row[1], row[2], row[3], row[4])

    def _load(self, conn: sqlite3.Connection, group: str) -> GroupState:
        rows = conn.execute(
            "SELECT id, acquired_at, expires_at, from_version, to_version FROM holders "
            "WHERE grp = ?",
            (group,),
        ).fetchall()
        holders = {r[0]: self._holder(r) for r in rows}
        queue = [
            Waiter(*r)
            for r in conn.execute(
                "SELECT id, since, seen, offered, to_version FROM queue WHERE grp = ? ORDER BY ord",
                (group,),
            )
        ]
        row = conn.execute("SELECT doc FROM groups WHERE grp = ?", (group,)).fetchone()
        return GroupState.from_json(json.loads(row[0]) if row else {}, holders, queue)

    @staticmethod
    def _store(conn: sqlite3.Connection, group: str, old: GroupState, new: GroupState) -> None:
        """Write what differs between ``old`` and ``new`` (no statement for what doesn't)."""
        gone = [(group, k) for k in old.holders.keys() - new.holders.keys()]
        if gone:
            conn.executemany("DELETE FROM holders WHERE grp = ? AND id = ?", gone)
        changed = [
            (group, h.id, h.acquired_at, h.expires_at, h.from_version, h.to_version)
            for h in new.holders.values()
            if old.holders.get(h.id) != h
        ]
        if changed:
            conn.executemany(
                "INSERT OR REPLACE INTO holders "
                "(grp, id, acquired_at, expires_at, from_version, to_version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                changed,
            )
        if new.queue != old.queue:
            SqliteBackend._store_queue(conn, group, old.queue, new.queue)
        extras = new.extras_json(queue=False)
        if extras != old.extras_json(queue=False):
            if extras:
                conn.execute(
                    "INSERT OR REPLACE INTO groups VALUES (?, ?)", (group, _ENCODE(extras))
                )
            else:
                conn.execute("DELETE FROM groups WHERE grp = ?", (group,))

    @staticmethod
    def _store_queue(
        conn: sqlite3.Connection, group: str, old: list[Waiter], new: list[Waiter]
    ) -> None:
        # An entry that left and joined again (a new ``since``) goes to the back.
        before = {w.id: w for w in old}
        rejoined = {w.id for w in new if w.id in before and before[w.id].since != w.since}
        left = (before.keys() - {w.id for w in new}) | rejoined
        if left:
            conn.executemany(
                "DELETE FROM queue WHERE grp = ? AND id = ?", [(group, k) for k in left]
            )
        for node in left:
            del before[node]
        updated = [
            (w.since, w.seen, w.offered, w.to_version, group, w.id)
            for w in new
            if w.id in before and before[w.id] != w
        ]
        if updated:
            conn.executemany(
                "UPDATE queue SET since = ?, seen = ?, offered = ?, to_version = ? "
                "WHERE grp = ? AND id = ?",
                updated,
            )
        joined = [w for w in new if w.id not in before]
        if joined:
            (last,) = conn.execute(
                "SELECT coalesce(max(ord), 0) FROM queue WHERE grp = ?", (group,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO queue VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (group, w.id, last + i, w.since, w.seen, w.offered, w.to_version)
                    for i, w in enumerate(joined, 1)
                ],
            )

    async def apply(self, group: str, decide: Decide[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        entry = (group, decide, future)
        with self._pending_lock:
            self._pending.append(entry)
            submit, self._scheduled = not self._scheduled, True
        if submit:
            # One drain queued at a time; it takes every change pending when it starts. The
            # answers come back in one call_soon_threadsafe per transaction (no executor
            # future to chain: one thread hand-over each way per request).
            try:
                self._executor.submit(self._drain, loop)
            except RuntimeError as exc:  # closed: the executor takes no more work
                with self._pending_lock:
                    self._scheduled = False
                    if entry in self._pending:
                        self._pending.remove(entry)
                raise BackendUnavailable(f"sqlite {self.path}: closed") from exc
        return await future

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
            else self._load(conn, group)
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
                plan.ledger += [(e.at, group, _ENCODE(e.to_json(group))) for e in events_of(result)]
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
                self._store(conn, group, plan.loaded[group], state)
        if plan.ledger:
            conn.executemany("INSERT INTO ledger (at, grp, doc) VALUES (?, ?, ?)", plan.ledger)
        conn.execute("COMMIT")
        self._cache.update(plan.states)
        self.commits += 1
        return plan.results

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the SQLite thread: every change queued so far, in one transaction."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
        if not batch:
            return
        results: _Results
        try:
            results = self._commit(self._connect(), batch)
            self.changes += len(batch)
        except BaseException as exc:  # every caller hears of it, whatever it is
            self._cache.clear()
            if self._conn is not None and self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.rollback()
            failure: BaseException = exc
            if isinstance(exc, sqlite3.Error | OSError):
                failure = BackendUnavailable(f"sqlite {self.path}: {exc}")
            results = [(future, None, failure) for _, _, future in batch]
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_all, results)

    async def state(self, group: str) -> GroupState:
        def op(conn: sqlite3.Connection) -> GroupState:
            # Nobody else committed since this connection's last commit: the parsed state
            # is current (admin views poll this; a 1,000-node queue is 60 KB of JSON).
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            cached = self._cache.get(group)
            if cached is not None and version == self._data_version:
                return cached
            return self._load(conn, group)

        return await self._run(op)

    async def all_states(self) -> dict[str, GroupState]:
        def op(conn: sqlite3.Connection) -> dict[str, GroupState]:
            names = {r[0] for r in conn.execute("SELECT DISTINCT grp FROM holders")}
            names |= {r[0] for r in conn.execute("SELECT grp FROM groups")}
            names |= {r[0] for r in conn.execute("SELECT DISTINCT grp FROM queue")}
            return {name: self._load(conn, name) for name in sorted(names)}

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
        def op() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, op)
        self._executor.shutdown(wait=True)
