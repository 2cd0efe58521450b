"""``zincati-py schedule ...``: cron schedules as systemd timers.

One ``_register_<name>`` + ``_cmd_<name>`` pair per subcommand; add new subcommands to
``_SUBCOMMANDS``. croniter is imported lazily by the translation itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from zincati_py.cli import CliError

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


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (_register_translate,)
