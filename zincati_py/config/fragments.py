"""Layer 1: config fragment files → one merged, type-checked raw tree with provenance.

Matches Zincati's rules: three directories in priority order, a file of the same name in a
later directory replaces the earlier one, a symlink to /dev/null masks it, surviving files are
merged in file-name byte order, later keys override earlier ones, a key absent later never
resets it, and ``[[updates.periodic.window]]`` entries accumulate. ``[[schedule]]`` jobs (our
extension) merge by ``name``: a later entry overrides only the keys it sets, so an admin can
disable a vendor job with ``name`` + ``enabled = false``.

Improvements over Zincati: files that are not ``*.toml`` and unknown keys are reported as
warnings (Zincati ignored a ``.yaml`` "disable updates" file silently and the node rebooted);
a wrong type drops that one key with an error naming file and key, so the generator can still
emit the valid parts.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zincati_py.config.jobs import SCHEDULE_SCHEMA
from zincati_py.config.problems import Problem
from zincati_py.config.raw import Entry, ListOf, RawConfig, Sourced
from zincati_py.unitfile import control_characters

__all__ = ["SCHEMA", "Entry", "ListOf", "RawConfig", "Sourced", "discover", "merge"]

# A fragment is a few hundred bytes; parsing 100 MB took 18 s at boot. Larger files are refused.
MAX_FRAGMENT_BYTES = 256 * 1024

# Key schema. A dict is a table; a ``ListOf`` is an array of tables; a tuple of types is
# the accepted TOML value types (int is accepted for float, as serde does for Zincati).
# ``[[schedule]]`` keys live with the rest of the job rules in ``jobs.py``.

STRATEGY_TYPES = (str, list)

WINDOW_SCHEMA: dict[str, Any] = {
    "days": (list,),
    "start_time": (str,),
    "length_minutes": (int,),
    "cron": (str,),
}

SCHEMA: dict[str, Any] = {
    "agent": {
        "timing": {"steady_interval_secs": (int,), "check_cron": (str,)},
        "reboot": {"max_postpone_secs": (int,), "warn_interactive": (bool,)},
        "metrics": {"listen": (str,)},
        "health": {
            "pre_reboot": (list,),
            "required_units": (list,),
            "timeout_secs": (int,),
            "rollback": (bool,),
        },
        "hooks": {"commands": (list,), "events": (list,), "timeout_secs": (int,)},
    },
    "identity": {"group": (str,), "node_uuid": (str,), "rollout_wariness": (float,)},
    "cincinnati": {"base_url": (str,)},
    "updates": {
        "enabled": (bool,),
        "allow_downgrade": (bool,),
        "strategy": STRATEGY_TYPES,
        "fleet_lock": {"base_url": (str,), "token_file": (str,), "token_credential": (str,)},
        "periodic": {"time_zone": (str,), "window": ListOf(WINDOW_SCHEMA)},
        "file": {"path": (str,), "max_age_secs": (int,)},
    },
    "schedule": ListOf(SCHEDULE_SCHEMA),
}

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def discover(config_dirs: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    """The fragment files that survive override and masking, in merge (byte) order."""
    chosen: dict[bytes, Path | None] = {}
    problems: list[Problem] = []
    for directory in config_dirs:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: os.fsencode(e.name))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            problems.append(Problem.warning(directory, "", "not a directory, ignored"))
            continue
        except OSError as exc:
            problems.append(Problem.error(directory, "", f"cannot list directory: {exc.strerror}"))
            continue
        for entry in entries:
            name = os.fsencode(entry.name)
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue
            bad = control_characters(entry.name)
            if bad:
                # It would reach unit files (header, SourcePath=) and the journal verbatim.
                problems.append(
                    Problem.error(
                        path,
                        "",
                        "file name contains control characters or non-UTF-8 bytes "
                        f"({' '.join(bad)}); file ignored: rename it",
                    )
                )
                continue
            # As liboverdrop: the link text must be "/dev/null" (not merely resolve to it).
            if entry.is_symlink() and _readlink(path) == os.devnull:
                chosen[name] = None  # masked: hides the same name in earlier directories
                continue
            if not entry.name.endswith(".toml"):
                problems.append(
                    Problem.warning(
                        path, "", "ignored: only *.toml files are read (rename it to *.toml?)"
                    )
                )
                continue
            if entry.is_symlink():
                # liboverdrop looks at the entry itself (lstat): a symlink to a file is not a
                # regular file, so Zincati ignores it; say so instead of ignoring it silently.
                problems.append(
                    Problem.warning(
                        path, "", "ignored: a symlink (Zincati reads only regular files)"
                    )
                )
                continue
            if not entry.is_file(follow_symlinks=False):
                problems.append(Problem.warning(path, "", "ignored: not a regular file"))
                continue
            chosen[name] = path
    files = [chosen[name] for name in sorted(chosen) if chosen[name] is not None]
    return [p for p in files if p is not None], problems


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def read_fragment(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """One fragment's TOML, or None and one error naming the file (never an exception)."""
    import tomllib  # on first use: no fragments, no parser

    try:
        data = _read_bounded(path)
    except _TooLarge:
        return None, [
            Problem.error(path, "", f"larger than {MAX_FRAGMENT_BYTES // 1024} KiB, file ignored")
        ]
    except OSError as exc:
        return None, [Problem.error(path, "", f"cannot read, file ignored: {exc.strerror}")]
    try:
        return tomllib.loads(data.decode("utf-8")), []
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem.error(path, "", f"invalid TOML, file ignored: {exc}")]
    except UnicodeDecodeError as exc:
        return None, [Problem.error(path, "", f"not UTF-8, file ignored: {exc}")]
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        return None, [Problem.error(path, "", "invalid TOML, file ignored: nested too deeply")]


