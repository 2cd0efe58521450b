"""Configuration: Zincati-compatible TOML fragments, merged and validated.

``load(root)`` is the one entry point shared by the generator, the CLI and the agent::

    result = load()            # or load("/path/to/image/root")
    result.config              # validated Settings, defaults filled in (invalid keys → defaults)
    result.problems            # every error and warning, each naming file and key
    result.ok                  # no errors (warnings allowed)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zincati_py.config.checks import resolve_time_zone
from zincati_py.config.fragments import discover, merge
from zincati_py.config.model import (
    AgentSettings,
    FileGateSettings,
    FleetLockSettings,
    IdentitySettings,
    PeriodicSettings,
    RebootSettings,
    ScheduleSettings,
    Settings,
    TimingSettings,
    UpdatesSettings,
    WindowSettings,
)
from zincati_py.config.problems import Problem
from zincati_py.config.validate import validate
from zincati_py.paths import Paths

__all__ = [
    "AgentSettings",
    "FileGateSettings",
    "FleetLockSettings",
    "IdentitySettings",
    "LoadResult",
    "PeriodicSettings",
    "Problem",
    "RebootSettings",
    "ScheduleSettings",
    "Settings",
    "TimingSettings",
    "UpdatesSettings",
    "WindowSettings",
    "load",
    "resolve_time_zone",
]


@dataclass(frozen=True)
class LoadResult:
    config: Settings
    problems: tuple[Problem, ...]
    fragments: tuple[Path, ...]
    paths: Paths

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors


def load(root: str | os.PathLike[str] | Paths | None = None) -> LoadResult:
    paths = root if isinstance(root, Paths) else Paths.from_root(root)
    files, problems = discover(paths.config_dirs)
    raw, found = merge(files)
    config, invalid = validate(raw, machine_id=paths.machine_id, localtime=paths.localtime)
    return LoadResult(
        config=config,
        problems=tuple(problems + found + invalid),
        fragments=tuple(raw.fragments),
        paths=paths,
    )
