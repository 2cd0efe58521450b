"""A ``[[schedule]]`` job as systemd units: ``zincati-py-schedule-NAME.timer`` + ``.service``.

The generator (zincati_py.generator) calls :func:`render_job` for every enabled job and writes
what it returns; the CLI names units with :func:`unit_name`. Every string that reaches a unit
goes through :mod:`zincati_py.unitfile` (escaped or refused):

Timer
    ``OnCalendar=`` from the cron translation (job time zone, ``H`` hashed with the node id);
    ``Persistent=`` from ``catch_up`` (a run missed while the machine was down happens once at
    boot, never piled up); ``RandomizedDelaySec=``; ``AccuracySec=1s``.
Service
    ``Type=oneshot`` running the command as ``/bin/sh -c COMMAND`` (written exactly as in a
    crontab), quoted so ``$``, ``%``, ``\\``, quotes and newlines reach the shell unchanged. A
    command starting with ``-`` or ``+`` is passed after ``--`` (``/bin/sh -c -- COMMAND``), so
    the shell does not read it as its own options; a NUL cannot be passed to a program at all
    and is refused (the config loader reports it; a job holding one is skipped here too).
    ``TimeoutStartSec=`` from ``timeout_secs``. ``ExecStopPost=`` runs
    ``zincati-py schedule _record NAME`` after every run (timer, trigger or manual start),
    which appends the run to the job's history (zincati_py.schedule.history).

Imported by the generator on every boot: only the builtins and unitfile at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zincati_py import unitfile

if TYPE_CHECKING:
    from zincati_py.config import ScheduleSettings

__all__ = [
    "SCHEDULE_UNIT",
    "SHELL",
    "JobSkipped",
    "JobUnits",
    "calendar",
    "render_job",
    "unit_name",
]

SCHEDULE_UNIT = "zincati-py-schedule-{name}"
SHELL = "/bin/sh"


class JobSkipped(Exception):
    """The job cannot be rendered; the message names the file and key (for the journal)."""


@dataclass
class JobUnits:
    """A job's timer and service texts, other units it needs (name → text), and notes: problems
    that did not stop it (for the journal)."""

    base: str
    timer: str
    service: str
    extra: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def unit_name(name: str, suffix: str = "service") -> str:
    return f"{SCHEDULE_UNIT.format(name=name)}.{suffix}"


def _zone_suffix(tz: str | None) -> str | None:
    """What to append to calendar lines for ``tz``: ``localtime``/None mean the host's zone."""
    return None if tz in (None, "localtime") else tz


def calendar(job: ScheduleSettings, hash_id: str | None) -> list[str]:
    """The job's ``OnCalendar=`` values; raises CronError."""
    from zincati_py.schedule import translate

    return translate(job.cron, tz=_zone_suffix(job.time_zone), hash_id=hash_id)


def description(text: str) -> str:
    """A ``Description=``: one line (control characters become spaces), no specifiers."""
    return unitfile.escape_specifiers("".join(ch if ch.isprintable() else " " for ch in text))


def shell_command(command: str) -> str:
    """The ``ExecStart=`` value running ``command`` with ``/bin/sh -c``."""
    if "\0" in command:
        raise unitfile.UnsafeValue("command contains a NUL character")
    # sh reads a first argument starting with - or + as options (sh -c -x ...), not the command.
    dashes = "-- " if command[:1] in ("-", "+") else ""
    return f"{SHELL} -c {dashes}{unitfile.quote_exec_arg(command)}"


def render_job(
    job: ScheduleSettings, *, header: str, exe: str, hash_id: str | None, hook_args: str
) -> JobUnits:
    """The units of ``job``.

    ``exe`` is the ``zincati-py`` executable as an Exec word; ``hook_args`` what the history
    hook needs besides the name (`` --root ROOT``, `` --user``), already quoted.
    Raises JobSkipped.
    """
    from zincati_py.schedule import CronError

    where = f"{job.source}: schedule[{job.name}]"
    try:
        lines = calendar(job, hash_id)
    except CronError as exc:
        raise JobSkipped(f"{where}.cron: {exc}; job skipped") from None
    try:
        exec_start = shell_command(job.command)
    except unitfile.UnsafeValue as exc:
        raise JobSkipped(f"{where}.command: {exc}; job skipped") from None
    notes: list[str] = []
    zone = f" {job.time_zone}" if job.time_zone else ""
    source = ""
    if job.source:
        try:
            source = f"SourcePath={unitfile.setting(str(job.source), 'fragment path')}\n"
        except unitfile.UnsafeValue as exc:
            notes.append(f"schedule[{job.name}]: {exc}; SourcePath= left out")
    delay = job.randomized_delay_secs
    timer = (
        f"{header}\n[Unit]\n"
        f"Description={description(f'zincati-py schedule {job.name} (cron {job.cron}{zone})')}\n"
        f"{source}"
        "\n[Timer]\n"
        + "".join(f"OnCalendar={line}\n" for line in lines)
        + f"Persistent={'yes' if job.catch_up else 'no'}\n"
        + (f"RandomizedDelaySec={delay}s\n" if delay else "")
        + "AccuracySec=1s\n"
    )
    service = (
        f"{header}\n[Unit]\nDescription={description(f'zincati-py schedule {job.name}')}\n"
        f"{source}"
        "\n[Service]\nType=oneshot\n"
        f"ExecStart={exec_start}\n"
        + (f"TimeoutStartSec={job.timeout_secs}s\n" if job.timeout_secs else "")
        # "-": recording history must never turn a run into a failure.
        + f"ExecStopPost=-{exe} schedule _record {job.name}{hook_args}\n"
    )
    return JobUnits(SCHEDULE_UNIT.format(name=job.name), timer, service, notes=notes)