class _TooLarge(Exception):
    pass


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; _TooLarge past MAX_FRAGMENT_BYTES (a symlink or a FIFO is not read:
    discovery keeps regular files only, and the file may have been swapped since)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, MAX_FRAGMENT_BYTES + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FRAGMENT_BYTES:
                raise _TooLarge
    finally:
        os.close(fd)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _type_error(file: Path, key: str, types: tuple[type, ...], value: Any) -> Problem:
    wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    return Problem.error(file, key, f"must be {wanted}, got {got}; key ignored")


def _check_entry(
    item: Any, schema: dict[str, Any], file: Path, array: str, index: int
) -> tuple[Entry | None, list[Problem]]:
    key = f"{array}[{index}]"
    if not isinstance(item, dict):
        return None, [Problem.error(file, key, "must be a table; entry ignored")]
    entry = Entry({}, file, index)
    problems: list[Problem] = []
    for name, value in item.items():
        types = schema.get(name)
        if types is None:
            problems.append(Problem.warning(file, f"{key}.{name}", "unknown key, ignored"))
        elif not _type_ok(value, types):
            problems.append(_type_error(file, f"{key}.{name}", types, value))
        else:
            entry.values[name] = Sourced(value, file)
    return entry, problems


def _walk(
    data: dict[str, Any], schema: dict[str, Any], file: Path, prefix: str, raw: RawConfig
) -> list[Problem]:
    problems: list[Problem] = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        spec = schema.get(name)
        if spec is None:
            problems.append(Problem.warning(file, key, "unknown key, ignored"))
        elif isinstance(spec, dict):
            if isinstance(value, dict):
                problems += _walk(value, spec, file, f"{key}.", raw)
            else:
                problems.append(_type_error(file, key, (dict,), value))
        elif isinstance(spec, ListOf):
            if not isinstance(value, list):
                problems.append(
                    Problem.error(file, key, f"must be an array of tables ([[{key}]]); key ignored")
                )
                continue
            for index, item in enumerate(value):
                entry, found = _check_entry(item, spec.item, file, key, index)
                problems += found
                if entry is not None:
                    problems += _add_entry(raw, key, entry)
        elif not _type_ok(value, spec):
            problems.append(_type_error(file, key, spec, value))
        else:
            raw.scalars[key] = Sourced(value, file)
    return problems


def _add_entry(raw: RawConfig, array: str, entry: Entry) -> list[Problem]:
    if array == "updates.periodic.window":
        raw.windows.append(entry)
        return []
    name = entry.values.get("name")
    if name is None:
        return [Problem.error(entry.file, entry.key(array, "name"), "missing; job ignored")]
    known = raw.schedules.get(name.value)
    if known is None:
        raw.schedules[name.value] = entry
    else:
        known.values.update(entry.values)  # later fragment overrides only the keys it sets
        known.file, known.index = entry.file, entry.index
    return []


def merge(files: Iterable[Path]) -> tuple[RawConfig, list[Problem]]:
    raw = RawConfig()
    problems: list[Problem] = []
    for path in files:
        data, found = read_fragment(path)
        problems += found
        if data is None:
            continue
        raw.fragments.append(path)
        problems += _walk(data, SCHEMA, path, "", raw)
    return raw, problems
