"""The merged raw tree → validated ``Settings``: every key checked, each problem named.

An invalid key falls back to its default and is reported with the file that set it; settings
that no configured strategy uses are checked too, with warnings instead of errors (Zincati
ignores windows unless the strategy is periodic). ``[[schedule]]`` jobs are checked by
``jobs.validate_jobs``.

Validation reads no file but the fragments, ``etc/machine-id``, ``etc/localtime`` and the time
zone database: the generator replays its last run when those are unchanged
(``zincati_py.generator_cache``), so a check that reads anything else must add it to that
fingerprint too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import Any

from zincati_py.config.checks import (
    app_specific_id,
    cron_order_warning,
    cron_problem,
    host_port_problem,
    parse_hhmm,
    parse_weekday,
    seconds,
    tz_problem,
    url_problem,
    uuid_problem,
)
from zincati_py.config.jobs import ScheduleSettings, validate_jobs
from zincati_py.config.model import (
    GROUP_RE,
    MAX_WINDOW_MINUTES,
    STRATEGIES,
    AgentSettings,
    FileGateSettings,
    FleetLockSettings,
    HealthSettings,
    HooksSettings,
    IdentitySettings,
    MetricsSettings,
    PeriodicSettings,
    RebootSettings,
    Settings,
    TimingSettings,
    UpdatesSettings,
    WindowSettings,
)
from zincati_py.config.problems import Problem, Severity
from zincati_py.config.raw import Entry, RawConfig


def seconds_between(low: int, high: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"{value} is outside {low}..{high}"

    return check


# What an invalid strategy means for reboots (see ConfigReloader in agent/reload.py).
NO_REBOOT = "; the agent never reboots under an invalid configuration"


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
                    "agent.timing.steady_interval_secs", 300, seconds(1)
                ),
                check_cron=self.value(
                    "agent.timing.check_cron",
                    None,
                    lambda v: cron_problem(v, None, identity.node_uuid),
                ),
            ),
            reboot=RebootSettings(
                max_postpone_secs=self.value("agent.reboot.max_postpone_secs", 600, seconds(0)),
                warn_interactive=self.value("agent.reboot.warn_interactive", True),
            ),
            metrics=MetricsSettings(
                listen=self.value("agent.metrics.listen", None, host_port_problem)
            ),
            health=self.health(),
            hooks=self.hooks(),
        )
        if agent.timing.check_cron is not None:
            self.cron_order("agent.timing.check_cron")
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

    def strings(self, key: str, check: Callable[[str], str | None]) -> tuple[str, ...]:
        """An array of strings, each entry ``check``ed; a bad entry is reported and dropped."""
        item = self.raw.scalars.get(key)
        if item is None:
            return ()
        out: list[str] = []
        for index, entry in enumerate(item.value):
            message = check(entry) if isinstance(entry, str) else f"{entry!r} is not a string"
            if message is not None:
                self.report("error", item.file, f"{key}[{index}]", f"{message}; entry ignored")
            elif entry not in out:
                out.append(entry)
        return tuple(out)

    def health(self) -> HealthSettings:
        from zincati_py.health import spec

        return HealthSettings(
            pre_reboot=self.strings("agent.health.pre_reboot", spec.check_problem),
            required_units=self.strings("agent.health.required_units", spec.unit_problem),
            timeout_secs=self.value(
                "agent.health.timeout_secs", 300, seconds_between(1, spec.MAX_TIMEOUT_SECS)
            ),
            rollback=self.value("agent.health.rollback", True),
        )

    def hooks(self) -> HooksSettings:
        from zincati_py.health import spec

        def command(text: str) -> str | None:
            problem = spec.check_problem(text)
            if problem is None and spec.is_unit_name(text):
                return f"{text!r} is a unit name; hooks are commands (an absolute program path)"
            return problem

        def event(text: str) -> str | None:
            if text in spec.EVENTS:
                return None
            return f"unknown event {text!r} (expected one of {', '.join(spec.EVENTS)})"

        return HooksSettings(
            commands=self.strings("agent.hooks.commands", command),
            events=self.strings("agent.hooks.events", event),
            timeout_secs=self.value(
                "agent.hooks.timeout_secs", 60, seconds_between(1, spec.MAX_TIMEOUT_SECS)
            ),
        )

    def cron_order(self, key: str) -> None:
        item = self.raw.scalars[key]
        warning = cron_order_warning(item.value)
        if warning is not None:
            self.report("warning", item.file, key, warning)

    def strategy(self) -> tuple[str, ...]:
        # An invalid strategy leaves "immediate" in the Settings (the generator still renders
        # the update check), but the agent never applies an invalid configuration: the message
        # says so rather than "using immediate".
        item = self.raw.scalars.get("updates.strategy")
        if item is None:
            return ("immediate",)
        names = [item.value] if isinstance(item.value, str) else list(item.value)
        if isinstance(item.value, list) and not names:
            self.report("error", item.file, "updates.strategy", f"empty array{NO_REBOOT}")
            return ("immediate",)
        out: list[str] = []
        for name in names:
            if not isinstance(name, str):
                self.report(
                    "error",
                    item.file,
                    "updates.strategy",
                    f"entries must be strings, got {name!r}{NO_REBOOT}",
                )
                return ("immediate",)
            name = name or "immediate"  # Zincati: an empty strategy means immediate
            if name not in STRATEGIES:
                self.report(
                    "error",
                    item.file,
                    "updates.strategy",
                    f"unknown strategy {name!r} (expected one of "
                    f"{', '.join(STRATEGIES)}){NO_REBOOT}",
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
        node_uuid = self.value("identity.node_uuid", None, uuid_problem)
        if node_uuid is not None:
            # uuid.UUID(...).hex for the two forms uuid_problem accepts (uuid imports platform).
            node_uuid = node_uuid.strip().replace("-", "").lower()
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
        url = self.value("updates.fleet_lock.base_url", None, url_problem, severity)
        if used and url is None and "updates.fleet_lock.base_url" not in self.raw.scalars:
            self.report(
                "error",
                self.raw.source("updates.strategy"),
                "updates.fleet_lock.base_url",
                "required by strategy fleet_lock",
            )
        token_file = self.value(
            "updates.fleet_lock.token_file",
            None,
            lambda v: None if v.startswith("/") else f"{v!r} must be an absolute path",
            severity,
        )
        credential = self.value(
            "updates.fleet_lock.token_credential",
            None,
            lambda v: (
                None
                if v and "/" not in v and v not in (".", "..")
                else f"{v!r} must be a credential name (a plain file name)"
            ),
            severity,
        )
        if token_file is not None and credential is not None:
            self.report(
                severity,
                self.raw.source("updates.fleet_lock.token_credential"),
                "updates.fleet_lock.token_credential",
                "set token_file or token_credential, not both; using token_file",
            )
            credential = None
        return FleetLockSettings(base_url=url, token_file=token_file, token_credential=credential)

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
        max_age = self.value("updates.file.max_age_secs", None, seconds(1), severity)
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
        return tz_problem(name, self.localtime)

    def schedules(self, hash_id: str | None) -> tuple[ScheduleSettings, ...]:
        return validate_jobs(
            self.raw.schedules,
            hash_id,
            self.report,
            self._tz_problem,
            fleet_lock_url=self.raw.get("updates.fleet_lock.base_url"),
            fleet_lock_token=(
                self.raw.get("updates.fleet_lock.token_file"),
                self.raw.get("updates.fleet_lock.token_credential"),
            ),
        )

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
                message = cron_problem(v["cron"].value, zone, hash_id)
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
            start = parse_hhmm(v["start_time"].value)
            if start is None:
                bad("start_time", f"{v['start_time'].value!r} is not HH:MM (00:00..23:59)")
        if len(self.problems) > before or length is None:
            return None
        if cron is not None and (warning := cron_order_warning(cron)) is not None:
            self.report("warning", v["cron"].file, entry.key(array, "cron"), warning)
        return WindowSettings(
            length, days=tuple(sorted(days)), start_time=start, cron=cron, source=entry.file
        )


def validate(
    raw: RawConfig, *, machine_id: Path, localtime: Path
) -> tuple[Settings, list[Problem]]:
    validator = _Validator(raw, machine_id, localtime)
    config = validator.build()
    return config, validator.problems
