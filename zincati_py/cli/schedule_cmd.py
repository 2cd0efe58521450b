"""``zincati-py schedule ...``: cron schedules as systemd timers.

One ``_register_<name>`` + ``_cmd_<name>`` pair per subcommand; add new subcommands to
``_SUBCOMMANDS``. croniter is imported lazily by the translation itself.

This module is the command line only: job editing (which fragment to write, ``/etc``
overrides of vendor jobs, roll-back) is :mod:`zincati_py.schedule.jobs`, the run history is
:mod:`zincati_py.schedule.history`; their errors become sysexits codes here (:func:`_job_errors`).
A command that changed a fragment then asks systemd to reload (the generator re-runs) unless
``--no-reload``; if it cannot be reached the file stays and the exit status is 69.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zincati_py.cli.common import (
    CliError,
    add_root_argument,
    add_user_argument,
    check_job_name,
    connect,
    fmt_time,
    iso,
    paths_of,
    positive_int,
    print_json,
)

if TYPE_CHECKING:
    from zincati_py.config import LoadResult, ScheduleSettings

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


# ---- helpers --------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _job_errors() -> Iterator[None]:
    """JobError/HistoryError from zincati_py.schedule as CliError with a sysexits code."""
    from zincati_py.schedule.history import HistoryError
    from zincati_py.schedule.jobs import JobError, Reason

    try:
        yield
    except JobError as exc:
        code = {
            Reason.PERMISSION: os.EX_NOPERM,
            Reason.CANNOT_WRITE: os.EX_CANTCREAT,
        }.get(exc.reason, os.EX_DATAERR)
        raise CliError(str(exc), code) from None
    except HistoryError as exc:
        raise CliError(str(exc), os.EX_NOPERM if exc.permission else os.EX_IOERR) from None


def _reload(args: argparse.Namespace, done: str) -> int:
    """Print ``done`` (the saved change) and ask systemd to reload (unless --no-reload).

    The change is saved either way; if the reload cannot happen, say so and how to apply it,
    and exit 75 (temporary failure: the file is right, systemd has not read it yet).
    """
    from zincati_py.dbus.systemd_sync import SystemdError

    print(done)
    if args.no_reload:
        return 0
    try:
        with connect(args) as systemd:
            systemd.reload()
    except (CliError, SystemdError) as exc:
        reason = str(exc) if isinstance(exc, CliError) else f"daemon-reload failed: {exc}"
        raise CliError(
            f"the change is saved but not applied: {reason}; run "
            f"'systemctl{' --user' if args.user else ''} daemon-reload' to apply it",
            os.EX_TEMPFAIL,
        ) from None
    return 0


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


def _cmd_create(args: argparse.Namespace) -> int:
    from zincati_py.config import load
    from zincati_py.schedule import CronError, jobs, translate, validate_time_zone

    name = check_job_name(args.name)
    delay = positive_int("--randomized-delay", args.randomized_delay, 0)
    timeout = None if args.timeout is None else positive_int("--timeout", args.timeout, 1)
    if not args.command.strip():
        raise CliError("--command: empty")
    try:
        tz = None if args.tz is None else validate_time_zone(args.tz)
    except CronError as exc:
        raise CliError(f"--tz: {exc}") from None
    paths = paths_of(args)
    node = load(paths).config.identity.node_uuid
    try:
        lines = translate(args.cron, tz=tz, hash_id=node)
    except CronError as exc:
        raise CliError(f"--cron: {exc}") from None

    job: dict[str, Any] = {"name": name, "cron": args.cron, "command": args.command}
    if tz is not None:
        job["time_zone"] = tz
    job |= {"catch_up": not args.no_catch_up, "randomized_delay_secs": delay}
    if timeout is not None:
        job["timeout_secs"] = timeout
    job["enabled"] = not args.disabled
    with _job_errors():
        target = jobs.create(paths, job, replace=args.replace)
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
    from zincati_py.schedule import jobs

    name = check_job_name(args.name)
    with _job_errors():
        done = jobs.delete(paths_of(args), name)
    if done.override is None:
        return _reload(args, f"schedule {name} deleted ({', '.join(map(str, done.removed))})")
    where = ", ".join(str(f) for f in done.remaining_in)
    return _reload(
        args, f"schedule {name} is defined in {where} (not edited); disabled it in {done.override}"
    )


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
    from zincati_py.schedule import jobs

    name = check_job_name(args.name)
    with _job_errors():
        target = jobs.set_enabled(paths_of(args), name, enabled)
    return _reload(args, f"schedule {name} {'enabled' if enabled else 'disabled'}: {target}")


# ---- list / status / history ----------------------------------------------------------------


def _systemd_view(args: argparse.Namespace, names: list[str]) -> tuple[dict[str, Any], str | None]:
    """Per job: timer + service state from systemd; or ({}, note) if it is unreachable."""
    from zincati_py.dbus.systemd import SERVICE_IFACE, usec_to_datetime
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule.units import unit_name as schedule_unit

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
    from zincati_py.schedule.units import calendar as schedule_calendar

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

    result = load(paths_of(args))
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
    from zincati_py.schedule import history, jobs

    name = check_job_name(args.name)
    result = _load_reporting(args)
    job = jobs.find(result, name)
    if job is None:
        problems = jobs.job_problems(result, name)
        raise CliError(f"schedule {name} is invalid" if problems else f"no schedule {name}")
    view, note = _systemd_view(args, [name])
    row = _row(job, result.config.identity.node_uuid, view.get(name))
    with _job_errors():
        runs = history.read(result.paths, name)
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
    add_user_argument(parser)


def _cmd_history(args: argparse.Namespace) -> int:
    from zincati_py.schedule import history, jobs

    name = check_job_name(args.name)
    limit = None if args.limit is None else positive_int("--limit", args.limit, 1, unit="runs")
    paths = paths_of(args)
    with _job_errors():
        runs = history.read(paths, name)
    if not runs and name not in jobs.raw_jobs(paths):
        raise CliError(f"no schedule {name} and no recorded runs")
    if limit is not None:
        runs = runs[-limit:]
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
    from zincati_py.schedule import history
    from zincati_py.schedule.units import unit_name as schedule_unit

    name = check_job_name(args.name)
    unit = schedule_unit(name)
    start = end = None
    try:
        with connect(args) as systemd:
            props = systemd.properties(unit, SERVICE_IFACE)
        start = usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
        end = usec_to_datetime(int(props.get("ExecMainExitTimestamp", 0)))
    except (CliError, SystemdError) as exc:
        print(f"zincati-py: {unit}: start time unknown: {exc}", file=sys.stderr)
    record = history.make_record(name, unit, start, end, os.environ)
    with _job_errors():
        history.append(paths_of(args), name, record)
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
