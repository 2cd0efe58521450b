"""A ``[[schedule]]`` job as systemd units: ``zincati-py-schedule-NAME.timer`` + ``.service``.

The generator (zincati_py.generator) calls :func:`render_job` for every enabled job and writes
what it returns; the CLI names units with :func:`unit_name`. Every string that reaches a unit
goes through :mod:`zincati_py.unitfile` (escaped or refused):

Timer
    ``OnCalendar=`` from the cron translation (job time zone, ``H`` hashed with the node id);
    ``Persistent=`` from ``catch_up`` (a run missed while the machine was down happens once at
    boot, never piled up); ``RandomizedDelaySec=``; ``AccuracySec=1s``.
Service
    ``Type=oneshot``. A string ``command`` runs as ``/bin/sh -c COMMAND`` (written exactly as
    in a crontab), quoted so ``$``, ``%``, ``\\``, quotes and newlines reach the shell
    unchanged; one starting with ``-`` or ``+`` is passed after ``--`` (``/bin/sh -c --
    COMMAND``) so the shell does not read it as its own options. An array ``command`` is the
    argv, no shell: each word quoted so systemd hands the program exactly those bytes. A NUL
    cannot be passed to a program at all and is refused (the config loader reports it; a job
    holding one is skipped here too). ``TimeoutStartSec=`` from ``timeout_secs``.
    ``retries`` N: ``Restart=on-failure`` + ``RestartSec=`` (``retry_delay_secs``); the history
    hook stops the unit after the last attempt (``--retries N``: a stop forbids the restart,
    so the unit ends ``failed`` and ``OnFailure=`` fires once), and ``StartLimitBurst=N+1``
    within ``StartLimitIntervalSec=`` N x delay + 1 s guards against a runaway loop.
    ``on_failure``: ``OnFailure=`` a unit, or a generated ``zincati-py-on-failure-NAME.service``
    running the command with ``ZINCATI_PY_JOB`` set (systemd adds ``MONITOR_SERVICE_RESULT``,
    ``MONITOR_EXIT_CODE``, ``MONITOR_EXIT_STATUS``, ``MONITOR_INVOCATION_ID``, ``MONITOR_UNIT``).
    ``exclusive_group``: ``Wants=``/``After=`` the job's slot unit
    ``zincati-py-slot-NAME.service`` (started first, taking a FleetLock slot; stopped when no
    longer needed: the run and its retries are over; at shutdown after the command), and
    ``ExecCondition=+zincati-py schedule _exclusive --check`` (as root) lets the command run
    only when the slot unit holds a slot (zincati_py.schedule.exclusive). The slot unit runs as
    root (no ``User=``) and alone gets the lock server's token (``LoadCredential=``): the
    command's unit has none.
    ``user``/``dynamic_user``: ``User=``/``DynamicUser=yes`` for the command and the failure
    hook; ``OnFailure=zincati-py-record-NAME.service`` (root) records a failed run the hook
    could not (systemd failed to set the user up). ``ExecStopPost=`` runs
    ``zincati-py schedule _record NAME`` after every attempt
    (timer, trigger or manual start), as root (``+``) when the job runs as another user, which
    appends the run to the job's history (zincati_py.schedule.history). systemd gives that
    root command the job user's ``$HOME`` too (``User=``), a directory the user controls:
    Python (without ``-s``) would run ``.pth`` files from its user site there, as root; so the
    hook (and an exclusive job's ``ExecCondition=+``) starts through ``env -u HOME
    PYTHONNOUSERSITE=1`` (found on the real host).

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
FAILURE_UNIT = "zincati-py-on-failure-{name}"
RECORD_UNIT = "zincati-py-record-{name}"  # records a run of another user's job its hook missed
SLOT_UNIT = "zincati-py-slot-{name}"  # holds a fleet-exclusive job's FleetLock slot
TOKEN_CREDENTIAL = "zincati-py-fleetlock-token"  # the lock server token of exclusive runs
SHELL = "/bin/sh"
ENV = "/usr/bin/env"
_EXEC_PREFIXES = "-@:+!|"  # what systemd reads as flags at the start of an Exec line


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


def slot_unit(name: str) -> str:
    """The unit holding the FleetLock slot of exclusive job ``name``'s runs."""
    return f"{SLOT_UNIT.format(name=name)}.service"


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


