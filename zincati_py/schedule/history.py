"""Run history of ``[[schedule]]`` jobs: one JSON line per run, appended after every run.

Every run of a job's service ends with ``schedule _record NAME`` (the generated
``ExecStopPost=``), which appends one record (:func:`make_record`) to the job's history file:
the start and end of the main process as systemd reports them (``ExecMainStartTimestamp``,
``ExecMainExitTimestamp``) and systemd's ``$SERVICE_RESULT``, ``$EXIT_CODE``,
``$EXIT_STATUS``. systemd itself only remembers the last run, and the journal may be volatile.
Once a file passes :data:`MAX_BYTES` it is cut to the last :data:`KEEP` records.

The hook runs as root, so it never follows a path another user controls: the files live in
``Paths.schedule_history_dir`` (``/var/lib/zincati-py-schedule/history``, root's, not the
agent's state directory), every directory below the ``--root`` prefix is opened one component
at a time with ``O_NOFOLLOW`` and must be owned by the caller (or root) and writable by no one
else, files are opened relative to that directory's fd with ``O_NOFOLLOW`` and must be
regular, single-linked and the caller's. Directories are created 0750, files 0640; packaged,
the directories are ``2750 root:zincati-py`` (tmpfiles), so the files inherit the agent's group
and the agent can read them (job metrics) but not change them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.timefmt import iso_dt

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


DIR_MODE = 0o750
FILE_MODE = 0o640
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def history_file(paths: Paths, name: str) -> Path:
    return paths.schedule_history_dir / f"{name}.jsonl"


def _open_dir(paths: Paths, *, create: bool, strict: bool) -> int | None:
    """An fd of the history directory, walked from the root prefix with ``O_NOFOLLOW``.

    ``strict``: every component must be owned by us or root and not group/other-writable (a
    directory someone else can change could swap a component for a symlink later). None if it
    does not exist and ``create`` is false. Raises HistoryError.
    """
    target = paths.schedule_history_dir
    parts = target.relative_to(paths.root).parts
    ours = 2  # .../zincati-py-schedule/history: created DIR_MODE; what leads there 0755
    euid = os.geteuid()
    fd = os.open(paths.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the trusted prefix
    where = paths.root
    try:
        for i, part in enumerate(parts):
            where = where / part
            try:
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE if i >= len(parts) - ours else 0o755, dir_fd=fd)
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                # O_NOFOLLOW | O_DIRECTORY on a symlink: ENOTDIR (or ELOOP).
                kind = "a symbolic link" if _is_link(part, fd) else "not a directory"
                raise HistoryError(
                    where, f"{kind}; refusing to follow it", permission=True
                ) from None
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if strict and (st.st_uid not in (0, euid) or st.st_mode & 0o022):
                raise HistoryError(
                    where,
                    f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}: another "
                    "user could redirect the history; refusing to write there",
                    permission=True,
                )
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_file(fd: int, path: Path) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        raise HistoryError(
            path, "not a regular, single-linked file of ours; refusing to use it", permission=True
        )
    return st


def make_record(
    name: str,
    unit: str,
    start: datetime | None,
    end: datetime | None,
    environ: Mapping[str, str],
    *,
    attempt: int | None = None,
) -> dict[str, Any]:
    """One run as recorded: ``environ`` is the ``ExecStopPost=`` environment systemd set;
    ``attempt`` counts from 1 (2 = the first retry), None if systemd could not say."""
    return {
        "attempt": attempt,
        "name": name,
        "unit": unit,
        "invocation_id": environ.get("INVOCATION_ID"),
        "start": iso_dt(start),
        "end": iso_dt(end or datetime.now(UTC)),
        "result": environ.get("SERVICE_RESULT"),
        "exit_code": environ.get("EXIT_CODE"),
        "exit_status": environ.get("EXIT_STATUS"),
    }


def read(paths: Paths, name: str) -> list[dict[str, Any]]:
    """Recorded runs, oldest first; lines that do not parse (a torn write) are skipped."""
    path = history_file(paths, name)
    try:
        dfd = _open_dir(paths, create=False, strict=False)
        if dfd is None:
            return []
        try:
            fd = os.open(
                path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd
            )
        finally:
            os.close(dfd)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise HistoryError(path, "not a regular file")
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _error(path, exc) from None
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
    path = history_file(paths, name)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        dfd = _open_dir(paths, create=True, strict=True)
        assert dfd is not None
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path.name, flags | os.O_NOCTTY | os.O_NONBLOCK, FILE_MODE, dir_fd=dfd)
            try:
                st = _check_file(fd, path)
                if stat.S_IMODE(st.st_mode) != FILE_MODE:
                    os.fchmod(fd, FILE_MODE)
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > MAX_BYTES:
                _trim(dfd, path)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise _error(path, exc) from None


def _trim(dfd: int, path: Path) -> None:
    """Keep the last KEEP records: a new file beside it (same dir fd) replaces it."""
    fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    with os.fdopen(fd, "rb") as f:
        _check_file(f.fileno(), path)
        kept = f.read().splitlines(keepends=True)[-KEEP:]
    tmp = f".{path.name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, FILE_MODE, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(kept))
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.fsync(dfd)


def _error(path: Path, exc: OSError) -> HistoryError:
    if exc.errno == errno.ELOOP:
        return HistoryError(
            path, "a symbolic link on the way; refusing to follow it", permission=True
        )
    return HistoryError(path, exc.strerror or str(exc), permission=isinstance(exc, PermissionError))
