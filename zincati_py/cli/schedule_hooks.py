"""``zincati-py schedule _record`` and ``_exclusive``: internal commands the generated units run.

``_record NAME`` is every job service's ``ExecStopPost=`` (as root): it records the attempt in
the job's history (:mod:`zincati_py.schedule.history`), ends a retry loop after the last
attempt and warns about overruns. ``_exclusive ... NAME`` holds a fleet-exclusive job's slot
(``--check``, ``--ended``: its other roles; :mod:`zincati_py.schedule.exclusive`). Registered by
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
    parser.add_argument(
        "--failed-unit",
        action="store_true",
        help="run by OnFailure= (as root): record the failed run from MONITOR_* unless the "
        "job's own hook did (it cannot run when systemd fails to set the job's user up)",
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _register_exclusive(sub: _Subparsers) -> None:
    parser = job_parser(
        sub,
        "_exclusive",
        _cmd_exclusive,
        description=(
            "Internal: a fleet-exclusive job's slot unit (holds a slot of GROUP on the FleetLock "
            "server at URL: renewed, released when stopped); --check: the job's ExecCondition= "
            "(whether the slot unit holds a slot); --ended: the slot unit's ExecStopPost= "
            "(stops the job after a lost slot)."
        ),
    )
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--check", action="store_true")
    role.add_argument("--ended", action="store_true")
    parser.add_argument("--url")
    parser.add_argument("--group")
    parser.add_argument("--id")
    parser.add_argument("--wait", type=int, default=0)
    parser.add_argument("--token-credential", default=None, help="the bearer token's credential")
    parser.add_argument(
        "--token-file", default=None, help="the token file, if the credential is not there"
    )
    add_root_argument(parser)
    add_user_argument(parser)


def _cmd_exclusive(args: argparse.Namespace) -> int:
    from zincati_py.schedule import exclusive

    name = check_job_name(args.name)
    if args.check:
        return _check_slot(args, name)
    if args.ended:
        return _slot_ended(args, name)
    if not (args.url and args.group and args.id):
        raise CliError("schedule _exclusive: --url, --group and --id are needed", os.EX_USAGE)
    token = None
    if args.token_credential or args.token_file:
        from pathlib import Path

        from zincati_py.fleetlock.secrets import SecretError, credential_path, read_token

        try:
            # The credential systemd loaded for the slot unit (root's); where the manager
            # could not load it (a user manager), the file itself.
            credential = credential_path(args.token_credential) if args.token_credential else None
            if credential is not None and (credential.exists() or not args.token_file):
                token = read_token(credential, "credential").value
            else:
                token = read_token(Path(args.token_file), "file").value
        except SecretError as exc:
            exclusive.say(f"not run: the lock server token: {exc}", priority=3)
            return exclusive.UNAVAILABLE
    return exclusive.main(args.url, args.group, args.id, args.wait, token=token)


def _check_slot(args: argparse.Namespace, name: str) -> int:
    """The job's ``ExecCondition=``: the slot unit (started first: ``Wants=``, ``After=``)
    holds a slot → 0; it found the group full → SKIPPED (the command is skipped); else 255
    (the unit fails)."""
    from zincati_py.dbus.systemd import SERVICE_IFACE, UNIT_IFACE
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import exclusive
    from zincati_py.schedule.units import slot_unit

    unit = slot_unit(name)
    try:
        with connect(args) as systemd:
            state = systemd.properties(unit, UNIT_IFACE).get("ActiveState")
            status = int(systemd.properties(unit, SERVICE_IFACE).get("ExecMainStatus", 0))
    except (CliError, SystemdError, ValueError, TypeError) as exc:
        # Any failure here must fail the unit: an exit status 1-254 would only skip the run.
        exclusive.say(f"not run: {unit}: {exc}", priority=3)
        return exclusive.CONDITION_FAILED
    if state == "active":
        return 0
    if state == "failed" and status == exclusive.SKIPPED:
        return exclusive.SKIPPED
    exclusive.say(f"not run: {unit} holds no slot ({state}, exit status {status})", priority=3)
    return exclusive.CONDITION_FAILED


def _slot_ended(args: argparse.Namespace, name: str) -> int:
    """The slot unit's ``ExecStopPost=``: after a lost slot, stop the job's command."""
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import exclusive
    from zincati_py.schedule.units import unit_name

    lost = os.environ.get("EXIT_CODE") == "exited" and os.environ.get("EXIT_STATUS") == str(
        exclusive.LOST
    )
    if not lost:
        return 0
    try:
        with connect(args) as systemd:
            systemd.stop_unit(unit_name(name))
    except (CliError, SystemdError) as exc:
        exclusive.say(f"could not stop {unit_name(name)} after losing its slot: {exc}", priority=2)
        return 1
    return 0


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
    if args.failed_unit:
        return _record_failed_unit(args, name)
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
    if args.exclusive:
        _exclusive_outcome(args, name, record)
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


def _exclusive_outcome(args: argparse.Namespace, name: str, record: dict[str, Any]) -> None:
    """A fleet-exclusive run: skipped (its ExecCondition= said so) or stopped because its slot
    was lost (the slot unit exited LOST). The slot unit stops by itself once unneeded."""
    from zincati_py.dbus.systemd import SERVICE_IFACE
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import exclusive
    from zincati_py.schedule.units import slot_unit

    if os.environ.get("SERVICE_RESULT") == "exec-condition":
        record["result"] = "skipped"  # the group was full: the command never ran
    unit = slot_unit(name)
    try:
        with connect(args) as systemd:
            props = systemd.properties(unit, SERVICE_IFACE)
            if (
                props.get("Result") == "exit-code"
                and int(props.get("ExecMainStatus", 0)) == exclusive.LOST
            ):
                record["lost_slot"] = True
    except (CliError, SystemdError, ValueError, TypeError) as exc:
        print(f"zincati-py: {unit}: slot state unknown: {exc}", file=sys.stderr)


def _record_failed_unit(args: argparse.Namespace, name: str) -> int:
    """``_record NAME --failed-unit`` (``OnFailure=``, as root): record the failed run from
    systemd's ``MONITOR_*`` variables, unless the job's ``ExecStopPost=`` hook already recorded
    that invocation."""
    from zincati_py.dbus.systemd import SERVICE_IFACE, usec_to_datetime
    from zincati_py.dbus.systemd_sync import SystemdError
    from zincati_py.schedule import history
    from zincati_py.schedule.units import unit_name as schedule_unit

    invocation = os.environ.get("MONITOR_INVOCATION_ID")
    with job_errors():
        runs = history.read(paths_of(args), name)
    if invocation and any(run.get("invocation_id") == invocation for run in runs):
        return 0  # the hook ran
    unit = schedule_unit(name)
    environ = {
        key: os.environ[f"MONITOR_{key}"]
        for key in ("INVOCATION_ID", "SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS")
        if f"MONITOR_{key}" in os.environ
    }
    start = end = None
    attempt = None
    try:
        with connect(args) as systemd:
            props = systemd.properties(unit, SERVICE_IFACE)
            attempt = int(props.get("NRestarts", 0)) + 1
            start = usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
            end = usec_to_datetime(int(props.get("ExecMainExitTimestamp", 0)))
    except (CliError, SystemdError) as exc:
        print(f"zincati-py: {unit}: start time unknown: {exc}", file=sys.stderr)
    print(
        f"zincati-py: schedule {name}: the run failed before its history hook could run "
        f"({environ.get('SERVICE_RESULT')}, {environ.get('EXIT_CODE')}="
        f"{environ.get('EXIT_STATUS')}); recorded it",
        file=sys.stderr,
    )
    record = history.make_record(name, unit, start, end, environ, attempt=attempt)
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