def argv_command(argv: tuple[str, ...] | list[str]) -> str:
    """The ``ExecStart=`` value running ``argv`` without a shell."""
    if not argv or any("\0" in arg for arg in argv):
        raise unitfile.UnsafeValue("command is empty or contains a NUL character")
    program = argv[0]
    first = (
        unitfile.quote_exec_arg(program)
        if program[:1] in _EXEC_PREFIXES
        else unitfile.exec_word(program)
    )
    return " ".join([first, *(unitfile.exec_word(arg) for arg in argv[1:])])


def exec_command(command: str | tuple[str, ...] | list[str]) -> str:
    return shell_command(command) if isinstance(command, str) else argv_command(command)


def _run_as(job: ScheduleSettings) -> str:
    out = f"User={unitfile.setting(job.user, 'user')}\n" if job.user else ""
    return out + ("DynamicUser=yes\n" if job.dynamic_user else "")


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
    extra: dict[str, str] = {}
    try:
        exec_start = exec_command(job.command)
        run_as = _run_as(job)
    except unitfile.UnsafeValue as exc:
        key = "command" if "command" in str(exc) else "user"
        raise JobSkipped(f"{where}.{key}: {exc}; job skipped") from None
    on_failure = ""
    if job.on_failure is not None:
        try:
            on_failure = _failure_hook(job, header, run_as, extra)
        except unitfile.UnsafeValue as exc:
            raise JobSkipped(f"{where}.on_failure: {exc}; job skipped") from None
    if run_as:
        on_failure += _failed_run_recorder(job, header, exe, hook_args, extra)
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
    retry_unit = retry_service = ""
    hook = hook_args
    if job.retries:
        interval = job.retries * job.retry_delay_secs + 1
        retry_unit = f"StartLimitIntervalSec={interval}s\nStartLimitBurst={job.retries + 1}\n"
        retry_service = f"Restart=on-failure\nRestartSec={job.retry_delay_secs}s\n"
        hook += f" --retries {job.retries}"
    # Root's commands in a job's unit ("+": the history hook, the slot condition) must not read
    # the job user's $HOME, which systemd sets for them too (User=): found on the real host.
    root_exe = f"{ENV} -u HOME PYTHONNOUSERSITE=1 {exe}" if run_as else exe
    exclusive = slot_order = ""
    if job.exclusive_group:
        try:
            extra[slot_unit(job.name)] = _slot_service(job, header, source, exe, hash_id, hook_args)
        except unitfile.UnsafeValue as exc:
            raise JobSkipped(f"{where}.exclusive_group: {exc}; job skipped") from None
        # As root ("+"), whoever the job runs as: it only reads the slot unit's state.
        exclusive = f"ExecCondition=+{root_exe} schedule _exclusive --check {job.name}{hook_args}\n"
        slot_order = f"Wants={slot_unit(job.name)}\nAfter={slot_unit(job.name)}\n"
        hook += " --exclusive"
    # "-": recording history must never turn a run into a failure; "+": as root, whoever
    # the job runs as (the history is root's).
    flags = "-+" if run_as else "-"
    service = (
        f"{header}\n[Unit]\nDescription={description(f'zincati-py schedule {job.name}')}\n"
        f"{source}{on_failure}{retry_unit}{slot_order}"
        "\n[Service]\nType=oneshot\n"
        f"{exclusive}"
        f"ExecStart={exec_start}\n"
        + (f"TimeoutStartSec={job.timeout_secs}s\n" if job.timeout_secs else "")
        + retry_service
        + run_as
        + f"ExecStopPost={flags}{root_exe} schedule _record {job.name}{hook}\n"
    )
    return JobUnits(SCHEDULE_UNIT.format(name=job.name), timer, service, extra, notes)


