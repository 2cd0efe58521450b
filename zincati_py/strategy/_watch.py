"""Watch one file path with inotify, for strategies gated on a marker file.

The file's directory is watched (create, delete, moves in and out, attribute changes such as
``touch`` or ``chmod``, writes closing) and each event about the file's name calls
``on_change(description)``; the caller asks again and reads the file itself, so the watch only
needs to say *that* something may have changed. If the directory does not exist (yet), the
nearest existing ancestor is watched for the missing component, and the watch moves down as
directories appear (and back up if they go away). A queue overflow re-arms from scratch and
reports a change, since events were lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zincati_py.inotify_util import nearest_dir
from zincati_py.inotify_util import pyinotify as _pyinotify

log = logging.getLogger("zincati_py.strategy.watch")


class PathWatch:
    """inotify on the directory of ``path`` (or its nearest existing ancestor)."""

    def __init__(self, path: Path, on_change: Callable[[str], None]) -> None:
        self.path = path
        self.on_change = on_change
        self._wm: Any = None
        self._notifier: Any = None
        self._watched: Path | None = None
        self._wd: int | None = None
        self._watching_for = ""

    @property
    def watching(self) -> Path | None:
        """The directory watched now, or None (not started, or it could not be watched)."""
        return self._watched

    def start(self) -> None:
        """Arm the watch; events are read by the running asyncio loop."""
        pyinotify = _pyinotify()
        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.AsyncioNotifier(
            self._wm, asyncio.get_running_loop(), default_proc_fun=self._on_event
        )
        self._arm()

    def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()  # also closes the inotify descriptor
        self._notifier = self._wm = self._watched = self._wd = None

    def _target(self) -> tuple[Path, str]:
        """The deepest existing directory on the way to the file, and the name in it that
        matters (the file itself, or the next directory to appear)."""
        directory = nearest_dir(self.path.parent)
        return directory, self.path.relative_to(directory).parts[0]

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
                log.warning("cannot watch %s for the file %s", directory, self.path)
                return
            self._watched, self._wd, self._watching_for = directory, wd, name
        log.warning("directories on the way to %s keep changing", self.path)

    def _on_event(self, event: Any) -> None:
        pyinotify = _pyinotify()

        if event.mask & pyinotify.IN_Q_OVERFLOW:
            self._watched = None  # events were lost: re-arm from scratch, and ask again
            self._arm()
            self.on_change("inotify queue overflow")
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
        self.on_change(f"{event.maskname} {event.pathname}")
