"""``file``: a reboot is allowed while a marker file exists (``[updates.file] path``).

With ``max_age_secs``, a marker whose modification time is older than that does not count
(``touch`` it to renew); its expiry is the verdict's ``recheck_at``. The marker's path is
resolved under the ``--root`` prefix like every other path.

No polling: the marker's directory is watched with inotify (create, delete, moves in and out,
attribute changes such as ``touch``, writes closing) and each relevant event wakes the agent,
which asks again; the answer itself always comes from ``stat`` at the time of asking. If the
directory does not exist (yet), the nearest existing ancestor is watched for the missing
component, and the watch moves down as directories appear (and back up if they go away).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zincati_py.strategy.base import Strategy, StrategyContext, Verdict

log = logging.getLogger("zincati_py.strategy.file")


def _pyinotify() -> Any:
    # pyinotify imports asyncore, which warns on 3.11 (and comes from pyasyncore on 3.12+);
    # only its AsyncioNotifier is used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pyinotify
    return pyinotify


class FileGate(Strategy):
    name = "file"

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        settings = ctx.config.updates.file
        self.marker: Path | None = (
            None if settings.path is None else ctx.paths.root / settings.path.lstrip("/")
        )
        self.max_age = (
            None if settings.max_age_secs is None else timedelta(seconds=settings.max_age_secs)
        )
        self._wm: Any = None
        self._notifier: Any = None
        self._watched: Path | None = None
        self._wd: int | None = None
        self._watching_for = ""

    # -- inotify -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.marker is None:
            return
        pyinotify = _pyinotify()
        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.AsyncioNotifier(
            self._wm, asyncio.get_running_loop(), default_proc_fun=self._on_event
        )
        self._arm()

    async def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()  # also closes the inotify descriptor
        self._notifier = self._wm = self._watched = self._wd = None

    def _target(self) -> tuple[Path, str]:
        """The deepest existing directory on the way to the marker, and the name in it that
        matters (the marker itself, or the next directory to appear)."""
        assert self.marker is not None
        child = self.marker
        parent = child.parent
        while not parent.is_dir() and parent != parent.parent:
            child, parent = parent, parent.parent
        return parent, child.name

    def _arm(self) -> None:
        pyinotify = _pyinotify()

        mask = (
            pyinotify.IN_CREATE
            | pyinotify.IN_DELETE
            | pyinotify.IN_MOVED_FROM
            | pyinotify.IN_MOVED_TO
            | pyinotify.IN_ATTRIB
            | pyinotify.IN_CLOSE_WRITE
            | pyinotify.IN_DELETE_SELF
            | pyinotify.IN_MOVE_SELF
        )
        # Loop: a directory created between choosing and watching would otherwise be missed.
        for _ in range(64):
            directory, name = self._target()
            if directory == self._watched:
                self._watching_for = name
                return
            if self._wd is not None:
                self._wm.rm_watch(self._wd, quiet=True)
                self._wd = None
            wd = self._wm.add_watch(str(directory), mask, quiet=True).get(str(directory), -1)
            if wd < 0:
                self._watched = None
                log.warning("cannot watch %s for the marker file %s", directory, self.marker)
                return
            self._watched, self._wd, self._watching_for = directory, wd, name
        log.warning("directories on the way to %s keep changing", self.marker)

    def _on_event(self, event: Any) -> None:
        pyinotify = _pyinotify()

        if event.mask & pyinotify.IN_Q_OVERFLOW:
            self._watched = None  # events were lost: re-arm from scratch, and ask again
            self._arm()
            self.ctx.wake("file gate: inotify queue overflow")
            return
        if self._wd is None or event.wd != self._wd:
            return  # a watch we already replaced
        if event.mask & (pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF):
            # The watched directory went away: watch the nearest ancestor instead.
            if event.mask & pyinotify.IN_DELETE_SELF:
                self._wd = None  # the kernel drops the watch itself
            self._watched = None
        elif event.name != self._watching_for:
            return  # another file in the same directory
        self._arm()  # moves down when a missing directory appeared
        self.ctx.wake(f"file gate: {event.maskname} {event.pathname}")

    # -- the strategy --------------------------------------------------------------------------

    async def _can_finalize(self, now: datetime) -> Verdict:
        if self.marker is None:
            return Verdict(False, "updates.file.path is not configured")
        details: dict[str, Any] = {
            "path": str(self.marker),
            "max_age_secs": None if self.max_age is None else int(self.max_age.total_seconds()),
            "watching": None if self._watched is None else str(self._watched),
        }
        try:
            st = os.stat(self.marker)
        except (FileNotFoundError, NotADirectoryError):
            return Verdict(False, f"marker file {self.marker} does not exist", None, details)
        except OSError as exc:
            return Verdict(False, f"marker file {self.marker}: {exc.strerror}", None, details)
        if stat.S_ISDIR(st.st_mode):
            return Verdict(False, f"{self.marker} is a directory, not a marker file", None, details)
        mtime = datetime.fromtimestamp(st.st_mtime, UTC)
        details["modified_at"] = mtime.isoformat()
        if self.max_age is None:
            return Verdict(True, f"marker file {self.marker} exists", None, details)
        expires = mtime + self.max_age
        details["expires_at"] = expires.isoformat()
        if now >= expires:
            return Verdict(
                False,
                f"marker file {self.marker} is older than {details['max_age_secs']}s "
                f"(modified {mtime.isoformat()}); touch it to allow again",
                None,
                details,
            )
        return Verdict(
            True,
            f"marker file {self.marker} exists, counts until {expires.isoformat()}",
            expires,
            details,
        )
