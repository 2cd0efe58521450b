"""``zincati-py schedule list|status|history``: reading jobs and their runs.

Registered by :mod:`zincati_py.cli.schedule_cmd` (``SUBCOMMANDS``); the commands that change
jobs live there, the internal commands the generated units run in ``schedule_hooks``. A job's
live state comes from systemd (timer and service properties), its past runs from
:mod:`zincati_py.schedule.history`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
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
    job_errors,
    job_parser,
    paths_of,
    positive_int,
    print_json,
)

if TYPE_CHECKING:
    from zincati_py.config import LoadResult, ScheduleSettings

_Subparsers = Any


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
        "command": list(job.command) if isinstance(job.command, tuple) else job.command,
        "enabled": job.enabled,
        "catch_up": job.catch_up,
        "randomized_delay_secs": job.randomized_delay_secs,
        "timeout_secs": job.timeout_secs,
        "retries": job.retries,
        "retry_delay_secs": job.retry_delay_secs,
        "on_failure": job.on_failure,
        "user": job.user,
        "dynamic_user": job.dynamic_user,
        "exclusive_group": job.exclusive_group,
        "exclusive_wait_secs": job.exclusive_wait_secs,
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
    parser = job_parser(
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
    from zincati_py.schedule.metrics import job_metrics

    name = check_job_name(args.name)
    result = _load_reporting(args)
    job = jobs.find(result, name)
    if job is None:
        problems = jobs.job_problems(result, name)
        raise CliError(f"schedule {name} is invalid" if problems else f"no schedule {name}")
    view, note = _systemd_view(args, [name])
    row = _row(job, result.config.identity.node_uuid, view.get(name))
    with job_errors():
        runs = history.read(result.paths, name)
    row["last_recorded_run"] = runs[-1] if runs else None
    row["metrics"] = job_metrics(row, runs)
    row["note"] = note
    # Where each effective setting comes from (the fragment that set it last), "default" if
    # none did: jobs merge by name across fragments, so one job can span several files.
    entry = jobs.raw_jobs(result.paths).get(name)
    given = {k: str(v.file) for k, v in entry.values.items()} if entry else {}
    row["setting_sources"] = {
        key: given.get(key, "default") for key in jobs.KEY_ORDER if key != "name"
    }
    if args.json:
        print_json(row)
        return 0
    live = view.get(name, {})
    print(f"schedule {name} ({'enabled' if job.enabled else 'disabled'}) from {row['source']}")
    print(f"  cron:        {job.cron}" + (f" ({job.time_zone})" if job.time_zone else " (local)"))
    for line in row["on_calendar"]:
        print(f"  OnCalendar:  {line}")
    if isinstance(job.command, str):
        print(f"  command:     /bin/sh -c {job.command!r}")
    else:
        print(f"  command:     {shlex.join(job.command)} (no shell)")
    extras = [f"catch-up {'yes' if job.catch_up else 'no'}"]
    if job.randomized_delay_secs:
        extras.append(f"randomized delay {job.randomized_delay_secs}s")
    if job.timeout_secs:
        extras.append(f"timeout {job.timeout_secs}s")
    if job.retries:
        extras.append(f"{job.retries} retries, {job.retry_delay_secs}s apart")
    if job.on_failure:
        extras.append(f"on failure: {job.on_failure!r}")
    if job.user or job.dynamic_user:
        extras.append(f"runs as {job.user or 'a dynamic user'}")
    if job.exclusive_group:
        extras.append(
            f"fleet-exclusive in group {job.exclusive_group} (waits {job.exclusive_wait_secs}s)"
        )
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
        m = row["metrics"]
        counts = ", ".join(f"{n} {result}" for result, n in m["runs_by_result"].items())
        print(f"  recorded:    {len(runs)} attempts; runs: {counts}")
        print(f"  last:        {_describe_run(runs[-1])}")
        if m["consecutive_failures"]:
            print(f"  failing:     the last {m['consecutive_failures']} runs failed")
        if m["overruns"]:
            print(f"  overruns:    {m['overruns']} (a run outlasted its next fire time)")
    by_file: dict[str, list[str]] = {}
    for key, where in row["setting_sources"].items():
        by_file.setdefault(where, []).append(key)
    for i, (where, keys) in enumerate(by_file.items()):
        print(f"  {'settings:' if i == 0 else '':<12} {', '.join(keys)} from {where}")
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
    attempt = f" (attempt {run['attempt']})" if (run.get("attempt") or 1) > 1 else ""
    return f"{fmt_time(start)} .. {fmt_time(end)}{took}: {run.get('result')}{exit_text}{attempt}"


def _register_history(sub: _Subparsers) -> None:
    parser = job_parser(
        sub,
        "history",
        _cmd_history,
        help="past runs of a job (start, end, result; --output: what one printed)",
        description=(
            "Runs recorded by the job's ExecStopPost= hook, oldest first: start and end of the "
            "main process as systemd reports them and systemd's result and exit status."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--limit", metavar="N", default=None, help="only the last N runs")
    parser.add_argument(
        "--output",
        action="store_true",
        help="what a run printed, from the journal by its invocation ids (all its attempts)",
    )
    parser.add_argument(
        "--run", metavar="N", default=None, help="with --output: the Nth run back (1: the last)"
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _cmd_history(args: argparse.Namespace) -> int:
    from zincati_py.schedule import history, jobs

    name = check_job_name(args.name)
    limit = None if args.limit is None else positive_int("--limit", args.limit, 1, unit="runs")
    paths = paths_of(args)
    with job_errors():
        runs = history.read(paths, name)
    if not runs and name not in jobs.raw_jobs(paths):
        raise CliError(f"no schedule {name} and no recorded runs")
    if args.run is not None and not args.output:
        raise CliError("--run: only with --output", os.EX_USAGE)
    if args.output:
        return _show_output(args, name, runs)
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


def _show_output(args: argparse.Namespace, name: str, records: list[dict[str, Any]]) -> int:
    """The journal lines of one run (every attempt's invocation id), via journalctl."""
    import subprocess

    from zincati_py.schedule.metrics import runs_of

    runs = runs_of(records)
    back = 1 if args.run is None else positive_int("--run", args.run, 1, unit="runs")
    if back > len(runs):
        raise CliError(f"schedule {name}: --run {back}: {len(runs)} recorded runs")
    ids = [str(r["invocation_id"]) for r in runs[-back] if r.get("invocation_id")]
    if not ids:
        raise CliError(f"schedule {name}: run {back} back has no invocation id recorded")
    root = paths_of(args).root
    cmd = ["journalctl", "--no-pager", "--quiet", "--output=short-iso"]
    cmd += ["--user"] if args.user else []
    cmd += [] if str(root) == "/" else [f"--root={root}"]
    cmd += [f"_SYSTEMD_INVOCATION_ID={i}" for i in ids]  # one field: the matches are ORed
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"journalctl: {exc}", os.EX_UNAVAILABLE) from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise CliError(f"journalctl: {reason}", os.EX_UNAVAILABLE)
    lines = proc.stdout.splitlines()
    if args.json:
        print_json({"name": name, "run": back, "invocation_ids": ids, "output": lines})
        return 0
    if not lines:
        print(f"schedule {name}: nothing in the journal for {', '.join(ids)}", file=sys.stderr)
    for line in lines:
        print(line)
    return 0


SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _register_list,
    _register_status,
    _register_history,
)
