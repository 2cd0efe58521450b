"""Run history of ``[[schedule]]`` jobs: one JSON line per run, appended after every run.

Every run of a job's service ends with ``schedule _record NAME`` (the generated
``ExecStopPost=``), which appends one record (:func:`make_record`) to the job's history file:
the start and end of the main process as systemd reports them (``ExecMainStartTimestamp``,
``ExecMainExitTimestamp``) and systemd's ``$SERVICE_RESULT``, ``$EXIT_CODE``,
``$EXIT_STATUS``. systemd itself only remembers the last run, and the journal may be volatile.
Once a file passes :data:`MAX_BYTES` it is cut to the last :data:`KEEP` records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zincati_py.paths import Paths

__all__ = ["KEEP", "MAX_BYTES", "HistoryError", "append", "history_file", "make_record", "read"]

KEEP = 500  # records kept per job once the file passes MAX_BYTES
MAX_BYTES = 256 * 1024


class HistoryError(Exception):
    """The history file could not be read or written; ``path`` names it."""

    def __init__(self, path: Path, message: str, *, permission: bool = False) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.permission = permission


def history_file(paths: Paths, name: str) -> Path:
    return paths.state_dir / "history" / f"{name}.jsonl"


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


def make_record(
    name: str,
    unit: str,
    start: datetime | None,
    end: datetime | None,
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """One run as recorded: ``environ`` is the ``ExecStopPost=`` environment systemd set."""
    return {
        "name": name,
        "unit": unit,
        "invocation_id": environ.get("INVOCATION_ID"),
        "start": _iso(start),
        "end": _iso(end or datetime.now(UTC)),
        "result": environ.get("SERVICE_RESULT"),
        "exit_code": environ.get("EXIT_CODE"),
        "exit_status": environ.get("EXIT_STATUS"),
    }


def read(paths: Paths, name: str) -> list[dict[str, Any]]:
    """Recorded runs, oldest first; lines that do not parse (a torn write) are skipped."""
    path = history_file(paths, name)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HistoryError(
            path, exc.strerror or str(exc), permission=isinstance(exc, PermissionError)
        ) from None
    runs = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            runs.append(record)
    return runs


def append(paths: Paths, name: str, record: Mapping[str, Any]) -> None:
    """Append ``record`` to ``name``'s history (one write: readers see whole lines or none)."""
    from zincati_py.fsutil import atomic_write

    path = history_file(paths, name)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAX_BYTES:
            kept = path.read_bytes().splitlines(keepends=True)[-KEEP:]
            atomic_write(path, b"".join(kept))
    except OSError as exc:
        raise HistoryError(
            path, exc.strerror or str(exc), permission=isinstance(exc, PermissionError)
        ) from None
