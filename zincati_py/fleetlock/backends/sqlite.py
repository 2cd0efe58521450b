"""Embedded SQLite backend: one file, WAL, one transaction per operation.

Every commit is fsynced (``synchronous=FULL``) before the client hears "granted", so neither
a SIGKILL nor a power cut can lose a grant and hand the slot out twice. SQLite calls block, so
they run on one dedicated thread, which also serialises this process's writers; other
processes sharing the file are serialised by ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Holder,
    LockOutcome,
    UnlockOutcome,
    decide_expire,
    decide_lock,
    decide_unlock,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS holders (
    grp TEXT NOT NULL,
    id TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (grp, id)
) WITHOUT ROWID
"""


class SqliteBackend(Backend):
    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("sqlite backend needs a path: 'sqlite:/var/lib/.../fleetlock.db'")
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetlock-sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(_SCHEMA)
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
    def _load(conn: sqlite3.Connection, group: str) -> dict[str, Holder]:
        rows = conn.execute(
            "SELECT id, acquired_at, expires_at FROM holders WHERE grp = ?", (group,)
        ).fetchall()
        return {r[0]: Holder(r[0], r[1], r[2]) for r in rows}

    @staticmethod
    def _store(
        conn: sqlite3.Connection, group: str, old: dict[str, Holder], new: dict[str, Holder]
    ) -> None:
        gone = [(group, k) for k in old.keys() - new.keys()]
        conn.executemany("DELETE FROM holders WHERE grp = ? AND id = ?", gone)
        changed = [
            (group, h.id, h.acquired_at, h.expires_at) for h in new.values() if old.get(h.id) != h
        ]
        conn.executemany("INSERT OR REPLACE INTO holders VALUES (?, ?, ?, ?)", changed)

    async def lock(
        self, group: str, node_id: str, slots: int, lease_seconds: int, now: float
    ) -> LockOutcome:
        def op(conn: sqlite3.Connection) -> LockOutcome:
            conn.execute("BEGIN IMMEDIATE")
            old = self._load(conn, group)
            new, outcome = decide_lock(old, node_id, slots, lease_seconds, now)
            if new is not None:
                self._store(conn, group, old, new)
            conn.execute("COMMIT")
            return outcome

        return await self._run(op)

    async def unlock(self, group: str, node_id: str, now: float) -> UnlockOutcome:
        def op(conn: sqlite3.Connection) -> UnlockOutcome:
            conn.execute("BEGIN IMMEDIATE")
            old = self._load(conn, group)
            new, outcome = decide_unlock(old, node_id, now)
            if new is not None:
                self._store(conn, group, old, new)
            conn.execute("COMMIT")
            return outcome

        return await self._run(op)

    async def expire(self, group: str, now: float) -> tuple[Holder, ...]:
        def op(conn: sqlite3.Connection) -> tuple[Holder, ...]:
            conn.execute("BEGIN IMMEDIATE")
            old = self._load(conn, group)
            new, gone = decide_expire(old, now)
            if new is not None:
                self._store(conn, group, old, new)
            conn.execute("COMMIT")
            return gone

        return await self._run(op)

    async def holders(self, group: str) -> list[Holder]:
        found = await self._run(lambda conn: self._load(conn, group))
        return sorted(found.values(), key=lambda h: (h.acquired_at, h.id))

    async def all_holders(self) -> dict[str, list[Holder]]:
        def op(conn: sqlite3.Connection) -> dict[str, list[Holder]]:
            out: dict[str, list[Holder]] = {}
            for grp, hid, acquired, expires in conn.execute(
                "SELECT grp, id, acquired_at, expires_at FROM holders ORDER BY grp, acquired_at, id"
            ):
                out.setdefault(grp, []).append(Holder(hid, acquired, expires))
            return out

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
