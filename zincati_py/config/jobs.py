"""``[[schedule]]`` jobs (our extension): every rule about a job's keys lives here.

To add a job key: its TOML type in ``SCHEDULE_SCHEMA``, its field in ``ScheduleSettings`` (and
``as_dict``), and its check in ``validate_jobs``. Jobs merge by ``name`` across fragments
(``fragments.py``); a job with any invalid key is dropped as a whole, with one error naming the
fragment that set that key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zincati_py.config.checks import cron_order_warning, cron_problem, too_many_seconds
from zincati_py.config.problems import Severity
from zincati_py.config.raw import Entry

SCHEDULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A user name systemd accepts for User= in its strict mode (or a numeric UID).
USER_NAME_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_-]{0,30}|[0-9]{1,10})$")
# on_failure naming a unit instead of a command.
FAILURE_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,250}\.(?:service|target)$")
MAX_RETRIES = 1000
# exclusive_group: a FleetLock group name (zincati_py.fleetlock.protocol.GROUP_RE).
LOCK_GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")

# The accepted TOML value types of each job key.
SCHEDULE_SCHEMA: dict[str, Any] = {
    "name": (str,),
    "cron": (str,),
    "command": (str, list),  # a shell line, or an argv run without a shell
    "time_zone": (str,),
    "catch_up": (bool,),
    "randomized_delay_secs": (int,),
    "timeout_secs": (int,),
    "enabled": (bool,),
    "retries": (int,),
    "retry_delay_secs": (int,),
    "on_failure": (str,),
    "user": (str,),
    "dynamic_user": (bool,),
    "exclusive_group": (str,),
    "exclusive_wait_secs": (int,),
}


@dataclass(frozen=True)
class ScheduleSettings:
    name: str
    cron: str
    command: str | tuple[str, ...]  # str: run by /bin/sh -c; tuple: the argv, no shell
    time_zone: str | None = None
    catch_up: bool = True
    randomized_delay_secs: int = 0
    timeout_secs: int | None = None
    enabled: bool = True
    source: Path | None = None
    retries: int = 0
    retry_delay_secs: int = 0
    on_failure: str | None = None  # a shell line, or a unit name (*.service, *.target)
    user: str | None = None
    dynamic_user: bool = False
    # A slot of this FleetLock group (updates.fleet_lock.base_url) is held while a run goes on.
    exclusive_group: str | None = None
    exclusive_wait_secs: int = 0
    fleet_lock_url: str | None = None  # copied from updates.fleet_lock.base_url when exclusive
    # and its token: (token_file, token_credential) of [updates.fleet_lock], when exclusive
    fleet_lock_token: tuple[str | None, str | None] = (None, None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "time_zone": self.time_zone,
            "catch_up": self.catch_up,
            "randomized_delay_secs": self.randomized_delay_secs,
            "timeout_secs": self.timeout_secs,
            "enabled": self.enabled,
            "retries": self.retries,
            "retry_delay_secs": self.retry_delay_secs,
            "on_failure": self.on_failure,
            "user": self.user,
            "dynamic_user": self.dynamic_user,
            "exclusive_group": self.exclusive_group,
            "exclusive_wait_secs": self.exclusive_wait_secs,
            "source": str(self.source) if self.source else None,
        }


# report(severity, file, key, message): one problem naming the file and the key.
Report = Callable[[Severity, Path, str, str], None]


def validate_jobs(
    jobs: dict[str, Entry],
    hash_id: str | None,
    report: Report,
    tz_problem: Callable[[str], str | None],
    *,
    fleet_lock_url: str | None = None,
    fleet_lock_token: tuple[str | None, str | None] = (None, None),
) -> tuple[ScheduleSettings, ...]:
    """The valid jobs, sorted by name; each invalid one reported once and left out.
    ``fleet_lock_url``: the configured FleetLock server, which ``exclusive_group`` needs."""
    out: list[ScheduleSettings] = []
    for name, entry in jobs.items():
        v = entry.values

        # Errors name the fragment that last touched the job (it may span several files).
        def bad(key: str, message: str, file: Path = entry.file, job: str = name) -> None:
            report("error", file, f"schedule[{job}].{key}", f"{message}; job ignored")

        if not SCHEDULE_NAME_RE.fullmatch(name):
            bad("name", f"{name!r} must match {SCHEDULE_NAME_RE.pattern}")
            continue
        missing = [k for k in ("cron", "command") if k not in v]
        if missing:
            bad(missing[0], "missing")
            continue
        if (message := _command_problem(v["command"].value)) is not None:
            bad("command", message, v["command"].file)
            continue
        tz = v["time_zone"].value if "time_zone" in v else None
        if tz == "localtime":
            tz = None  # systemd's OnCalendar= without a zone suffix is the local zone
        if tz is not None and tz_problem(tz) is not None:
            bad("time_zone", f"unknown time zone {tz!r}", v["time_zone"].file)
            continue
        message = cron_problem(v["cron"].value, tz, hash_id)
        if message is not None:
            bad("cron", message, v["cron"].file)
            continue
        if (warning := cron_order_warning(v["cron"].value)) is not None:
            report("warning", v["cron"].file, f"schedule[{name}].cron", warning)
        delay = v["randomized_delay_secs"].value if "randomized_delay_secs" in v else 0
        if delay < 0:
            bad("randomized_delay_secs", f"{delay} is negative", v["randomized_delay_secs"].file)
            continue
        if (message := too_many_seconds(delay)) is not None:
            bad("randomized_delay_secs", message, v["randomized_delay_secs"].file)
            continue
        timeout = v["timeout_secs"].value if "timeout_secs" in v else None
        if timeout is not None and timeout < 0:
            bad("timeout_secs", f"{timeout} is negative (0: no timeout)", v["timeout_secs"].file)
            continue
        if timeout is not None and (message := too_many_seconds(timeout)) is not None:
            bad("timeout_secs", message, v["timeout_secs"].file)
            continue
        retries = v["retries"].value if "retries" in v else 0
        if not 0 <= retries <= MAX_RETRIES:
            bad("retries", f"{retries} is not in 0..{MAX_RETRIES}", v["retries"].file)
            continue
        retry_delay = v["retry_delay_secs"].value if "retry_delay_secs" in v else 0
        if retry_delay < 0 or (message := too_many_seconds(retry_delay)) is not None:
            message = f"{retry_delay} is negative" if retry_delay < 0 else message
            bad("retry_delay_secs", str(message), v["retry_delay_secs"].file)
            continue
        on_failure = (v["on_failure"].value if "on_failure" in v else "") or None  # "": none
        if on_failure is not None and (message := _command_problem(on_failure)) is not None:
            bad("on_failure", message, v["on_failure"].file)
            continue
        user = (v["user"].value if "user" in v else "") or None  # "": root
        if user is not None and not USER_NAME_RE.fullmatch(user):
            bad("user", f"{user!r} is not a user name or UID systemd accepts", v["user"].file)
            continue
        group = (v["exclusive_group"].value if "exclusive_group" in v else "") or None
        if group is not None and not LOCK_GROUP_RE.fullmatch(group):
            bad(
                "exclusive_group",
                f"{group!r} must match {LOCK_GROUP_RE.pattern}",
                v["exclusive_group"].file,
            )
            continue
        if group is not None and not fleet_lock_url:
            bad("exclusive_group", "needs updates.fleet_lock.base_url", v["exclusive_group"].file)
            continue
        if group is not None and not hash_id:
            bad(
                "exclusive_group", "needs a node id (identity.node_uuid)", v["exclusive_group"].file
            )
            continue
        wait = v["exclusive_wait_secs"].value if "exclusive_wait_secs" in v else 0
        if wait < 0 or (message := too_many_seconds(wait)) is not None:
            message = f"{wait} is negative" if wait < 0 else message
            bad("exclusive_wait_secs", str(message), v["exclusive_wait_secs"].file)
            continue
        command = v["command"].value
        out.append(
            ScheduleSettings(
                name=name,
                cron=v["cron"].value,
                command=tuple(command) if isinstance(command, list) else command,
                time_zone=tz,
                catch_up=v["catch_up"].value if "catch_up" in v else True,
                randomized_delay_secs=delay,
                timeout_secs=timeout or None,
                enabled=v["enabled"].value if "enabled" in v else True,
                source=entry.file,
                retries=retries,
                retry_delay_secs=retry_delay,
                on_failure=on_failure,
                user=user,
                dynamic_user=v["dynamic_user"].value if "dynamic_user" in v else False,
                exclusive_group=group,
                exclusive_wait_secs=wait,
                fleet_lock_url=fleet_lock_url if group else None,
                fleet_lock_token=fleet_lock_token if group else (None, None),
            )
        )
    return tuple(sorted(out, key=lambda s: s.name))


def _command_problem(command: str | list[Any]) -> str | None:
    """A shell line must not be blank; an argv must be a non-empty array of strings whose
    first (the program) is not empty; neither may hold a NUL (no program can receive one)."""
    if isinstance(command, str):
        if not command.strip():
            return "empty"
        return "contains a NUL character" if "\0" in command else None
    if not command or not all(isinstance(arg, str) for arg in command):
        return "an argv must be a non-empty array of strings"
    if not command[0].strip():
        return "an argv's first element (the program) is empty"
    if "/" in command[0] and not command[0].startswith("/"):
        return f"the program {command[0]!r} must be an absolute path or a name (systemd's rule)"
    if any("\0" in arg for arg in command):
        return "contains a NUL character"
    return None
