"""``zincati-py schedule ...``: cron schedules as systemd timers.

One ``_register_<name>`` + ``_cmd_<name>`` pair per subcommand; add new subcommands to
``_SUBCOMMANDS``. croniter is imported lazily by the translation itself.

Jobs live in config fragments (``[[schedule]]``, merged by name; see zincati_py.config). The
commands that change them write one fragment per job in the admin directory
(``/etc/zincati/config.d``): ``70-schedule-NAME.toml``, or ``99-schedule-NAME.toml`` when a
fragment that sorts after ``70-...`` also sets keys of that job (fragments merge in file-name
order, so an override must come later). Jobs defined in other files (a vendor's
``/usr/lib/zincati/config.d`` fragment, a hand-written one) are never edited: ``enable``,
``disable`` and ``delete`` write such an override instead. Every write is atomic, re-loaded
through the same loader the generator uses and rolled back if the result is not what was asked
(nothing is left behind on bad input). Then systemd is asked to reload (the generator re-runs)
unless ``--no-reload``; if it cannot be reached the file stays and the exit status is 69.

Run history: every run of a job's service ends with ``schedule _record NAME`` (the generated
``ExecStopPost=``), which appends one JSON line to ``<state_dir>/history/NAME.jsonl`` with the
start and end of the main process as systemd reports them (``ExecMainStartTimestamp``,
``ExecMainExitTimestamp``) and systemd's ``$SERVICE_RESULT``, ``$EXIT_CODE``, ``$EXIT_STATUS``.
systemd itself only remembers the last run, and the journal may be volatile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.cli import CliError, add_root_argument, print_json

if TYPE_CHECKING:
    from zincati_py.config import LoadResult, ScheduleSettings
    from zincati_py.config.fragments import Entry
    from zincati_py.dbus.systemd_sync import Systemd
    from zincati_py.paths import Paths

# argparse's subparsers action type is private; it only needs add_parser().
_Subparsers = Any


def register(sub: _Subparsers) -> None:
    parser = sub.add_parser(
        "schedule",
        help="cron schedules as systemd timers",
        description="Cron schedules as systemd timers.",
    )
    schedule_sub = parser.add_subparsers(
        dest="schedule_command", required=True, metavar="SUBCOMMAND"
    )
    for register_subcommand in _SUBCOMMANDS:
        register_subcommand(schedule_sub)


def _register_translate(sub: _Subparsers) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "translate",
        help="print the systemd OnCalendar= values for a cron expression",
        description=(
            "Print the systemd OnCalendar= values, one per line, whose union fires exactly "
            "when the cron expression does. Exit 65 if it is invalid or not expressible."
        ),
    )
    parser.add_argument("expr", metavar="EXPR", help="cron expression, e.g. '*/15 9-17 * * 1-5'")
    parser.add_argument("--tz", metavar="ZONE", help="'UTC' or an IANA time zone name")
    parser.add_argument("--hash-id", metavar="ID", help="resolves 'H' fields (use the node id)")
    parser.set_defaults(func=_cmd_translate)


def _cmd_translate(args: argparse.Namespace) -> int:
    from zincati_py.schedule import CronError, translate

    try:
        lines = translate(args.expr, tz=args.tz, hash_id=args.hash_id)
    except CronError as exc:
        raise CliError(f"schedule translate: {exc}") from None
    print("\n".join(lines))
    return 0


# ---- shared helpers (also used by trigger_cmd) -------------------------------------------

HISTORY_KEEP = 500  # records kept per job once the file passes HISTORY_MAX_BYTES
HISTORY_MAX_BYTES = 256 * 1024


def add_user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        action="store_true",
        help="talk to the calling user's systemd (session bus) instead of the system manager",
    )


def _add_change_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-reload", action="store_true", help="do not ask systemd to reload afterwards"
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _job_parser(
    sub: _Subparsers, verb: str, func: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """``schedule VERB NAME ...``: a subcommand about one job, run by ``func``."""
    parser: argparse.ArgumentParser = sub.add_parser(verb, **kwargs)
    parser.add_argument("name", metavar="NAME")
    parser.set_defaults(func=func)
    return parser


def check_name(name: str) -> str:
    from zincati_py.config.model import SCHEDULE_NAME_RE

    if not SCHEDULE_NAME_RE.fullmatch(name):
        raise CliError(
            f"schedule name {name!r}: must match {SCHEDULE_NAME_RE.pattern} "
            "(letters, digits, '_' and '-'; at most 64)",
            os.EX_DATAERR,
        )
    return name


def fmt_time(when: datetime | None) -> str:
    """A timestamp as systemd prints it, in local time; ``-`` for never."""
    return when.astimezone().strftime("%a %Y-%m-%d %H:%M:%S %Z") if when else "-"


def iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Systemd]:
    """A systemd connection for ``args.user``; raises CliError(69) if unreachable."""
    from zincati_py.dbus.systemd_sync import Systemd, SystemdUnavailable

    try:
        systemd = Systemd(user=args.user).__enter__()
    except SystemdUnavailable as exc:
        raise CliError(f"systemd is unreachable: {exc.message}", os.EX_UNAVAILABLE) from None
    try:
        yield systemd
    finally:
        systemd.__exit__(None, None, None)


def _paths(args: argparse.Namespace) -> Paths:
    from zincati_py.paths import Paths

    return Paths.from_root(args.root)


def _raw_jobs(paths: Paths) -> dict[str, Entry]:
    """Jobs by name as merged from the fragments, valid or not (nothing validated)."""
    from zincati_py.config.fragments import discover, merge

    files, _ = discover(paths.config_dirs)
    raw, _ = merge(files)
    return raw.schedules


def _job_files(entry: Entry) -> list[Path]:
    return sorted({v.file for v in entry.values.values()} | {entry.file}, key=lambda p: p.name)


def _find(result: LoadResult, name: str) -> ScheduleSettings | None:
    return next((j for j in result.config.schedules if j.name == name), None)


def _job_problems(result: LoadResult, name: str) -> list[str]:
    return [str(p) for p in result.errors if p.key.startswith(f"schedule[{name}]")]


_OWN_NAMES = ("70-schedule-{name}.toml", "99-schedule-{name}.toml")


def _own_files(paths: Paths, name: str) -> list[Path]:
    """The fragments this CLI writes for ``name`` that exist."""
    files = [paths.admin_config_dir / n.format(name=name) for n in _OWN_NAMES]
    return [f for f in files if f.exists()]


def _read_own(path: Path, name: str) -> list[dict[str, Any]]:
    """The ``[[schedule]]`` entries of one of our files; refuses a file holding anything else
    (someone edited it by hand: rewriting or deleting it would lose their part)."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read ({exc}); edit it by hand") from None
    jobs = data.get("schedule")
    if (
        set(data) != {"schedule"}
        or not isinstance(jobs, list)
        or any(not isinstance(j, dict) or j.get("name") != name for j in jobs)
    ):
        raise CliError(f"{path}: holds more than schedule {name}; edit it by hand")
    return jobs


