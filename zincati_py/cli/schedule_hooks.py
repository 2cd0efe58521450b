"""``zincati-py schedule _record`` and ``_exclusive``: internal commands the generated units run.

``_record NAME`` is every job service's ``ExecStopPost=`` (as root): it records the attempt in
the job's history (:mod:`zincati_py.schedule.history`), ends a retry loop after the last
attempt and warns about overruns. ``_exclusive ... NAME -- ARGV`` is a fleet-exclusive job's
``ExecStart=`` (:mod:`zincati_py.schedule.exclusive`). Registered by
:mod:`zincati_py.cli.schedule_cmd` (``SUBCOMMANDS``).
"""

from __future__ import annotations

import argparse
import os
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
    iso,
    job_errors,
    job_parser,
    paths_of,
)

if TYPE_CHECKING:
    from zincati_py.dbus.systemd_sync import Systemd

_Subparsers = Any


# ---- _record (the generated ExecStopPost= hook) ------------------------------------------


def _register_record(sub: _Subparsers) -> None:
    parser = job_parser(
        sub,
        "_record",
        _cmd_record,
        description="Internal: run by a schedule's service after each run (ExecStopPost=).",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="the job's retries: after the last failed attempt, stop the unit (no restart)",
    )
    parser.add_argument(
        "--exclusive", action="store_true", help="a fleet-exclusive job: exit status 75 = skipped"
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _register_exclusive(sub: _Subparsers) -> None:
    parser = job_parser(
        sub,
        "_exclusive",
        _cmd_exclusive,
        description=(
            "Internal: a fleet-exclusive job's ExecStart=. Runs ARGV holding a slot of GROUP "
            "on the FleetLock server at URL (renewed while it runs, released at the end)."
        ),
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--wait", type=int, default=0)
    parser.add_argument("--token-credential", default=None, help="the bearer token's credential")
    parser.add_argument(
        "--token-file", default=None, help="the token file, if the credential is not there"
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)


def _cmd_exclusive(args: argparse.Namespace) -> int:
    from zincati_py.schedule import exclusive

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CliError("schedule _exclusive: no command after --", os.EX_USAGE)
    token = None
    if args.token_credential or args.token_file:
        from pathlib import Path

        from zincati_py.fleetlock.secrets import SecretError, credential_path, read_token

        try:
            # The credential systemd loaded for the run (LoadCredential=, whatever the job's
            # user); where the manager could not load it, the file itself (a root job).
            credential = credential_path(args.token_credential) if args.token_credential else None
            if credential is not None and (credential.exists() or not args.token_file):
                token = read_token(credential, "credential").value
            else:
                token = read_token(Path(args.token_file), "file").value
        except SecretError as exc:
            print(f"zincati-py: not run: the lock server token: {exc}", file=sys.stderr)
            return exclusive.UNAVAILABLE
    return exclusive.main(args.url, args.group, args.id, args.wait, argv, token=token)


def _cmd_record(args: argparse.Namespace) -> int:
    """Record one attempt; with --retries, end the retry loop after the last one.

    ``Restart=on-failure`` has no attempt limit of its own: systemd counts restarts
    (``NRestarts``, reset by every start that is not an automatic restart) and a stop job
    queued while the unit is stopping forbids the pending restart, so the unit ends ``failed``
    (``OnFailure=`` fires once, for the whole run).
    """
    from zincati_py.dbus.systemd import SERVICE_IFACE, usec_to_datetime
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import history
    from zincati_py.schedule.units import unit_name as schedule_unit

    name = check_job_name(args.name)
    unit = schedule_unit(name)
    start = end = None
    attempt = None
    overran: datetime | None = None
    failed = os.environ.get("SERVICE_RESULT", "success") != "success"
    try:
        with connect(args) as systemd:
            props = systemd.properties(unit, SERVICE_IFACE)
            restarts = int(props.get("NRestarts", 0))
            attempt = restarts + 1
            if args.retries and failed and restarts >= args.retries:
                systemd.stop_unit(unit)  # the last attempt: no restart
            start = usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
            end = usec_to_datetime(int(props.get("ExecMainExitTimestamp", 0)))
            overran = _overran(systemd, name, start, end)
    except (CliError, SystemdError) as exc:
        print(f"zincati-py: {unit}: start time unknown: {exc}", file=sys.stderr)
    record = history.make_record(name, unit, start, end, os.environ, attempt=attempt)
    if args.exclusive and os.environ.get("EXIT_CODE") == "exited":
        from zincati_py.schedule.exclusive import SKIPPED

        if os.environ.get("EXIT_STATUS") == str(SKIPPED):
            record["result"] = "skipped"  # the group was full: the command never ran
    if overran is not None:
        record["overran"] = True
        print(
            f"zincati-py: schedule {name}: warning: the run was still going when its timer "
            f"elapsed at {iso(overran)}; systemd skipped that run",
            file=sys.stderr,
        )
    with job_errors():
        history.append(paths_of(args), name, record)
    return 0


def _overran(
    systemd: Systemd, name: str, start: datetime | None, end: datetime | None
) -> datetime | None:
    """When the job's timer elapsed while this run went on (systemd skips such a start), from
    the timer's own calendar; None if it did not (or cannot be told)."""
    from zincati_py.dbus.systemd import TIMER_IFACE
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import CronError
    from zincati_py.schedule.preview import next_elapses
    from zincati_py.schedule.units import unit_name

    if start is None or end is None:
        return None
    try:
        timer = systemd.properties(unit_name(name, "timer"), TIMER_IFACE)
        lines = [str(entry[1]) for entry in timer.get("TimersCalendar", [])]
        elapses = next_elapses(lines, 1, after=start)
    except (SystemdError, CronError, OSError, IndexError, TypeError):
        return None
    return elapses[0] if elapses and elapses[0] < end else None


SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _register_record,
    _register_exclusive,
)
