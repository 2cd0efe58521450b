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
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zincati_py.cli import schedule_hooks, schedule_view
from zincati_py.cli.common import (
    CliError,
    add_root_argument,
    add_user_argument,
    check_job_name,
    connect,
    job_errors,
    job_parser,
    paths_of,
    positive_int,
)

if TYPE_CHECKING:
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


# ---- helpers --------------------------------------------------------------------------------


def _add_change_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-reload", action="store_true", help="do not ask systemd to reload afterwards"
    )
    add_root_argument(parser)
    add_user_argument(parser)


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
    parser = job_parser(
        sub,
        "create",
        _cmd_create,
        help="add a named cron job (a systemd timer + oneshot service)",
        description=(
            "Validate the job, write it to /etc/zincati/config.d/70-schedule-NAME.toml "
            "atomically and ask systemd to reload so its timer appears. The command runs as "
            "'/bin/sh -c CMD' (--command) or without a shell (--argv, last). "
            "--replace replaces the whole job (admin or vendor): every "
            "setting not given here is back to its default, whatever any fragment set before; "
            "to change some settings and keep the others use 'schedule modify'."
        ),
    )
    _add_job_options(parser, create=True)
    parser.add_argument("--disabled", action="store_true", help="write it disabled")
    parser.add_argument(
        "--replace", action="store_true", help="replace an existing NAME whole (all settings)"
    )
    _add_change_arguments(parser)


def _register_modify(sub: _Subparsers) -> None:
    parser = job_parser(
        sub,
        "modify",
        _cmd_modify,
        help="change some settings of a job, keeping the others",
        description=(
            "Change exactly the settings given and keep every other one. A job zincati-py "
            "wrote is edited in its fragment; a job from another fragment (a vendor's) gets "
            "an /etc override holding the changed keys, as enable/disable do. "
            "'--tz localtime' goes back to the host's zone, '--timeout 0' to no timeout."
        ),
    )
    _add_job_options(parser, create=False)
    _add_change_arguments(parser)


# The job options that map one to one onto a TOML key: (flag, key, kind, metavar, help);
# kind "secs"/"count" is a whole number >= 0, "bool" a --x/--no-x pair, "text" as given.
_JOB_OPTIONS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "--catch-up",
        "catch_up",
        "bool",
        "",
        "run once at boot if a run was missed while the machine was off (default: yes)",
    ),
    (
        "--randomized-delay",
        "randomized_delay_secs",
        "secs",
        "SECS",
        "random delay up to SECS (default: 0)",
    ),
    ("--timeout", "timeout_secs", "secs", "SECS", "stop the run after SECS (default and 0: none)"),
    ("--retries", "retries", "count", "N", "run a failed run again up to N times (default: 0)"),
    (
        "--retry-delay",
        "retry_delay_secs",
        "secs",
        "SECS",
        "wait SECS before each retry (default: 0)",
    ),
    (
        "--on-failure",
        "on_failure",
        "text",
        "CMD",
        "shell line (or a unit name) run when a run fails for good ('': none)",
    ),
    ("--run-as", "user", "text", "USER", "run the command as USER (User=; '': root)"),
    (
        "--dynamic-user",
        "dynamic_user",
        "bool",
        "",
        "run as a transient user systemd allocates (DynamicUser=)",
    ),
    (
        "--exclusive-group",
        "exclusive_group",
        "text",
        "GROUP",
        "run only while holding a slot of this FleetLock group ('': not exclusive)",
    ),
    (
        "--exclusive-wait",
        "exclusive_wait_secs",
        "secs",
        "SECS",
        "wait up to SECS for a slot, else skip (0)",
    ),
)


def _add_job_options(parser: argparse.ArgumentParser, *, create: bool) -> None:
    parser.add_argument("--cron", required=create, metavar="EXPR", help="when (cron syntax)")
    parser.add_argument(
        "--command", metavar="CMD", help="what: a shell line, run as /bin/sh -c CMD"
    )
    parser.add_argument(
        "--tz", metavar="ZONE", help="'UTC', an IANA zone or 'localtime' (default: localtime)"
    )
    for flag, _key, kind, metavar, text in _JOB_OPTIONS:
        if kind == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, metavar=metavar, help=text)
    parser.add_argument(
        "--argv",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="what, instead of --command: the program and its arguments, run without a shell "
        "(must come last: every word after it is an argument)",
    )


