"""Editing ``[[schedule]]`` jobs in config fragments, without losing anyone's keys.

Jobs live in config fragments and merge by name (see zincati_py.config). The functions here
write one fragment per job in the admin directory (``/etc/zincati/config.d``):
``70-schedule-NAME.toml``, or ``99-schedule-NAME.toml`` when a fragment that sorts after
``70-...`` also sets keys of that job (fragments merge in file-name order, so an override must
come later). Jobs defined in other files (a vendor's ``/usr/lib/zincati/config.d`` fragment, a
hand-written one) are never edited: enabling, disabling, deleting and modifying them write such
an override instead. Every write is atomic, re-loaded through the same loader the generator
uses and rolled back if the result is not what was asked (nothing is left behind on bad input).

``create(replace=True)`` replaces a job whole (settings it does not give go back to their
defaults, wherever they were set); ``modify`` changes exactly the keys given and keeps the rest.

Errors are :class:`JobError` with a :class:`Reason` kind; callers map kinds to exit codes.
Asking systemd to reload is the caller's business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zincati_py.config import LoadResult, ScheduleSettings
    from zincati_py.config.raw import Entry, Sourced
    from zincati_py.paths import Paths

__all__ = [
    "KEY_ORDER",
    "OWN_NAMES",
    "RESET",
    "Deleted",
    "JobError",
    "Reason",
    "create",
    "delete",
    "find",
    "job_files",
    "job_problems",
    "modify",
    "raw_jobs",
    "set_enabled",
]

OWN_NAMES = ("70-schedule-{name}.toml", "99-schedule-{name}.toml")

# The order keys are written in (readable fragments).
KEY_ORDER = (
    "name",
    "cron",
    "command",
    "time_zone",
    "catch_up",
    "randomized_delay_secs",
    "timeout_secs",
    "retries",
    "retry_delay_secs",
    "on_failure",
    "user",
    "dynamic_user",
    "exclusive_group",
    "exclusive_wait_secs",
    "enabled",
)

# The value that means "as if never set" for each optional key: replacing a job whole writes
# these for keys another fragment sets (a later fragment can override a key, never unset it).
RESET: dict[str, Any] = {
    "time_zone": "localtime",
    "catch_up": True,
    "randomized_delay_secs": 0,
    "timeout_secs": 0,
    "retries": 0,
    "retry_delay_secs": 0,
    "on_failure": "",
    "user": "",
    "dynamic_user": False,
    "exclusive_group": "",
    "exclusive_wait_secs": 0,
    "enabled": True,
}

HEADER = (
    "# Written by `zincati-py schedule`. Jobs merge by name across fragments (later keys\n"
    "# win); `zincati-py config show` prints the result.\n"
)


class Reason(enum.Enum):
    NOT_FOUND = "not-found"  # no job of that name
    EXISTS = "exists"  # create without replace
    INVALID = "invalid"  # the result would not be a valid job / what was asked
    HAND_EDITED = "hand-edited"  # our file holds more than the job: not ours to rewrite
    CANNOT_WIN = "cannot-win"  # a later fragment would override anything we write
    PERMISSION = "permission"  # the fragment cannot be written: not allowed
    CANNOT_WRITE = "cannot-write"  # the fragment cannot be written: anything else


class JobError(Exception):
    """A job edit that was refused or failed; nothing was changed. ``reason`` says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete` did: files removed, and where the job still lives (then disabled)."""

    removed: list[Path]
    remaining_in: list[Path]
    override: Path | None


def raw_jobs(paths: Paths) -> dict[str, Entry]:
    """Jobs by name as merged from the fragments, valid or not (nothing validated)."""
    from zincati_py.config.fragments import discover, merge

    files, _ = discover(paths.config_dirs)
    raw, _ = merge(files)
    return raw.schedules


def job_files(entry: Entry) -> list[Path]:
    """Every fragment that sets a key of the job, in merge order."""
    return sorted({v.file for v in entry.values.values()} | {entry.file}, key=lambda p: p.name)


def find(result: LoadResult, name: str) -> ScheduleSettings | None:
    return next((j for j in result.config.schedules if j.name == name), None)


def job_problems(result: LoadResult, name: str) -> list[str]:
    return [str(p) for p in result.errors if p.key.startswith(f"schedule[{name}]")]


def own_files(paths: Paths, name: str) -> list[Path]:
    """The fragments this module writes for ``name`` that exist."""
    files = [paths.admin_config_dir / n.format(name=name) for n in OWN_NAMES]
    return [f for f in files if f.exists()]


def read_own(path: Path, name: str) -> list[dict[str, Any]]:
    """The ``[[schedule]]`` entries of one of our files; refuses a file holding anything else
    (someone edited it by hand: rewriting or deleting it would lose their part)."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, ValueError) as exc:
        raise JobError(
            Reason.HAND_EDITED, f"{path}: cannot read ({exc}); edit it by hand"
        ) from None
    jobs = data.get("schedule")
    if (
        set(data) != {"schedule"}
        or not isinstance(jobs, list)
        or any(not isinstance(j, dict) or j.get("name") != name for j in jobs)
    ):
        raise JobError(
            Reason.HAND_EDITED, f"{path}: holds more than schedule {name}; edit it by hand"
        )
    return jobs


def override_target(paths: Paths, name: str, entry: Entry | None) -> Path:
    """Where to write ``name``'s keys so they win: after every other fragment touching it.

    A candidate is skipped if a file of the same name exists in an earlier directory: ours
    would replace that file whole (Zincati's rule), not merge after it.
    """
    mine = own_files(paths, name)
    others = [f for f in (job_files(entry) if entry else []) if f not in mine]
    for pattern in OWN_NAMES:
        target = paths.admin_config_dir / pattern.format(name=name)
        shadowed = any((d / target.name).exists() for d in paths.config_dirs[:-1])
        if not shadowed and all(f.name < target.name for f in others):
            return target
    later = ", ".join(str(f) for f in others if f.name > OWN_NAMES[-1].format(name=name))
    raise JobError(
        Reason.CANNOT_WIN,
        f"schedule {name}: {later} sorts after every file zincati-py writes, so an override "
        "cannot win; edit that file",
    )


def dump(jobs: list[dict[str, Any]]) -> str:
    import tomli_w

    return HEADER + tomli_w.dumps({"schedule": jobs})


def write_checked(
    paths: Paths, target: Path, text: str | None, check: Callable[[LoadResult], str | None]
) -> LoadResult:
    """Write (or with ``text`` None, remove) ``target``, re-load, roll back if ``check`` objects.

    ``check`` returns an error message for the re-loaded configuration, or None if it is what
    was asked for.
    """
    from zincati_py.config import load
    from zincati_py.fsutil import atomic_write

    try:
        previous = target.read_bytes() if target.exists() else None
        if text is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write(target, text)
    except OSError as exc:
        kind = Reason.PERMISSION if isinstance(exc, PermissionError) else Reason.CANNOT_WRITE
        raise JobError(kind, f"{target}: {exc.strerror or exc}") from None
    result = load(paths)
    problem = check(result)
    if problem is not None:
        if previous is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write(target, previous)
        raise JobError(Reason.INVALID, f"{target}: {problem}; nothing changed")
    return result


def create(paths: Paths, job: Mapping[str, Any], *, replace: bool) -> Path:
    """Write ``job`` (TOML keys, ``name`` included) as the whole job; returns the file.

    Without ``replace`` an existing job of that name is refused. With it, the job is replaced
    whole wherever it is defined: keys other fragments set and ``job`` does not are written
    with their :data:`RESET` value, so nothing of the old job survives.
    """
    name = job["name"]
    existing = raw_jobs(paths).get(name)
    if existing is not None and not replace:
        where = ", ".join(str(f) for f in job_files(existing))
        raise JobError(Reason.EXISTS, f"schedule {name} already exists ({where}); use --replace")
    target = override_target(paths, name, existing)
    read_own(target, name)  # refuses to overwrite a file that holds more than this job
    written = dict(job)
    elsewhere = _values_elsewhere(paths, name, target) if existing else {}
    for key, value in elsewhere.items():
        if key not in written:
            if key not in RESET:
                raise JobError(
                    Reason.CANNOT_WIN, f"{value.file}: schedule[{name}].{key} cannot be reset"
                )
            written[key] = RESET[key]
    written = {k: written[k] for k in (*KEY_ORDER, *written) if k in written}

    def check(result: LoadResult) -> str | None:
        problems = job_problems(result, name)
        if problems:
            return "; ".join(problems)
        got = find(result, name)
        command = list(got.command) if got and isinstance(got.command, tuple) else None
        if got is None or (got.cron, command or got.command, got.enabled) != (
            job["cron"],
            job["command"],
            job.get("enabled", True),
        ):
            return "the merged configuration does not contain the job as written"
        return None

    write_checked(paths, target, dump([written]), check)
    return target


def _values_elsewhere(paths: Paths, name: str, target: Path) -> dict[str, Sourced]:
    """The job's keys as the fragments other than ``target`` set them."""
    from zincati_py.config.fragments import discover, merge

    files, _ = discover(paths.config_dirs)
    raw, _ = merge(f for f in files if f != target)
    entry = raw.schedules.get(name)
    return {k: v for k, v in entry.values.items() if k != "name"} if entry else {}


def modify(paths: Paths, name: str, changes: Mapping[str, Any]) -> Path:
    """Set exactly ``changes`` (TOML keys) for ``name`` and keep every other setting; returns
    the file written (the job's own fragment, or an ``/etc`` override for a vendor's job)."""
    from zincati_py.config import load

    entry = raw_jobs(paths).get(name)
    if entry is None:
        raise JobError(Reason.NOT_FOUND, f"no schedule {name}")
    target = override_target(paths, name, entry)
    entries = read_own(target, name) or [{"name": name}]
    entries[-1].update(changes)
    entries[-1] = {k: entries[-1][k] for k in (*KEY_ORDER, *entries[-1]) if k in entries[-1]}
    before = set(job_problems(load(paths), name))

    def check(result: LoadResult) -> str | None:
        new = [p for p in job_problems(result, name) if p not in before]
        if new:  # never turn a valid job into a broken one
            return "; ".join(new)
        merged = raw_jobs(paths).get(name)
        values = merged.values if merged else {}
        wrong = [k for k, v in changes.items() if k not in values or values[k].value != v]
        if wrong:
            return f"a later fragment still sets {', '.join(wrong)}"
        return None

    write_checked(paths, target, dump(entries), check)
    return target


def delete(paths: Paths, name: str) -> Deleted:
    """Remove the fragments written for ``name``; if other fragments still define it, disable
    it with an override."""
    if name not in raw_jobs(paths):
        raise JobError(Reason.NOT_FOUND, f"no schedule {name}")
    own = own_files(paths, name)
    for path in own:
        read_own(path, name)  # refuses a file that holds more than this job
    for path in own:
        write_checked(paths, path, None, lambda _result: None)
    remaining = raw_jobs(paths).get(name)
    if remaining is None:
        return Deleted(own, [], None)
    override = _write_enabled(paths, name, remaining, False)
    return Deleted(own, job_files(remaining), override)


def set_enabled(paths: Paths, name: str, enabled: bool) -> Path:
    """Set ``enabled`` for ``name`` in the fragment written for it; returns that file."""
    entry = raw_jobs(paths).get(name)
    if entry is None:
        raise JobError(Reason.NOT_FOUND, f"no schedule {name}")
    return _write_enabled(paths, name, entry, enabled)


def _write_enabled(paths: Paths, name: str, entry: Entry, enabled: bool) -> Path:
    from zincati_py.config import load

    target = override_target(paths, name, entry)
    jobs = read_own(target, name) or [{"name": name}]
    for job in jobs:
        job["enabled"] = enabled
    before = set(job_problems(load(paths), name))

    def check(result: LoadResult) -> str | None:
        problems = job_problems(result, name)
        got = find(result, name)
        if enabled and (problems or got is None):
            return "job is invalid: " + ("; ".join(problems) or "not in the merged configuration")
        new = [p for p in problems if p not in before]
        if new:  # never turn a valid job into a broken one
            return "; ".join(new)
        if got is not None and got.enabled != enabled:
            return f"a later fragment still sets enabled = {str(got.enabled).lower()}"
        return None

    write_checked(paths, target, dump(jobs), check)
    return target
