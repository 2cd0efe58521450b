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

# The accepted TOML value types of each job key.
SCHEDULE_SCHEMA: dict[str, Any] = {
    "name": (str,),
    "cron": (str,),
    "command": (str,),
    "time_zone": (str,),
    "catch_up": (bool,),
    "randomized_delay_secs": (int,),
    "timeout_secs": (int,),
    "enabled": (bool,),
}


@dataclass(frozen=True)
class ScheduleSettings:
    name: str
    cron: str
    command: str
    time_zone: str | None = None
    catch_up: bool = True
    randomized_delay_secs: int = 0
    timeout_secs: int | None = None
    enabled: bool = True
    source: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "command": self.command,
            "time_zone": self.time_zone,
            "catch_up": self.catch_up,
            "randomized_delay_secs": self.randomized_delay_secs,
            "timeout_secs": self.timeout_secs,
            "enabled": self.enabled,
            "source": str(self.source) if self.source else None,
        }


# report(severity, file, key, message): one problem naming the file and the key.
Report = Callable[[Severity, Path, str, str], None]


def validate_jobs(
    jobs: dict[str, Entry],
    hash_id: str | None,
    report: Report,
    tz_problem: Callable[[str], str | None],
) -> tuple[ScheduleSettings, ...]:
    """The valid jobs, sorted by name; each invalid one reported once and left out."""
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
        if not v["command"].value.strip():
            bad("command", "empty", v["command"].file)
            continue
        if "\0" in v["command"].value:  # no program can receive one: it ends a C string
            bad("command", "contains a NUL character", v["command"].file)
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
        if timeout is not None and timeout < 1:
            bad("timeout_secs", f"{timeout} must be >= 1", v["timeout_secs"].file)
            continue
        if timeout is not None and (message := too_many_seconds(timeout)) is not None:
            bad("timeout_secs", message, v["timeout_secs"].file)
            continue
        out.append(
            ScheduleSettings(
                name=name,
                cron=v["cron"].value,
                command=v["command"].value,
                time_zone=tz,
                catch_up=v["catch_up"].value if "catch_up" in v else True,
                randomized_delay_secs=delay,
                timeout_secs=timeout,
                enabled=v["enabled"].value if "enabled" in v else True,
                source=entry.file,
            )
        )
    return tuple(sorted(out, key=lambda s: s.name))