def _job_options(args: argparse.Namespace, paths: Paths) -> dict[str, Any]:
    """The job settings given on the command line, as TOML keys (only those given)."""
    from zincati_py.config import load
    from zincati_py.schedule import CronError, translate, validate_time_zone

    keys: dict[str, Any] = {}
    if args.cron is not None:
        keys["cron"] = args.cron
    if args.command is not None and args.argv is not None:
        raise CliError("--command and --argv: give one of them", os.EX_USAGE)
    if args.command is not None:
        if not args.command.strip():
            raise CliError("--command: empty")
        keys["command"] = args.command
    if args.argv is not None:
        if not args.argv or not args.argv[0].strip():
            raise CliError("--argv: no program given")
        keys["command"] = list(args.argv)
    if args.tz is not None:
        try:
            keys["time_zone"] = (
                "localtime" if args.tz == "localtime" else validate_time_zone(args.tz)
            )
        except CronError as exc:
            raise CliError(f"--tz: {exc}") from None
    for flag, key, kind, _metavar, _text in _JOB_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if kind in ("secs", "count"):
            unit = "seconds" if kind == "secs" else key
            value = positive_int(flag, value, 0, unit=unit)
        keys[key] = value
    if "cron" in keys:
        tz = keys.get("time_zone")
        node = load(paths).config.identity.node_uuid
        try:
            translate(keys["cron"], tz=None if tz == "localtime" else tz, hash_id=node)
        except CronError as exc:
            raise CliError(f"--cron: {exc}") from None
    return keys


def _calendar_lines(paths: Paths, name: str) -> str:
    from zincati_py.config import load
    from zincati_py.schedule import CronError, jobs
    from zincati_py.schedule.units import calendar

    result = load(paths)
    job = jobs.find(result, name)
    try:
        lines = calendar(job, result.config.identity.node_uuid) if job else []
    except CronError:
        lines = []
    return "".join(f"\n  OnCalendar={ln}" for ln in lines)


def _cmd_create(args: argparse.Namespace) -> int:
    from zincati_py.schedule import jobs

    name = check_job_name(args.name)
    paths = paths_of(args)
    job: dict[str, Any] = {"name": name} | _job_options(args, paths)
    if "command" not in job:
        raise CliError("schedule create: --command or --argv is required", os.EX_USAGE)
    for key, empty in (
        ("on_failure", ""),
        ("user", ""),
        ("retries", 0),
        ("dynamic_user", False),
        ("exclusive_group", ""),
    ):
        if job.get(key) == empty:
            del job[key]
    if job.get("time_zone") == "localtime":
        del job["time_zone"]
    if job.get("timeout_secs") == 0:
        del job["timeout_secs"]
    job.setdefault("catch_up", True)
    job.setdefault("randomized_delay_secs", 0)
    job = {k: job[k] for k in jobs.KEY_ORDER if k in job}
    job["enabled"] = not args.disabled
    with job_errors():
        target = jobs.create(paths, job, replace=args.replace)
    state = "disabled" if args.disabled else "enabled"
    return _reload(args, f"schedule {name} ({state}): {target}{_calendar_lines(paths, name)}")


def _cmd_modify(args: argparse.Namespace) -> int:
    from zincati_py.schedule import jobs

    name = check_job_name(args.name)
    paths = paths_of(args)
    changes = _job_options(args, paths)
    if not changes:
        raise CliError("schedule modify: no setting given (see --help)", os.EX_USAGE)
    with job_errors():
        target = jobs.modify(paths, name, changes)
    changed = ", ".join(sorted(changes))
    return _reload(
        args, f"schedule {name}: {changed} changed in {target}{_calendar_lines(paths, name)}"
    )


# ---- delete / enable / disable ------------------------------------------------------------


def _register_delete(sub: _Subparsers) -> None:
    parser = job_parser(
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
    with job_errors():
        done = jobs.delete(paths_of(args), name)
    if done.override is None:
        return _reload(args, f"schedule {name} deleted ({', '.join(map(str, done.removed))})")
    where = ", ".join(str(f) for f in done.remaining_in)
    return _reload(
        args, f"schedule {name} is defined in {where} (not edited); disabled it in {done.override}"
    )


def _register_toggle(verb: str, enabled: bool) -> Callable[[_Subparsers], None]:
    def register(sub: _Subparsers) -> None:
        parser = job_parser(
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
    with job_errors():
        target = jobs.set_enabled(paths_of(args), name, enabled)
    return _reload(args, f"schedule {name} {'enabled' if enabled else 'disabled'}: {target}")


def _register_trigger(sub: _Subparsers) -> None:
    from zincati_py.cli import trigger_cmd

    trigger_cmd.register(sub)  # the same command as the top-level `zincati-py trigger`


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _register_translate,
    _register_create,
    _register_modify,
    _register_delete,
    _register_toggle("enable", True),
    _register_toggle("disable", False),
    *schedule_view.SUBCOMMANDS,  # list, status, history
    _register_trigger,
    *schedule_hooks.SUBCOMMANDS,  # _record, _exclusive (run by the generated units)
)
