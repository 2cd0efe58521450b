"""How the SQLite backend lays a group's state out in tables (:mod:`.sqlite` runs the
transactions): holders are rows of ``holders``, queue entries rows of ``queue`` (in queue
order ``ord``; a change writes only the entries it changed), the rest of a group's state
(cooldowns, pause, rollout counters) one JSON document in ``groups``; ledger events are rows
of ``ledger``. :func:`store` writes only what differs between two states."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from zincati_py.fleetlock.state import GroupState, Holder, Waiter

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

# Ledger documents and the groups' documents, compact.
encode = json.JSONEncoder(separators=(",", ":")).encode


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open (creating it, its directory and the tables as needed) in WAL mode with
    ``synchronous=FULL``; autocommit mode (transactions are explicit BEGIN IMMEDIATE ...
    COMMIT); busy timeout 0 once open (a caller that may wait sets it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in _SCHEMA:
        conn.execute(statement)
    # Databases from before rollout tracking: add the holders' version columns.
    have = {row[1] for row in conn.execute("PRAGMA table_info(holders)")}
    for column in _HOLDER_COLUMNS:
        if column not in have:
            conn.execute(f"ALTER TABLE holders ADD COLUMN {column} TEXT")
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


def _holder(row: tuple[Any, ...]) -> Holder:
    return Holder(row[0], row[1], row[2], row[3], row[4])


def load(conn: sqlite3.Connection, group: str) -> GroupState:
    rows = conn.execute(
        "SELECT id, acquired_at, expires_at, from_version, to_version FROM holders WHERE grp = ?",
        (group,),
    ).fetchall()
    holders = {r[0]: _holder(r) for r in rows}
    queue = [
        Waiter(*r)
        for r in conn.execute(
            "SELECT id, since, seen, offered, to_version FROM queue WHERE grp = ? ORDER BY ord",
            (group,),
        )
    ]
    row = conn.execute("SELECT doc FROM groups WHERE grp = ?", (group,)).fetchone()
    return GroupState.from_json(json.loads(row[0]) if row else {}, holders, queue)


def store(conn: sqlite3.Connection, group: str, old: GroupState, new: GroupState) -> None:
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
        _store_queue(conn, group, old.queue, new.queue)
    extras = new.extras_json(queue=False)
    if extras != old.extras_json(queue=False):
        if extras:
            conn.execute("INSERT OR REPLACE INTO groups VALUES (?, ?)", (group, encode(extras)))
        else:
            conn.execute("DELETE FROM groups WHERE grp = ?", (group,))


def _store_queue(
    conn: sqlite3.Connection, group: str, old: list[Waiter], new: list[Waiter]
) -> None:
    # An entry that left and joined again (a new ``since``) goes to the back.
    before = {w.id: w for w in old}
    rejoined = {w.id for w in new if w.id in before and before[w.id].since != w.since}
    left = (before.keys() - {w.id for w in new}) | rejoined
    if left:
        conn.executemany("DELETE FROM queue WHERE grp = ? AND id = ?", [(group, k) for k in left])
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
