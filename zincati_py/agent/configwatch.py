"""inotify on the three config directories, so a configuration edit applies without restart.

Each config directory is watched for entry changes and completed writes. Its parent is
watched too (for entry changes only), so removing and re-creating ``config.d`` is seen, and a
directory that does not exist yet is awaited on its nearest existing ancestor. Events of one
inotify read are coalesced into one ``on_change(reason)`` call. Nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyinotify

from zincati_py.inotify_util import WatchSet, nearest_dir

log = logging.getLogger(__name__)

_ENTRIES = (
    pyinotify.IN_CREATE
    | pyinotify.IN_DELETE
    | pyinotify.IN_MOVED_TO
    | pyinotify.IN_MOVED_FROM
    | pyinotify.IN_DELETE_SELF
    | pyinotify.IN_MOVE_SELF
)
# In a config directory also completed writes and attribute changes (a fragment made readable).
_CONFIG_DIR = _ENTRIES | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_ATTRIB


class ConfigWatcher:
    def __init__(self, config_dirs: Sequence[Path], on_change: Callable[[str], None]) -> None:
        self.config_dirs = tuple(config_dirs)
        self._on_change = on_change
        self._pending: list[str] = []
        self._wm = pyinotify.WatchManager()
        self._watches = WatchSet(self._wm)
        self._notifier = pyinotify.AsyncioNotifier(
            self._wm,
            asyncio.get_running_loop(),
            callback=lambda _n: self._flush(),
            default_proc_fun=self._on_event,
        )
        self._rescan()

    def _wanted(self) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for d in self.config_dirs:
            if d.is_dir():
                wanted[str(d)] = wanted.get(str(d), 0) | _CONFIG_DIR
                if d.parent.is_dir():
                    wanted.setdefault(str(d.parent), _ENTRIES)
                continue
            wanted.setdefault(str(nearest_dir(d.parent)), _ENTRIES)
        return wanted

    def _rescan(self) -> None:
        # Until stable: a directory created before its parent's watch existed sends no event,
        # so after adding watches the tree is looked at again (bounded by the path depth).
        self._watches.settle(self._wanted)

    def _relevant(self, full: Path) -> bool:
        return any(full == d or full.parent == d or full in d.parents for d in self.config_dirs)

    def _on_event(self, event: Any) -> None:
        full = Path(str(event.pathname))
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            self._pending.append("inotify queue overflow")
            return
        if not self._relevant(full):
            return  # a sibling in a watched parent (e.g. another file in /etc)
        if event.mask & (pyinotify.IN_ISDIR | pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF):
            self._rescan()
        if full.name.startswith(".") and full.parent in self.config_dirs:
            return  # an editor's or atomic_write's temp file; the rename that follows counts
        self._pending.append(f"{pyinotify.EventsCodes.maskname(event.mask)} {full}")

    def _flush(self) -> None:
        if self._pending:
            reasons, self._pending = self._pending, []
            self._on_change("; ".join(reasons))

    def close(self) -> None:
        self._notifier.stop()
