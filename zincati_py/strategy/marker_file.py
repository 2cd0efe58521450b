"""``marker_file``: Zincati's strategy gated on ``allowfinalize.json``.

A reboot is allowed while ``/var/lib/zincati/admin/strategy/marker_file/allowfinalize.json``
(under the ``--root`` prefix) exists and is valid, as Zincati's ``src/strategy/marker_file.rs``
decides, in its order:

1. ``stat`` fails (no such file, or any other reason): not allowed;
2. it is not a regular file (symlinks are followed): not allowed, a problem;
3. its mode has the write bit for others: not allowed, a problem (ownership is not checked);
4. its content does not parse as Zincati's ``FinalizationMarker`` (serde_json): not allowed,
   a problem;
5. ``allowUntil`` (a Unix timestamp, u64, optional) is set and the current whole second is at
   or past it: not allowed (expired);
6. otherwise allowed; with ``allowUntil``, until then (the verdict's ``recheck_at``).

The strategy takes no configuration. "A problem" is Zincati's error case (logged, counted as an
error): here a denial whose reason names the file and what is wrong, also in
``details["problem"]`` and logged once per distinct problem.

No polling: the file's directory is watched with inotify (``zincati_py.inotify``), so
creating, replacing, ``chmod``-ing or removing the marker wakes the agent at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zincati_py.inotify import PathWatch
from zincati_py.strategy.base import Strategy, StrategyContext, Verdict

log = logging.getLogger("zincati_py.strategy.marker_file")

# Zincati's StrategyMarkerFile::FINALIZATION_MARKER_FILE_PATH, relative to the root.
MARKER_PATH = "var/lib/zincati/admin/strategy/marker_file/allowfinalize.json"
_U64_MAX = 2**64 - 1


class MarkerProblem(Exception):
    """The marker exists but Zincati would reject it (its error case)."""


class _Negative(str):
    """A negative JSON integer literal, kept as text: serde reads even ``-0`` as no u64."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Object(dict[str, Any]):
    """A JSON object that remembers whether ``allowUntil`` was given more than once (an error
    only at the top level, where serde reads the field; nested objects are skipped)."""

    repeated_allow_until = False


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated_allow_until = [key for key, _ in pairs].count("allowUntil") > 1
    return obj


def parse_allow_until(data: bytes) -> int | None:
    """``allowUntil`` from a marker's content, as serde_json reads Zincati's
    ``FinalizationMarker { allow_until: Option<u64> }`` (camelCase); raises ``MarkerProblem``.

    Strict JSON (UTF-8, no byte-order mark, no NaN/Infinity, nothing after the value). Other
    keys are ignored; ``allowUntil`` absent or null means no expiry; otherwise it must be an
    integer literal from 0 to 2^64-1. Like any serde struct, the one-element array form
    ``[value]`` is accepted too.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MarkerProblem(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        doc = json.loads(
            text,
            parse_int=lambda s: _Negative(s) if s.startswith("-") else int(s),
            parse_constant=_reject_constant,
            object_pairs_hook=_object,
        )
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, too many digits
        raise MarkerProblem(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise MarkerProblem("invalid JSON: nested too deeply") from None
    if isinstance(doc, _Object):
        if doc.repeated_allow_until:
            raise MarkerProblem("allowUntil is given more than once")
        value = doc.get("allowUntil")
    elif isinstance(doc, list):
        if len(doc) != 1:
            raise MarkerProblem(
                f"expected a JSON object (or a one-element array), "
                f"got an array of {len(doc)} elements"
            )
        value = doc[0]
    else:
        raise MarkerProblem(f"expected a JSON object, got {_json_type(doc)}")
    if value is None:
        return None
    if type(value) is not int or value > _U64_MAX:
        shown = str(value) if isinstance(value, _Negative) else json.dumps(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise MarkerProblem(
            f"allowUntil must be a Unix timestamp (an integer from 0 to {_U64_MAX}), got {shown}"
        )
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str) and not isinstance(value, _Negative):
        return "a string"
    if value is None:
        return "null"
    return "a number"


class _Unseen(Exception):
    """``stat`` failed: to Zincati, no marker (not an error), whatever the reason."""


def _read(path: Path) -> bytes:
    """The marker's content. Raises ``_Unseen`` when ``stat`` fails, ``MarkerProblem`` when
    Zincati would refuse its metadata, ``OSError`` when it cannot be read."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _Unseen("does not exist") from None
    except OSError as exc:
        raise _Unseen(f"cannot be looked up ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise MarkerProblem(f"is not a regular file ({_kind(st.st_mode)})")
    if st.st_mode & stat.S_IWOTH:
        raise MarkerProblem(f"must not be writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
    # O_NONBLOCK: should it have been swapped for a FIFO since the stat, do not hang.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return word
    return "not a plain file"


def _timestamp(seconds: int) -> datetime | None:
    """``seconds`` since the epoch, or None beyond what ``datetime`` represents."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


class MarkerFile(Strategy):
    name = "marker_file"

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        self.marker = ctx.paths.root / MARKER_PATH
        self._watch: PathWatch | None = None
        self._logged_problem: str | None = None

    async def start(self) -> None:
        self._watch = PathWatch(self.marker, lambda what: self.ctx.wake(f"marker_file: {what}"))
        self._watch.start()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._watch = None

    async def _can_finalize(self, now: datetime) -> Verdict:
        details: dict[str, Any] = {
            "path": str(self.marker),
            "watching": None,
            "allow_until": None,
            "problem": None,
        }
        if self._watch is not None and self._watch.watching is not None:
            details["watching"] = str(self._watch.watching)
        try:
            allow_until = parse_allow_until(await asyncio.to_thread(_read, self.marker))
        except _Unseen as exc:
            self._logged_problem = None
            return Verdict(False, f"marker file {self.marker} {exc}", None, details)
        except (MarkerProblem, OSError) as exc:
            problem = f"cannot read it: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            details["problem"] = problem
            reason = f"marker file {self.marker}: {problem}"
            if problem != self._logged_problem:
                log.error("%s; not allowing finalization", reason)
                self._logged_problem = problem
            return Verdict(False, reason, None, details)
        self._logged_problem = None
        if allow_until is None:
            return Verdict(True, f"marker file {self.marker} exists, no allowUntil", None, details)
        until = _timestamp(allow_until)
        details["allow_until"] = allow_until
        shown = str(allow_until) if until is None else until.isoformat()
        # Zincati compares whole seconds since the epoch: expired once now >= allowUntil.
        if math.floor(now.timestamp()) >= allow_until:
            return Verdict(
                False, f"marker file {self.marker} expired at {shown} (allowUntil)", None, details
            )
        return Verdict(True, f"marker file {self.marker} allows until {shown}", until, details)
