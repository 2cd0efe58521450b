"""``zincati-py trigger NAME``: run a schedule's job now, through systemd's D-Bus API.

Starts ``zincati-py-schedule-NAME.service`` (``Manager.StartUnit``, mode "fail") and returns
once systemd has queued the job; the run itself is systemd's, so it gets the same environment,
timeout and history record as a timer-started run. If the service is already running (a
oneshot stays "activating" while its command runs), nothing is started and the exit status is
75 with the time the current run began: a second start would only be merged into the running
one by systemd. Exit 65 for an unknown or disabled job, 69 if systemd is unreachable.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from zincati_py.cli.common import (
    CliError,
    add_root_argument,
    add_user_argument,
    check_job_name,
    connect,
    fmt_time,
)


def register(sub: Any) -> None:
    """``zincati-py trigger``; ``zincati-py schedule trigger`` is the same command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "trigger",
        help="run a schedule's job now (refused with exit 75 while it runs)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("name", metavar="NAME", help="the [[schedule]] job name")
    add_root_argument(parser)
    add_user_argument(parser)
    parser.set_defaults(func=cmd_trigger)


def _not_loaded(args: argparse.Namespace, name: str) -> CliError:
    """Why systemd has no unit for ``name``, from the configuration."""
    from zincati_py.config import load

    result = load(args.root)
    job = next((j for j in result.config.schedules if j.name == name), None)
    if job is not None and not job.enabled:
        return CliError(f"schedule {name} is disabled; 'zincati-py schedule enable {name}' first")
    if job is not None:
        return CliError(
            f"schedule {name} is configured but systemd has not loaded it yet; "
            f"run 'systemctl{' --user' if args.user else ''} daemon-reload'"
        )
    if any(p.key.startswith(f"schedule[{name}]") for p in result.errors):
        return CliError(f"schedule {name} is invalid (see 'zincati-py config check')")
    return CliError(f"no schedule {name}")


def cmd_trigger(args: argparse.Namespace) -> int:
    from zincati_py.dbus.systemd_sync import SystemdError, SystemdUnavailable
    from zincati_py.schedule.units import unit_name as schedule_unit

    name = check_job_name(args.name)
    unit = schedule_unit(name)
    try:
        with connect(args) as systemd:
            state = systemd.unit_state(unit)
            if not state.exists:
                raise _not_loaded(args, name)
            if state.busy:
                raise CliError(
                    f"schedule {name} is already running (since {fmt_time(state.busy_since)}, "
                    f"{unit} {state.active_state}); not started again",
                    os.EX_TEMPFAIL,
                )
            job = systemd.start_unit(unit, "fail")
    except SystemdUnavailable as exc:
        raise CliError(f"systemd is unreachable: {exc.message}", os.EX_UNAVAILABLE) from None
    except SystemdError as exc:
        if exc.name.endswith(("NoSuchUnit", "LoadFailed")):
            raise _not_loaded(args, name) from None
        if exc.name.endswith("TransactionIsDestructive"):
            raise CliError(f"{unit}: a stop job is queued; try again", os.EX_TEMPFAIL) from None
        raise CliError(f"{unit}: systemd refused to start it: {exc}", os.EX_UNAVAILABLE) from None
    print(f"started {unit} (job {job.rsplit('/', 1)[-1]})")
    return 0
