"""Layer 2: the validated, typed configuration with defaults filled in (``*Settings``).

``validate.py`` builds it from the merged raw tree; ``[[schedule]]`` jobs' rules and settings
live in ``jobs.py``. Validation follows Zincati: ``fleet_lock`` needs a non-empty absolute
``base_url``, ``periodic`` needs at least one window and a time zone that resolves, wrong
types are errors. Settings that no configured strategy uses are still checked, but their
problems are warnings (Zincati ignores windows unless the strategy is periodic). An invalid
key falls back to its default and is reported; callers decide whether errors are fatal (the
agent keeps its last good config, ``config check`` exits 65, the generator emits what is
valid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from zincati_py.config.checks import WEEKDAYS, parse_weekday
from zincati_py.config.jobs import SCHEDULE_NAME_RE, ScheduleSettings

__all__ = [
    "GROUP_RE",
    "MAX_WINDOW_MINUTES",
    "SCHEDULE_NAME_RE",
    "STRATEGIES",
    "WEEKDAYS",
    "AgentSettings",
    "FileGateSettings",
    "FleetLockSettings",
    "HealthSettings",
    "HooksSettings",
    "IdentitySettings",
    "MetricsSettings",
    "PeriodicSettings",
    "RebootSettings",
    "ScheduleSettings",
    "Settings",
    "TimingSettings",
    "UpdatesSettings",
    "WindowSettings",
    "parse_weekday",
]

STRATEGIES = ("immediate", "periodic", "fleet_lock", "file", "marker_file")
GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
MAX_WINDOW_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class TimingSettings:
    steady_interval_secs: int = 300
    check_cron: str | None = None


@dataclass(frozen=True)
class RebootSettings:
    # How long interactive sessions may postpone a reboot after being warned.
    max_postpone_secs: int = 600
    warn_interactive: bool = True


@dataclass(frozen=True)
class MetricsSettings:
    # Optional TCP listen address ("HOST:PORT") in addition to the public Unix socket.
    listen: str | None = None


@dataclass(frozen=True)
class HealthSettings:
    """``[agent.health]`` (see ``zincati_py.health``): checks before a reboot, the gate after."""

    pre_reboot: tuple[str, ...] = ()  # unit names (must be active) or commands (must exit 0)
    required_units: tuple[str, ...] = ()
    timeout_secs: int = 300  # the post-boot gate's deadline, and each check's bound
    rollback: bool = True  # a failed gate rolls back (false: report it only)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pre_reboot": list(self.pre_reboot),
            "required_units": list(self.required_units),
            "timeout_secs": self.timeout_secs,
            "rollback": self.rollback,
        }


@dataclass(frozen=True)
class HooksSettings:
    """``[agent.hooks]``: commands run on update events, each event as an instance of the
    generated template unit ``zincati-py-hook@.service``."""

    commands: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # empty: every event
    timeout_secs: int = 60

    def as_dict(self) -> dict[str, Any]:
        return {
            "commands": list(self.commands),
            "events": list(self.events),
            "timeout_secs": self.timeout_secs,
        }


@dataclass(frozen=True)
class AgentSettings:
    timing: TimingSettings = field(default_factory=TimingSettings)
    reboot: RebootSettings = field(default_factory=RebootSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)


@dataclass(frozen=True)
class IdentitySettings:
    group: str = "default"
    # 32 lowercase hex digits; None only when neither configured nor derivable.
    node_uuid: str | None = None
    rollout_wariness: float | None = None


@dataclass(frozen=True)
class WindowSettings:
    """A maintenance window: weekly ``days`` at ``start_time``, or every ``cron`` fire time."""

    length_minutes: int
    days: tuple[int, ...] = ()  # 0 = Monday .. 6 = Sunday
    start_time: time | None = None
    cron: str | None = None
    source: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"length_minutes": self.length_minutes}
        if self.cron is not None:
            out["cron"] = self.cron
        else:
            out["days"] = [WEEKDAYS[d].capitalize() for d in self.days]
            out["start_time"] = self.start_time.strftime("%H:%M") if self.start_time else None
        return out


@dataclass(frozen=True)
class PeriodicSettings:
    time_zone: str = "UTC"
    windows: tuple[WindowSettings, ...] = ()


@dataclass(frozen=True)
class FleetLockSettings:
    base_url: str | None = None
    # The lock server's bearer token, never inline: the first line of an absolute file path,
    # or a systemd credential of the agent's unit ($CREDENTIALS_DIRECTORY/NAME).
    token_file: str | None = None
    token_credential: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base_url": self.base_url}
        if self.token_file is not None:
            out["token_file"] = self.token_file
        if self.token_credential is not None:
            out["token_credential"] = self.token_credential
        return out


@dataclass(frozen=True)
class FileGateSettings:
    path: str | None = None
    max_age_secs: int | None = None


@dataclass(frozen=True)
class UpdatesSettings:
    enabled: bool = True
    allow_downgrade: bool = False
    strategy: tuple[str, ...] = ("immediate",)
    fleet_lock: FleetLockSettings = field(default_factory=FleetLockSettings)
    periodic: PeriodicSettings = field(default_factory=PeriodicSettings)
    file: FileGateSettings = field(default_factory=FileGateSettings)


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings = field(default_factory=AgentSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    cincinnati_base_url: str | None = None
    updates: UpdatesSettings = field(default_factory=UpdatesSettings)
    schedules: tuple[ScheduleSettings, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The TOML's section/key names with defaults filled in (``config show --json``)."""
        u = self.updates
        return {
            "agent": {
                "timing": {
                    "steady_interval_secs": self.agent.timing.steady_interval_secs,
                    "check_cron": self.agent.timing.check_cron,
                },
                "reboot": {
                    "max_postpone_secs": self.agent.reboot.max_postpone_secs,
                    "warn_interactive": self.agent.reboot.warn_interactive,
                },
                "metrics": {"listen": self.agent.metrics.listen},
                "health": self.agent.health.as_dict(),
                "hooks": self.agent.hooks.as_dict(),
            },
            "identity": {
                "group": self.identity.group,
                "node_uuid": self.identity.node_uuid,
                "rollout_wariness": self.identity.rollout_wariness,
            },
            "cincinnati": {"base_url": self.cincinnati_base_url},
            "updates": {
                "enabled": u.enabled,
                "allow_downgrade": u.allow_downgrade,
                "strategy": list(u.strategy),
                "fleet_lock": u.fleet_lock.as_dict(),
                "periodic": {
                    "time_zone": u.periodic.time_zone,
                    "window": [w.as_dict() for w in u.periodic.windows],
                },
                "file": {"path": u.file.path, "max_age_secs": u.file.max_age_secs},
            },
            "schedule": [s.as_dict() for s in self.schedules],
        }
