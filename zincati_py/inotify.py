"""Every inotify watch of zincati-py (pyinotify), in this one module.

- :class:`PathWatch`: one file path (the strategies gated on a marker file);
- :class:`DirWatch`: directories that may not exist yet, not recursive (rpm-ostree's
  deployment directories and ``/run/ostree``, for :mod:`zincati_py.dbus.rpmostree`, which says
  which directories and which names matter);
- :class:`ConfigWatch`: the config directories and their parents (the agent's hot reload).

Each reads its events in the running asyncio loop (``pyinotify.AsyncioNotifier``) and reports
"something may have changed" with a reason; callers read the files themselves. Nothing polls.

:class:`WatchSet` is what keeps the directory watches right while the tree changes under them.
The caller says which directories it wants watched (usually each target's nearest existing
directory, see :func:`nearest_dir`);
:meth:`WatchSet.settle` applies that and looks again until two looks agree. Looking again is
what makes it race-free: a directory created before the watch on its parent existed sends no
event, so only the second look finds it. Every watch is (re)added on each look, never taken
on trust from an earlier one: a directory replaced by a new one of the same name gets a watch
on the new directory (the kernel hands out a new descriptor), where a lookup by name would
still find the old, dead watch.

pyinotify is imported on first use (:func:`pyinotify`): importing this module costs nothing
until a watch is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# One file path


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
        ino = pyinotify()
        self._wm = ino.WatchManager()
        self._notifier = ino.AsyncioNotifier(
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
        ino = pyinotify()

        mask = (
            ino.IN_CREATE
            | ino.IN_DELETE
            | ino.IN_MOVED_FROM
            | ino.IN_MOVED_TO
            | ino.IN_ATTRIB
            | ino.IN_CLOSE_WRITE
            | ino.IN_DELETE_SELF
            | ino.IN_MOVE_SELF
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
        ino = pyinotify()

        if event.mask & ino.IN_Q_OVERFLOW:
            self._watched = None  # events were lost: re-arm from scratch, and ask again
            self._arm()
            self.on_change("inotify queue overflow")
            return
        if self._wd is None or event.wd != self._wd:
            return  # a watch we already replaced
        if event.mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
            # The watched directory went away: watch the nearest ancestor instead.
            if event.mask & ino.IN_DELETE_SELF:
                self._wd = None  # the kernel drops the watch itself
            self._watched = None
        elif event.name != self._watching_for:
            return  # another file in the same directory
        self._arm()  # moves down when a missing directory appeared
        self.on_change(f"{event.maskname} {event.pathname}")


# ---------------------------------------------------------------------------------------------
# Directories that may not exist yet


class DirWatch:
    """Watch the directories ``targets()`` names (not recursive); a missing one is awaited on
    its nearest existing ancestor, and ``targets()`` is asked again whenever a directory on
    the way appears or vanishes. Events about names ``accept(path)`` refuses, and about
    dot-files (temp files of atomic writes), are ignored. Calls ``on_change(reason)`` once per
    inotify read burst; ``describe(path)`` names a path in the reason."""

    def __init__(
        self,
        targets: Callable[[], list[Path]],
        on_change: Callable[[str], None],
        *,
        accept: Callable[[Path], bool] = lambda _path: True,
        describe: Callable[[Path], str] = str,
    ) -> None:
        ino = pyinotify()
        self._targets = targets
        self._on_change = on_change
        self._accept = accept
        self._describe = describe
        self._mask = (
            ino.IN_CREATE
            | ino.IN_DELETE
            | ino.IN_MOVED_TO
            | ino.IN_MOVED_FROM
            | ino.IN_CLOSE_WRITE
            | ino.IN_DELETE_SELF
            | ino.IN_MOVE_SELF
        )
        self._pending: list[str] = []
        self._wm = ino.WatchManager()
        self._watches = WatchSet(self._wm)
        self._target_list: list[Path] = []
        self._notifier = ino.AsyncioNotifier(
            self._wm,
            asyncio.get_running_loop(),
            callback=lambda _n: self._flush(),
            default_proc_fun=self._on_event,
        )
        self._rescan(initial=True)

    def _wanted(self) -> dict[str, int]:
        self._target_list = self._targets()
        return {str(nearest_dir(t)): self._mask for t in self._target_list}

    def _rescan(self, initial: bool = False) -> None:
        # Directories can appear faster than we add watches (mkdir -p run/ostree, then a file
        # in it), or be replaced by new ones of the same name: look again until every target,
        # or its nearest existing ancestor, is watched, and report each new watch so the caller
        # re-reads what may have been written meanwhile.
        added = self._watches.settle(self._wanted)
        if added and not initial:
            names = ", ".join(self._describe(Path(p)) for p in added)
            self._pending.append(f"inotify watching {names}")

    def _on_event(self, event: Any) -> None:
        ino = pyinotify()
        directory, name = str(event.path), str(event.name or "")
        if event.mask & (ino.IN_IGNORED | ino.IN_DELETE_SELF):
            self._watches.forget(event.wd)  # the kernel drops the watch itself
        if event.mask & (ino.IN_ISDIR | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
            self._rescan()  # a watched dir or one on the way to it appeared/vanished
        if name.startswith("."):
            return  # temp files of atomic writes
        full = Path(directory, name)
        if not self._accept(full):
            return
        # Ancestor watches see unrelated siblings; keep what is on the way to or in a target.
        if not any(full == t or t in full.parents or full in t.parents for t in self._target_list):
            return
        maskname = ino.EventsCodes.maskname(event.mask)
        self._pending.append(f"inotify {maskname} {self._describe(full)}")

    def _flush(self) -> None:
        if self._pending:
            reasons, self._pending = self._pending, []
            self._on_change("; ".join(reasons))

    def close(self) -> None:
        self._notifier.stop()


# ---------------------------------------------------------------------------------------------
# The config directories


class ConfigWatch:
    """inotify on the config directories, so a configuration edit applies without restart.

    Each config directory is watched for entry changes, completed writes and attribute changes
    (a fragment made readable). Its parent is watched too (for entry changes only), so removing
    and re-creating ``config.d`` is seen, and a directory that does not exist yet is awaited on
    its nearest existing ancestor. Events of one inotify read are coalesced into one
    ``on_change(reason)`` call.
    """

    def __init__(self, config_dirs: Sequence[Path], on_change: Callable[[str], None]) -> None:
        ino = pyinotify()
        self.config_dirs = tuple(config_dirs)
        self._on_change = on_change
        self._entries = (
            ino.IN_CREATE
            | ino.IN_DELETE
            | ino.IN_MOVED_TO
            | ino.IN_MOVED_FROM
            | ino.IN_DELETE_SELF
            | ino.IN_MOVE_SELF
        )
        self._config_dir = self._entries | ino.IN_CLOSE_WRITE | ino.IN_ATTRIB
        self._pending: list[str] = []
        self._wm = ino.WatchManager()
        self._watches = WatchSet(self._wm)
        self._notifier = ino.AsyncioNotifier(
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
                wanted[str(d)] = wanted.get(str(d), 0) | self._config_dir
                if d.parent.is_dir():
                    wanted.setdefault(str(d.parent), self._entries)
                continue
            wanted.setdefault(str(nearest_dir(d.parent)), self._entries)
        return wanted

    def _rescan(self) -> None:
        # Until stable: a directory created before its parent's watch existed sends no event,
        # so after adding watches the tree is looked at again (bounded by the path depth).
        self._watches.settle(self._wanted)

    def _relevant(self, full: Path) -> bool:
        return any(full == d or full.parent == d or full in d.parents for d in self.config_dirs)

    def _on_event(self, event: Any) -> None:
        ino = pyinotify()
        full = Path(str(event.pathname))
        if event.mask & ino.IN_Q_OVERFLOW:
            self._pending.append("inotify queue overflow")
            return
        if not self._relevant(full):
            return  # a sibling in a watched parent (e.g. another file in /etc)
        if event.mask & (ino.IN_ISDIR | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
            self._rescan()
        if full.name.startswith(".") and full.parent in self.config_dirs:
            return  # an editor's or atomic_write's temp file; the rename that follows counts
        self._pending.append(f"{ino.EventsCodes.maskname(event.mask)} {full}")

    def _flush(self) -> None:
        if self._pending:
            reasons, self._pending = self._pending, []
            self._on_change("; ".join(reasons))

    def close(self) -> None:
        self._notifier.stop()
