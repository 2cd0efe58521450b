"""Layer 2: the merged raw tree → validated, typed configuration with defaults filled in.

Validation follows Zincati: ``fleet_lock`` needs a non-empty absolute ``base_url``,
``periodic`` needs at least one window and a time zone that resolves, wrong types are errors.
Settings that no configured strategy uses are still checked, but their problems are warnings
(Zincati ignores windows unless the strategy is periodic). An invalid key falls back to its
default and is reported; callers decide whether errors are fatal (the agent keeps its last
good config, ``config check`` exits 65, the generator emits what is valid).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zincati_py.config.fragments import Entry, RawConfig
from zincati_py.config.problems import Problem, Severity

# Zincati's application id for deriving the node id from /etc/machine-id.
ZINCATI_APP_ID = "de35106b6ec24688b63afddaa156679b"
STRATEGIES = ("immediate", "periodic", "fleet_lock", "file", "marker_file")
GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
SCHEDULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_WINDOW_MINUTES = 7 * 24 * 60
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


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
class AgentSettings:
    timing: TimingSettings = field(default_factory=TimingSettings)
    reboot: RebootSettings = field(default_factory=RebootSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


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
                "fleet_lock": {"base_url": u.fleet_lock.base_url},
                "periodic": {
                    "time_zone": u.periodic.time_zone,
                    "window": [w.as_dict() for w in u.periodic.windows],
                },
                "file": {"path": u.file.path, "max_age_secs": u.file.max_age_secs},
            },
            "schedule": [s.as_dict() for s in self.schedules],
        }


def app_specific_id(machine_id: str, app_id: str = ZINCATI_APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific(): HMAC-SHA256, first 16 bytes, UUIDv4."""
    digest = bytearray(
        hmac.new(bytes.fromhex(machine_id), bytes.fromhex(app_id), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def parse_weekday(name: str) -> int | None:
    lowered = name.strip().lower()
    for table in (WEEKDAYS, _FULL_WEEKDAYS):
        if lowered in table:
            return table.index(lowered)
    return None


def resolve_time_zone(name: str, localtime: Path) -> zoneinfo.ZoneInfo:
    """``UTC``, ``localtime`` (the zone ``localtime`` links to) or an IANA name.

    Raises ValueError with a user-facing message when the zone cannot be resolved.
    """
    if name == "localtime":
        if not os.path.lexists(localtime):
            return zoneinfo.ZoneInfo("UTC")  # systemd's rule: no /etc/localtime means UTC
        link = os.readlink(localtime) if localtime.is_symlink() else None
        try:
            target: Path | None = localtime.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target or a loop (RuntimeError before 3.13)
            target = None  # dangling: Zincati fails here too, unless the link names a zone
        # The zone name is in the path ("…/zoneinfo/Europe/Berlin"); an image tree's link
        # ("../usr/share/zoneinfo/…") names it even when that tree has no zoneinfo of its own.
        for parts in (target.parts if target else (), Path(link).parts if link else ()):
            if "zoneinfo" in parts:
                iana = "/".join(parts[parts.index("zoneinfo") + 1 :])
                try:
                    return zoneinfo.ZoneInfo(iana)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    pass
        if target is None:
            raise ValueError(f"{localtime} links to {link!r}, which does not resolve")
        with target.open("rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _cron_problem(expr: str, tz: str | None, hash_id: str | None) -> str | None:
    # Imported lazily: croniter is only needed when a cron expression is configured.
    from zincati_py.schedule import CronError, translate

    try:
        translate(expr, tz=tz, hash_id=hash_id)
    except CronError as exc:
        return str(exc)
    return None


class _Validator:
    def __init__(self, raw: RawConfig, machine_id: Path, localtime: Path) -> None:
        self.raw = raw
        self.machine_id = machine_id
        self.localtime = localtime
        self.problems: list[Problem] = []

    def report(self, severity: Severity, file: Path | None, key: str, message: str) -> None:
        self.problems.append(Problem(severity, file, key, message))

    def value(
        self,
        key: str,
        default: Any,
        check: Callable[[Any], str | None] | None = None,
        severity: Severity = "error",
    ) -> Any:
        """The configured value, or ``default`` (reported) if ``check`` returns a message."""
        item = self.raw.scalars.get(key)
        if item is None:
            return default
        if check is not None:
            message = check(item.value)
            if message is not None:
                self.report(severity, item.file, key, f"{message}; using the default")
                return default
        return item.value

    def build(self) -> Settings:
        strategy = self.strategy()
        identity = self.identity(fleet_lock="fleet_lock" in strategy)
        agent = AgentSettings(
            timing=TimingSettings(
                steady_interval_secs=self.value(
                    "agent.timing.steady_interval_secs", 300, _at_least(1)
                ),
                check_cron=self.value(
                    "agent.timing.check_cron",
                    None,
                    lambda v: _cron_problem(v, None, identity.node_uuid),
                ),
            ),
            reboot=RebootSettings(
                max_postpone_secs=self.value("agent.reboot.max_postpone_secs", 600, _at_least(0)),
                warn_interactive=self.value("agent.reboot.warn_interactive", True),
            ),
            metrics=MetricsSettings(listen=self.value("agent.metrics.listen", None, _host_port)),
        )
        updates = UpdatesSettings(
            enabled=self.value("updates.enabled", True),
            allow_downgrade=self.value("updates.allow_downgrade", False),
            strategy=strategy,
            fleet_lock=self.fleet_lock(used="fleet_lock" in strategy),
            periodic=self.periodic(used="periodic" in strategy, hash_id=identity.node_uuid),
            file=self.file_gate(used="file" in strategy),
        )
        return Settings(
            agent=agent,
            identity=identity,
            cincinnati_base_url=self.value("cincinnati.base_url", None),
            updates=updates,
            schedules=self.schedules(identity.node_uuid),
        )

    def strategy(self) -> tuple[str, ...]:
        item = self.raw.scalars.get("updates.strategy")
        if item is None:
            return ("immediate",)
        names = [item.value] if isinstance(item.value, str) else list(item.value)
        if isinstance(item.value, list) and not names:
            self.report("error", item.file, "updates.strategy", "empty array; using immediate")
            return ("immediate",)
        out: list[str] = []
        for name in names:
            if not isinstance(name, str):
                self.report(
                    "error",
                    item.file,
                    "updates.strategy",
                    f"entries must be strings, got {name!r}; using immediate",
                )
                return ("immediate",)
            name = name or "immediate"  # Zincati: an empty strategy means immediate
            if name not in STRATEGIES:
                self.report(
                    "error",
                    item.file,
                    "updates.strategy",
                    f"unknown strategy {name!r} (expected one of "
                    f"{', '.join(STRATEGIES)}); using immediate",
                )
                return ("immediate",)
            if name in out:
                self.report("warning", item.file, "updates.strategy", f"{name!r} listed twice")
                continue
            out.append(name)
        if len(out) > 1 and "immediate" in out:
            out.remove("immediate")  # immediate always allows: it adds nothing to a composition
        return tuple(out)

    def identity(self, *, fleet_lock: bool) -> IdentitySettings:
        # Zincati treats an empty group or node_uuid as unset (default group, derived id).
        for key in ("identity.group", "identity.node_uuid"):
            item = self.raw.scalars.get(key)
            if item is not None and item.value == "":
                del self.raw.scalars[key]
        group = self.value(
            "identity.group",
            "default",
            lambda v: None if GROUP_RE.fullmatch(v) else f"{v!r} must match {GROUP_RE.pattern}",
        )
        wariness = self.value(
            "identity.rollout_wariness",
            None,
            lambda v: None if 0.0 <= v <= 1.0 else f"{v} is outside 0.0..1.0",
        )
        node_uuid = self.value("identity.node_uuid", None, _uuid_problem)
        if node_uuid is not None:
            node_uuid = uuid.UUID(node_uuid).hex
        else:
            node_uuid = self.derived_node_uuid(fleet_lock)
        return IdentitySettings(
            group=group,
            node_uuid=node_uuid,
            rollout_wariness=None if wariness is None else float(wariness),
        )

    def derived_node_uuid(self, needed: bool) -> str | None:
        try:
            machine_id = self.machine_id.read_text().strip()
            if not re.fullmatch(r"[0-9a-fA-F]{32}", machine_id):
                raise ValueError(machine_id)
            return app_specific_id(machine_id)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or "not 32 hex digits"
            self.report(
                "error" if needed else "warning",
                self.machine_id,
                "identity.node_uuid",
                f"not configured and cannot be derived from {self.machine_id}: {reason}",
            )
            return None

    def fleet_lock(self, *, used: bool) -> FleetLockSettings:
        severity: Severity = "error" if used else "warning"
        url = self.value("updates.fleet_lock.base_url", None, _url_problem, severity)
        if used and url is None and "updates.fleet_lock.base_url" not in self.raw.scalars:
            self.report(
                "error",
                self.raw.source("updates.strategy"),
                "updates.fleet_lock.base_url",
                "required by strategy fleet_lock",
            )
        return FleetLockSettings(base_url=url)

    def file_gate(self, *, used: bool) -> FileGateSettings:
        severity: Severity = "error" if used else "warning"
        path = self.value(
            "updates.file.path",
            None,
            lambda v: None if v.startswith("/") else f"{v!r} must be an absolute path",
            severity,
        )
        if used and path is None and "updates.file.path" not in self.raw.scalars:
            self.report(
                "error",
                self.raw.source("updates.strategy"),
                "updates.file.path",
                "required by strategy file",
            )
        max_age = self.value("updates.file.max_age_secs", None, _at_least(1), severity)
        return FileGateSettings(path=path, max_age_secs=max_age)

    def periodic(self, *, used: bool, hash_id: str | None) -> PeriodicSettings:
        severity: Severity = "error" if used else "warning"
        tz = self.value("updates.periodic.time_zone", "UTC", self._tz_problem, severity)
        windows = [
            w
            for w in (self.window(e, severity, tz, hash_id) for e in self.raw.windows)
            if w is not None
        ]
        if used and not windows:
            self.report(
                "error",
                self.raw.source("updates.strategy"),
                "updates.periodic.window",
                "strategy periodic needs at least one valid [[updates.periodic.window]]",
            )
        return PeriodicSettings(time_zone=tz, windows=tuple(windows))

    def _tz_problem(self, name: str) -> str | None:
        try:
            resolve_time_zone(name, self.localtime)
        except (ValueError, OSError) as exc:
            return str(exc)
        return None

    def window(
        self, entry: Entry, severity: Severity, tz: str, hash_id: str | None
    ) -> WindowSettings | None:
        """One window entry, or None; every problem of the entry is reported, not just one."""
        array = "updates.periodic.window"
        v = entry.values
        before = len(self.problems)

        def bad(name: str | None, message: str) -> None:
            self.report(severity, entry.file, entry.key(array, name), f"{message}; window ignored")

        length = v["length_minutes"].value if "length_minutes" in v else None
        if length is None:
            bad("length_minutes", "missing")
        elif not 1 <= length <= MAX_WINDOW_MINUTES:
            bad("length_minutes", f"{length} is outside 1..{MAX_WINDOW_MINUTES}")
        cron: str | None = None
        days: list[int] = []
        start: time | None = None
        if "cron" in v:
            cron = v["cron"].value
            if "days" in v or "start_time" in v:
                bad(None, "give either cron or days + start_time, not both")
            else:
                zone = None if tz == "localtime" else tz
                message = _cron_problem(v["cron"].value, zone, hash_id)
                if message is not None:
                    bad("cron", message)
        elif "days" not in v or "start_time" not in v:
            bad(None, "needs days + start_time (or cron)")
        else:
            for name in v["days"].value:
                day = parse_weekday(name) if isinstance(name, str) else None
                if day is None:
                    bad("days", f"{name!r} is not a weekday name")
                elif day not in days:
                    days.append(day)
            if not v["days"].value:
                bad("days", "empty")
            start = _parse_hhmm(v["start_time"].value)
            if start is None:
                bad("start_time", f"{v['start_time'].value!r} is not HH:MM (00:00..23:59)")
        if len(self.problems) > before or length is None:
            return None
        return WindowSettings(
            length, days=tuple(sorted(days)), start_time=start, cron=cron, source=entry.file
        )

    def schedules(self, hash_id: str | None) -> tuple[ScheduleSettings, ...]:
        out: list[ScheduleSettings] = []
        for name, entry in self.raw.schedules.items():
            v = entry.values

            # Errors name the fragment that last touched the job (it may span several files).
            def bad(key: str, message: str, file: Path = entry.file, job: str = name) -> None:
                self.report("error", file, f"schedule[{job}].{key}", f"{message}; job ignored")

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
            tz = v["time_zone"].value if "time_zone" in v else None
            if tz == "localtime":
                tz = None  # systemd's OnCalendar= without a zone suffix is the local zone
            if tz is not None and self._tz_problem(tz) is not None:
                bad("time_zone", f"unknown time zone {tz!r}", v["time_zone"].file)
                continue
            message = _cron_problem(v["cron"].value, tz, hash_id)
            if message is not None:
                bad("cron", message, v["cron"].file)
                continue
            delay = v["randomized_delay_secs"].value if "randomized_delay_secs" in v else 0
            if delay < 0:
                bad(
                    "randomized_delay_secs", f"{delay} is negative", v["randomized_delay_secs"].file
                )
                continue
            timeout = v["timeout_secs"].value if "timeout_secs" in v else None
            if timeout is not None and timeout < 1:
                bad("timeout_secs", f"{timeout} must be >= 1", v["timeout_secs"].file)
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


def _at_least(minimum: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= minimum else f"{v} must be >= {minimum}"


def _uuid_problem(value: str) -> str | None:
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", text) or re.fullmatch(
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", text
    ):
        return None
    return f"{value!r} is not 32 hex digits or a hyphenated UUID"


def _url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if not value or not parts.scheme or not parts.netloc:
        return f"{value!r} must be a non-empty absolute URL (scheme://host/...)"
    if parts.scheme not in ("http", "https"):
        return f"{value!r}: scheme must be http or https"
    return None


def _host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} must be HOST:PORT"
    return None


def _parse_hhmm(text: str) -> time | None:
    match = re.fullmatch(r"(\d{1,2}):(\d{1,2})", text.strip())
    if not match:
        return None
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)


def validate(
    raw: RawConfig, *, machine_id: Path, localtime: Path
) -> tuple[Settings, list[Problem]]:
    validator = _Validator(raw, machine_id, localtime)
    config = validator.build()
    return config, validator.problems
