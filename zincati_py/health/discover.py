"""The executables of ``health.d``: ``required.d`` (the gate fails without them) and
``wanted.d`` (a failure only warns).

Two directories per kind, with the configuration fragments' rules (liboverdrop's): a file in
``/etc/zincati-py/health.d/KIND.d/`` replaces the one of the same name in
``/usr/lib/zincati-py/health.d/KIND.d/``, a symlink whose text is ``/dev/null`` masks it, and
the survivors run in file-name byte order. Names starting with ``.`` are skipped. An entry
shadows its name whatever it is; it is run only if it is a regular file (not a symlink),
executable, and neither it nor its directory can be changed by a user other than root or the
agent's (group/other-writable, or owned by someone else): everything else is reported and
skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from zincati_py.unitfile import control_characters

DIRS = ("usr/lib/zincati-py/health.d", "etc/zincati-py/health.d")
KINDS = ("required", "wanted")


@dataclass(frozen=True)
class Found:
    path: Path
    kind: str  # "required" | "wanted"

    @property
    def name(self) -> str:
        return self.path.name


def _trusted(st: os.stat_result) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return None


def _runnable(path: Path, entry: os.DirEntry[str]) -> str | None:
    """None: run it; "": masked; else why it is skipped."""
    if entry.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = ""
        return "" if target == os.devnull else "a symlink (only one to /dev/null masks)"
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        return str(exc.strerror)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not st.st_mode & stat.S_IXUSR:
        return "not executable"
    return _trusted(st)


def discover(root: Path, kind: str) -> tuple[list[Found], list[str]]:
    """The executables of ``kind`` under ``root`` in run order, and one message per entry
    skipped (file: why)."""
    chosen: dict[bytes, Path | None] = {}
    problems: list[str] = []
    for base in DIRS:
        directory = root / base / f"{kind}.d"
        try:
            dst = os.stat(directory, follow_symlinks=False)
            entries = sorted(os.scandir(directory), key=lambda e: os.fsencode(e.name))
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{directory}: cannot list: {exc.strerror}")
            continue
        why = _trusted(dst) if stat.S_ISDIR(dst.st_mode) else "not a directory"
        if why is not None:
            problems.append(f"{directory}: ignored: {why}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            # A later directory's entry shadows the name even when it is not run itself.
            chosen[os.fsencode(entry.name)] = None
            if control_characters(entry.name):
                problems.append(f"{path!r}: ignored: control characters in the name")
                continue
            why = _runnable(path, entry)
            if why is None:
                chosen[os.fsencode(entry.name)] = path
            elif why:
                problems.append(f"{path}: ignored: {why}")
    found = [Found(p, kind) for key in sorted(chosen) if (p := chosen[key]) is not None]
    return found, problems