def _override_target(paths: Paths, name: str, entry: Entry | None) -> Path:
    """Where to write ``name``'s keys so they win: after every other fragment touching it.

    A candidate is skipped if a file of the same name exists in an earlier directory: ours
    would replace that file whole (Zincati's rule), not merge after it.
    """
    others = [f for f in (_job_files(entry) if entry else []) if f not in _own_files(paths, name)]
    for pattern in _OWN_NAMES:
        target = paths.admin_config_dir / pattern.format(name=name)
        shadowed = any((d / target.name).exists() for d in paths.config_dirs[:-1])
        if not shadowed and all(f.name < target.name for f in others):
            return target
    later = ", ".join(str(f) for f in others if f.name > _OWN_NAMES[-1].format(name=name))
    raise CliError(
        f"schedule {name}: {later} sorts after every file zincati-py writes, so an override "
        "cannot win; edit that file",
        os.EX_DATAERR,
    )


def _dump(jobs: list[dict[str, Any]]) -> str:
    import tomli_w

    header = (
        "# Written by `zincati-py schedule`. Jobs merge by name across fragments (later keys\n"
        "# win); `zincati-py config show` prints the result.\n"
    )
    return header + tomli_w.dumps({"schedule": jobs})


def _write_checked(
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
        code = os.EX_NOPERM if isinstance(exc, PermissionError) else os.EX_CANTCREAT
        raise CliError(f"{target}: {exc.strerror or exc}", code) from None
    result = load(paths)
    problem = check(result)
    if problem is not None:
        if previous is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write(target, previous)
        raise CliError(f"{target}: {problem}; nothing changed", os.EX_DATAERR)
    return result


def _reload(args: argparse.Namespace, done: str) -> int:
    """Print ``done`` and ask systemd to reload (unless --no-reload); 69 if unreachable."""
    from zincati_py.dbus.systemd_sync import SystemdError

    print(done)
    if args.no_reload:
        return 0
    try:
        with connect(args) as systemd:
            systemd.reload()
    except CliError as exc:
        raise CliError(
            f"{exc}; the change is saved, run 'systemctl{' --user' if args.user else ''} "
            "daemon-reload' to apply it",
            os.EX_UNAVAILABLE,
        ) from None
    except SystemdError as exc:
        raise CliError(f"daemon-reload failed: {exc}", os.EX_UNAVAILABLE) from None
    return 0


def history_file(paths: Paths, name: str) -> Path:
    return paths.state_dir / "history" / f"{name}.jsonl"


def read_history(paths: Paths, name: str) -> list[dict[str, Any]]:
    """Recorded runs, oldest first; lines that do not parse (a torn write) are skipped."""
    try:
        lines = history_file(paths, name).read_text().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            runs.append(record)
    return runs


# ---- create ---------------------------------------------------------------------------------


def _register_create(sub: _Subparsers) -> None:
    parser = _job_parser(
        sub,
        "create",
        _cmd_create,
        help="add a named cron job (a systemd timer + oneshot service)",
        description=(
            "Validate the job, write it to /etc/zincati/config.d/70-schedule-NAME.toml "
            "atomically and ask systemd to reload so its timer appears. The command runs as "
            "'/bin/sh -c CMD'."
        ),
    )
    parser.add_argument("--cron", required=True, metavar="EXPR", help="when (cron syntax)")
    parser.add_argument("--command", required=True, metavar="CMD", help="what (a shell line)")
    parser.add_argument("--tz", metavar="ZONE", help="'UTC' or an IANA zone (default: local)")
    parser.add_argument(
        "--no-catch-up",
        action="store_true",
        help="skip runs missed while the machine was off (default: run once at boot)",
    )
    parser.add_argument(
        "--randomized-delay", metavar="SECS", default="0", help="random delay up to SECS"
    )
    parser.add_argument("--timeout", metavar="SECS", help="stop the run after SECS")
    parser.add_argument("--disabled", action="store_true", help="write it disabled")
    parser.add_argument("--replace", action="store_true", help="replace an existing NAME")
    _add_change_arguments(parser)


def _seconds(option: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not a whole number of seconds", 64) from None
    if value < minimum:
        raise CliError(f"{option}: {value} must be >= {minimum}", 64)
    return value


def _cmd_create(args: argparse.Namespace) -> int:
    from zincati_py.config import load
    from zincati_py.schedule import CronError, translate, validate_time_zone

    name = check_name(args.name)
    delay = _seconds("--randomized-delay", args.randomized_delay, 0)
    timeout = None if args.timeout is None else _seconds("--timeout", args.timeout, 1)
    if not args.command.strip():
        raise CliError("--command: empty")
    try:
        tz = None if args.tz is None else validate_time_zone(args.tz)
    except CronError as exc:
        raise CliError(f"--tz: {exc}") from None
    paths = _paths(args)
    node = load(paths).config.identity.node_uuid
    try:
        lines = translate(args.cron, tz=tz, hash_id=node)
    except CronError as exc:
        raise CliError(f"--cron: {exc}") from None

    existing = _raw_jobs(paths).get(name)
    if existing is not None and not args.replace:
        where = ", ".join(str(f) for f in _job_files(existing))
        raise CliError(f"schedule {name} already exists ({where}); use --replace")
    target = _override_target(paths, name, existing)
    _read_own(target, name)  # refuses to overwrite a file that holds more than this job
    job: dict[str, Any] = {"name": name, "cron": args.cron, "command": args.command}
    if tz is not None:
        job["time_zone"] = tz
    job |= {"catch_up": not args.no_catch_up, "randomized_delay_secs": delay}
    if timeout is not None:
        job["timeout_secs"] = timeout
    job["enabled"] = not args.disabled

    def check(result: LoadResult) -> str | None:
        problems = _job_problems(result, name)
        if problems:
            return "; ".join(problems)
        got = _find(result, name)
        if got is None or (got.cron, got.command, got.enabled) != (
            args.cron,
            args.command,
            not args.disabled,
        ):
            return "the merged configuration does not contain the job as written"
        return None

    _write_checked(paths, target, _dump([job]), check)
    state = "disabled" if args.disabled else "enabled"
    return _reload(
        args,
        f"schedule {name} ({state}): {target}\n"
        + "".join(f"  OnCalendar={ln}\n" for ln in lines).rstrip(),
    )


# ---- delete / enable / disable ------------------------------------------------------------


def _register_delete(sub: _Subparsers) -> None:
    parser = _job_parser(
        sub,
        "delete",
        _cmd_delete,
        help="remove a job (jobs from other fragments are disabled by an override)",
        description=(
            "Remove the fragment zincati-py wrote for NAME. If other fragments (e.g. a vendor's "
            "in /usr/lib/zincati/config.d) still define it, write an override that disables it."
        ),
    )
    _add_change_arguments(parser)


def _cmd_delete(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    paths = _paths(args)
    if name not in _raw_jobs(paths):
        raise CliError(f"no schedule {name}")
    own = _own_files(paths, name)
    for path in own:
        _read_own(path, name)  # refuses a file that holds more than this job
    for path in own:
        _write_checked(paths, path, None, lambda _result: None)
    remaining = _raw_jobs(paths).get(name)
    if remaining is None:
        return _reload(args, f"schedule {name} deleted ({', '.join(map(str, own))})")
    where = ", ".join(str(f) for f in _job_files(remaining))
    target = _set_enabled(paths, name, remaining, False)
    return _reload(
        args, f"schedule {name} is defined in {where} (not edited); disabled it in {target}"
    )


def _set_enabled(paths: Paths, name: str, entry: Entry, enabled: bool) -> Path:
    from zincati_py.config import load

    target = _override_target(paths, name, entry)
    jobs = _read_own(target, name) or [{"name": name}]
    for job in jobs:
        job["enabled"] = enabled
    before = set(_job_problems(load(paths), name))

    def check(result: LoadResult) -> str | None:
        problems = _job_problems(result, name)
        got = _find(result, name)
        if enabled and (problems or got is None):
            return "job is invalid: " + ("; ".join(problems) or "not in the merged configuration")
        new = [p for p in problems if p not in before]
        if new:  # never turn a valid job into a broken one
            return "; ".join(new)
        if got is not None and got.enabled != enabled:
            return f"a later fragment still sets enabled = {str(got.enabled).lower()}"
        return None

    _write_checked(paths, target, _dump(jobs), check)
    return target


def _register_toggle(verb: str, enabled: bool) -> Callable[[_Subparsers], None]:
    def register(sub: _Subparsers) -> None:
        parser = _job_parser(
            sub,
            verb,
            lambda args: _cmd_toggle(args, enabled),
            help=f"{verb} a job (works for jobs defined in any fragment)",
            description=(
                f"Set enabled = {str(enabled).lower()} for NAME in the fragment zincati-py "
                "writes for it (created if needed; other fragments are not edited)."
            ),
        )
        _add_change_arguments(parser)

    return register


def _cmd_toggle(args: argparse.Namespace, enabled: bool) -> int:
    name = check_name(args.name)
    paths = _paths(args)
    entry = _raw_jobs(paths).get(name)
    if entry is None:
        raise CliError(f"no schedule {name}")
    target = _set_enabled(paths, name, entry, enabled)
    return _reload(args, f"schedule {name} {'enabled' if enabled else 'disabled'}: {target}")


# ---- list / status / history ----------------------------------------------------------------


def _systemd_view(args: argparse.Namespace, names: list[str]) -> tuple[dict[str, Any], str | None]:
    """Per job: timer + service state from systemd; or ({}, note) if it is unreachable."""
    from zincati_py.dbus.systemd import SERVICE_IFACE, usec_to_datetime
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.generator import schedule_unit

    view: dict[str, Any] = {}
    try:
        with connect(args) as systemd:
            for name in names:
                timer = systemd.timer_state(schedule_unit(name, "timer"))
                service = systemd.unit_state(schedule_unit(name))
                props = (
                    systemd.properties(schedule_unit(name), SERVICE_IFACE) if service.exists else {}
                )
                started = usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
                view[name] = {
                    "timer_loaded": timer.unit.exists,
                    "timer_active": timer.unit.active_state,
                    "next_run": timer.next_elapse,
                    "last_trigger": timer.last_trigger,
                    "last_run": started,
                    "last_result": service.result if started else None,
                    "state": service.active_state if service.exists else None,
                    "running_since": service.busy_since if service.busy else None,
                }
    except (CliError, SystemdError) as exc:
        manager = "user" if args.user else "system"
        return {}, f"{manager} systemd not reachable ({exc}); next/last run unknown"
    return view, None


def _row(job: ScheduleSettings, hash_id: str | None, live: dict[str, Any] | None) -> dict[str, Any]:
    from zincati_py.generator import schedule_calendar

    try:
        calendar = schedule_calendar(job, hash_id)
    except ValueError:
        calendar = []
    live = live or {}
    return {
        "name": job.name,
        "cron": job.cron,
        "time_zone": job.time_zone,
        "on_calendar": calendar,
        "command": job.command,
        "enabled": job.enabled,
        "catch_up": job.catch_up,
        "randomized_delay_secs": job.randomized_delay_secs,
        "timeout_secs": job.timeout_secs,
        "source": str(job.source) if job.source else None,
        "timer_loaded": live.get("timer_loaded"),
        "next_run": iso(live.get("next_run")),
        "last_run": iso(live.get("last_run")),
        "last_result": live.get("last_result"),
        "state": live.get("state"),
        "running_since": iso(live.get("running_since")),
    }


def _register_list(sub: _Subparsers) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "list",
        help="all jobs with their next and last run as systemd reports them",
        description=(
            "List the valid jobs of the merged configuration. next_run/last_run come from "
            "systemd (timer NextElapseUSecRealtime, service ExecMainStartTimestamp) and are "
            "null when it is unreachable or the timer is not loaded (disabled, not reloaded)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_root_argument(parser)
    add_user_argument(parser)
    parser.set_defaults(func=_cmd_list)


def _load_reporting(args: argparse.Namespace) -> LoadResult:
    from zincati_py.config import load

    result = load(_paths(args))
    for problem in result.problems:
        if problem.key.startswith("schedule") or problem.severity == "error":
            print(f"zincati-py: {problem}", file=sys.stderr)
    return result


def _cmd_list(args: argparse.Namespace) -> int:
    result = _load_reporting(args)
    jobs = list(result.config.schedules)
    view, note = _systemd_view(args, [j.name for j in jobs])
    node = result.config.identity.node_uuid
    rows = [_row(j, node, view.get(j.name)) for j in jobs]
    if args.json:
        doc = {
            "schedules": rows,
            "systemd": {"manager": "user" if args.user else "system", "reachable": note is None},
            "note": note,
        }
        print_json(doc)
        return 0
    if note:
        print(f"zincati-py: note: {note}", file=sys.stderr)
    table = [("NAME", "ENABLED", "CRON", "NEXT", "LAST", "RESULT")]
    for r in rows:
        live = view.get(r["name"], {})
        table.append(
            (
                r["name"],
                "yes" if r["enabled"] else "no",
                r["cron"] + (f" ({r['time_zone']})" if r["time_zone"] else ""),
                fmt_time(live.get("next_run")),
                fmt_time(live.get("last_run")),
                "running" if live.get("running_since") else (r["last_result"] or "-"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(no schedules)", file=sys.stderr)
    return 0


def _register_status(sub: _Subparsers) -> None:
    parser = _job_parser(
        sub,
        "status",
        _cmd_status,
        help="one job: configuration, systemd state and last recorded run",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_root_argument(parser)
    add_user_argument(parser)


def _cmd_status(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    result = _load_reporting(args)
    job = _find(result, name)
    if job is None:
        problems = _job_problems(result, name)
        raise CliError(f"schedule {name} is invalid" if problems else f"no schedule {name}")
    view, note = _systemd_view(args, [name])
    row = _row(job, result.config.identity.node_uuid, view.get(name))
    runs = read_history(result.paths, name)
    row["last_recorded_run"] = runs[-1] if runs else None
    row["note"] = note
    if args.json:
        print_json(row)
        return 0
    live = view.get(name, {})
    print(f"schedule {name} ({'enabled' if job.enabled else 'disabled'}) from {row['source']}")
    print(f"  cron:        {job.cron}" + (f" ({job.time_zone})" if job.time_zone else " (local)"))
    for line in row["on_calendar"]:
        print(f"  OnCalendar:  {line}")
    print(f"  command:     /bin/sh -c {job.command!r}")
    extras = [f"catch-up {'yes' if job.catch_up else 'no'}"]
    if job.randomized_delay_secs:
        extras.append(f"randomized delay {job.randomized_delay_secs}s")
    if job.timeout_secs:
        extras.append(f"timeout {job.timeout_secs}s")
    print(f"  options:     {', '.join(extras)}")
    if note:
        print(f"  systemd:     {note}")
    else:
        print(f"  next run:    {fmt_time(live.get('next_run'))}")
        since = live.get("running_since")
        state = f"running since {fmt_time(since)}" if since else (live.get("state") or "not loaded")
        print(f"  state:       {state}")
        print(
            f"  last run:    {fmt_time(live.get('last_run'))}"
            + (f" ({live['last_result']})" if live.get("last_result") else "")
        )
    if runs:
        print(f"  recorded:    {len(runs)} runs; last: {_describe_run(runs[-1])}")
    return 0


def _describe_run(run: dict[str, Any]) -> str:
    def parse(value: Any) -> datetime | None:
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    start, end = parse(run.get("start")), parse(run.get("end"))
    took = f" ({(end - start).total_seconds():.1f}s)" if start and end else ""
    exit_text = ""
    if run.get("exit_code"):
        exit_text = f", {run['exit_code']}={run.get('exit_status')}"
    return f"{fmt_time(start)} .. {fmt_time(end)}{took}: {run.get('result')}{exit_text}"


def _register_history(sub: _Subparsers) -> None:
    parser = _job_parser(
        sub,
        "history",
        _cmd_history,
        help="past runs of a job (start, end, result)",
        description=(
            "Runs recorded by the job's ExecStopPost= hook, oldest first: start and end of the "
            "main process as systemd reports them and systemd's result and exit status."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--limit", metavar="N", default=None, help="only the last N runs")
    add_root_argument(parser)


def _cmd_history(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    paths = _paths(args)
    runs = read_history(paths, name)
    if not runs and name not in _raw_jobs(paths):
        raise CliError(f"no schedule {name} and no recorded runs")
    if args.limit is not None:
        runs = runs[-_seconds("--limit", args.limit, 1) :]
    if args.json:
        print_json({"name": name, "runs": runs})
        return 0
    if not runs:
        print(f"schedule {name}: no recorded runs", file=sys.stderr)
    for run in runs:
        print(_describe_run(run))
    return 0


def _register_trigger(sub: _Subparsers) -> None:
    from zincati_py.cli import trigger_cmd

    trigger_cmd.register(sub)  # the same command as the top-level `zincati-py trigger`


# ---- _record (the generated ExecStopPost= hook) ------------------------------------------


def _register_record(sub: _Subparsers) -> None:
    parser = _job_parser(
        sub,
        "_record",
        _cmd_record,
        description="Internal: run by a schedule's service after each run (ExecStopPost=).",
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _cmd_record(args: argparse.Namespace) -> int:
    from zincati_py.dbus.systemd import SERVICE_IFACE, usec_to_datetime
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.fsutil import atomic_write
    from zincati_py.generator import schedule_unit

    name = check_name(args.name)
    unit = schedule_unit(name)
    start = end = None
    try:
        with connect(args) as systemd:
            props = systemd.properties(unit, SERVICE_IFACE)
        start = usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
        end = usec_to_datetime(int(props.get("ExecMainExitTimestamp", 0)))
    except (CliError, SystemdError) as exc:
        print(f"zincati-py: {unit}: start time unknown: {exc}", file=sys.stderr)
    record = {
        "name": name,
        "unit": unit,
        "invocation_id": os.environ.get("INVOCATION_ID"),
        "start": iso(start),
        "end": iso(end or datetime.now(UTC)),
        "result": os.environ.get("SERVICE_RESULT"),
        "exit_code": os.environ.get("EXIT_CODE"),
        "exit_status": os.environ.get("EXIT_STATUS"),
    }
    path = history_file(_paths(args), name)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    # One O_APPEND write per record: concurrent readers see whole lines or none.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > HISTORY_MAX_BYTES:
        kept = path.read_bytes().splitlines(keepends=True)[-HISTORY_KEEP:]
        atomic_write(path, b"".join(kept))
    return 0


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _register_translate,
    _register_create,
    _register_delete,
    _register_toggle("enable", True),
    _register_toggle("disable", False),
    _register_list,
    _register_status,
    _register_history,
    _register_trigger,
    _register_record,
)
