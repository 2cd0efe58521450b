"""Directory watches that stay right while the tree changes under them (pyinotify).

Shared by the watchers that follow directories which may not exist yet (rpm-ostree's
deployment directories, the config directories). The caller says which directories it wants
watched (usually each target's nearest existing directory, see :func:`nearest_dir`);
:meth:`WatchSet.settle` applies that and looks again until two looks agree. Looking again is
what makes it race-free: a directory created before the watch on its parent existed sends no
event, so only the second look finds it. Every watch is (re)added on each look, never taken
on trust from an earlier one: a directory replaced by a new one of the same name gets a watch
on the new directory (the kernel hands out a new descriptor), where a lookup by name would
still find the old, dead watch.

pyinotify is imported on first use (:func:`pyinotify`), as the strategies' path watch needs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pyinotify() -> Any:
    """The pyinotify module. It imports asyncore, which warns on 3.11 (and comes from
    pyasyncore on 3.12+); only its AsyncioNotifier is used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pyinotify
    return pyinotify


def _not_for_removed_watches(record: logging.LogRecord) -> bool:
    # Events already read for a watch that WatchSet removed in the same read are dropped by
    # pyinotify with this warning; dropping them is what removing the watch asked for.
    return not str(record.msg).startswith("Unable to retrieve Watch object")


logging.getLogger("pyinotify").addFilter(_not_for_removed_watches)


def nearest_dir(path: Path) -> Path:
    """``path`` if it is a directory, else its nearest existing ancestor."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


class WatchSet:
    """The watches of one ``pyinotify.WatchManager`` (``wm``), kept equal to a wanted
    ``{path: mask}``."""

    def __init__(self, wm: Any) -> None:
        self._wm = wm
        self.wds: dict[str, int] = {}

    def settle(self, wanted: Callable[[], dict[str, int]], rounds: int = 64) -> list[str]:
        """Watch exactly ``wanted()``, again until it is the same after the watches were set.

        Returns the paths watched now that were not watched (by the same descriptor) before:
        what is in them may have changed unseen, so callers re-read. Bounded by ``rounds``
        (each round can only go one directory deeper, so the bound is the path depth).
        """
        before = dict(self.wds)
        for _ in range(rounds):
            want = wanted()
            self._apply(want)
            if wanted() == want:
                break
        return [path for path, wd in self.wds.items() if before.get(path) != wd]

    def forget(self, wd: int) -> None:
        """The kernel dropped ``wd`` (``IN_IGNORED``, or ``IN_DELETE_SELF`` which precedes it):
        do not try to remove it later."""
        for path in [p for p, w in self.wds.items() if w == wd]:
            del self.wds[path]

    def _apply(self, want: dict[str, int]) -> None:
        for path in [p for p in self.wds if p not in want]:
            # quiet=False: a watch the kernel already dropped raises instead of logging.
            with contextlib.suppress(pyinotify().WatchManagerError):
                self._wm.rm_watch(self.wds[path], quiet=False)
            del self.wds[path]
        for path, mask in want.items():
            # add_watch on a watched directory replaces its mask and returns its descriptor; on
            # a directory replaced under the same name it returns a new one.
            wd = self._wm.add_watch(path, mask, quiet=True).get(path, -1)
            if wd >= 0:
                self.wds[path] = wd
            else:
                self.wds.pop(path, None)
