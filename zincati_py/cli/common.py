"""Helpers shared by the ``*_cmd`` modules: one place for arguments, connections and formats.

``CliError``, ``add_root_argument`` and ``print_json`` are defined by the dispatcher
(``zincati_py.cli``) and re-exported here, so a command module imports its helpers from this
module only. Nothing here imports another command module (no cycles between commands).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zincati_py.cli import CliError, add_root_argument, print_json
from zincati_py.timefmt import iso_dt

if TYPE_CHECKING:
    from zincati_py.dbus.systemd_sync import Systemd
    from zincati_py.paths import Paths

__all__ = [
    "CliError",
    "add_root_argument",
    "add_user_argument",
    "check_job_name",
    "connect",
    "fmt_time",
    "iso",
    "job_errors",
    "job_parser",
    "paths_of",
    "positive_int",
    "print_json",
]


def add_user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        action="store_true",
        help="talk to the calling user's systemd (session bus) instead of the system manager",
    )


def paths_of(args: argparse.Namespace) -> Paths:
    """The paths under ``args.root`` (``--root``, else ``$ZINCATI_PY_ROOT``, else ``/``)."""
    from zincati_py.paths import Paths

    return Paths.from_root(args.root)


def check_job_name(name: str) -> str:
    """``name`` if it is a valid ``[[schedule]]`` name, else CliError(65)."""
    from zincati_py.config.model import SCHEDULE_NAME_RE

    if not SCHEDULE_NAME_RE.fullmatch(name):
        raise CliError(
            f"schedule name {name!r}: must match {SCHEDULE_NAME_RE.pattern} "
            "(letters, digits, '_' and '-'; at most 64)",
            os.EX_DATAERR,
        )
    return name


def positive_int(option: str, text: str, minimum: int, *, unit: str = "seconds") -> int:
    """``text`` as a whole number >= ``minimum``; a usage error (64) naming ``option`` if not."""
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not a whole number of {unit}", os.EX_USAGE) from None
    if value < minimum:
        raise CliError(f"{option}: {value} must be >= {minimum}", os.EX_USAGE)
    return value


def fmt_time(when: datetime | None) -> str:
    """A timestamp as systemd prints it, in local time; ``-`` for never."""
    return when.astimezone().strftime("%a %Y-%m-%d %H:%M:%S %Z") if when else "-"


iso = iso_dt  # (its callers' name)


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


def job_parser(
    sub: Any, verb: str, func: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """``schedule VERB NAME ...``: a subcommand about one job, run by ``func``."""
    parser: argparse.ArgumentParser = sub.add_parser(verb, **kwargs)
    parser.add_argument("name", metavar="NAME")
    parser.set_defaults(func=func)
    return parser


@contextlib.contextmanager
def job_errors() -> Iterator[None]:
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