def _slot_service(
    job: ScheduleSettings, header: str, source: str, exe: str, hash_id: str | None, hook_args: str
) -> str:
    """The slot unit: ``zincati-py schedule _exclusive`` holding the job's FleetLock slot, as
    root (no ``User=``), with the lock server's token; ``READY=1`` once the slot is held."""
    from zincati_py.schedule.exclusive import lock_id

    if not job.fleet_lock_url or not hash_id:
        raise unitfile.UnsafeValue("exclusive_group needs a lock server and a node id")
    token_file, token_credential = job.fleet_lock_token
    credential = TOKEN_CREDENTIAL if token_file else token_credential
    words = [
        "schedule", "_exclusive", "--url", job.fleet_lock_url,
        "--group", job.exclusive_group or "", "--id", lock_id(hash_id, job.name),
        "--wait", str(job.exclusive_wait_secs),
        *(["--token-credential", credential] if credential else []),
        *(["--token-file", token_file] if token_file else []),
        job.name,
    ]  # fmt: skip
    if any("\0" in word for word in words):
        raise unitfile.UnsafeValue("contains a NUL character")
    hold = " ".join([exe, *(unitfile.exec_word(word) for word in words)])
    # The lock server may take a while to answer each attempt: the wait plus a margin.
    start_timeout = job.exclusive_wait_secs + 120
    group = job.exclusive_group or ""
    return (
        f"{header}\n[Unit]\n"
        f"Description={description(f'zincati-py schedule {job.name}: slot of group {group}')}\n"
        f"{source}"
        "StopWhenUnneeded=yes\n"  # released once the job's run (retries included) is over
        "StartLimitIntervalSec=0\n"  # started with the job: the job's own limits apply
        "\n[Service]\nType=notify\nNotifyAccess=main\n"
        f"ExecStart={hold}{hook_args}\n"
        f"ExecStopPost={exe} schedule _exclusive --ended {job.name}{hook_args}\n"
        f"TimeoutStartSec={start_timeout}s\n" + _token_credential(job)
    )


def _token_credential(job: ScheduleSettings) -> str:
    """``LoadCredential=`` for the lock server's token, in the slot unit only: readable by
    root there; the token file stays root's."""
    token_file, token_credential = job.fleet_lock_token
    if token_file:
        return f"LoadCredential={TOKEN_CREDENTIAL}:{unitfile.setting(token_file, 'token file')}\n"
    if token_credential:  # from the system credential store (/etc/credstore, ...)
        return f"LoadCredential={unitfile.setting(token_credential, 'token credential')}\n"
    return ""


def _failed_run_recorder(
    job: ScheduleSettings, header: str, exe: str, hook_args: str, extra: dict[str, str]
) -> str:
    """``OnFailure=`` a root unit recording the failed run, for a job run as another user.

    When systemd cannot set that user up (217/USER: no such user), it cannot run root's
    ``ExecStopPost=+`` either (it resolves ``User=`` for every command) and the run would be
    missing from the history (found on the real host). The unit records it from systemd's
    ``MONITOR_*`` variables unless the hook already did (same invocation id).
    """
    unit = f"{RECORD_UNIT.format(name=job.name)}.service"
    extra[unit] = (
        f"{header}\n[Unit]\n"
        f"Description={description(f'zincati-py schedule {job.name}: record a failed run')}\n"
        "\n[Service]\nType=oneshot\n"
        f"ExecStart={exe} schedule _record {job.name} --failed-unit{hook_args}\n"
    )
    return f"OnFailure={unit}\n"


def _failure_hook(job: ScheduleSettings, header: str, run_as: str, extra: dict[str, str]) -> str:
    """The ``OnFailure=`` line; a generated handler unit goes into ``extra``."""
    from zincati_py.config.jobs import FAILURE_UNIT_RE

    assert job.on_failure is not None
    if FAILURE_UNIT_RE.fullmatch(job.on_failure):
        return f"OnFailure={unitfile.setting(job.on_failure, 'on_failure unit')}\n"
    handler = FAILURE_UNIT.format(name=job.name)
    extra[f"{handler}.service"] = (
        f"{header}\n[Unit]\n"
        f"Description={description(f'zincati-py schedule {job.name} failed: hook')}\n"
        "\n[Service]\nType=oneshot\n"
        f"Environment=ZINCATI_PY_JOB={job.name}\n"
        f"ExecStart={shell_command(job.on_failure)}\n" + run_as
    )
    return f"OnFailure={handler}.service\n"
