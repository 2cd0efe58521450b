"""The ``periodic`` strategy's verdicts and status, built from a real config tree."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from zincati_py.config import load
from zincati_py.strategy import StrategyContext, build
from zincati_py.strategy.periodic import Periodic

CONFIG = """
[updates]
strategy = "periodic"
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Sat"]
start_time = "22:30"
length_minutes = 60
"""


def strategy(root: Path, text: str = CONFIG) -> Periodic:
    (root / "etc/zincati/config.d/50-p.toml").write_text(text)
    result = load(root)
    built = build(StrategyContext(result.config, result.paths, wake=lambda reason: None))
    assert isinstance(built, Periodic)
    return built


def test_outside_waits_for_next_start(config_root: Path) -> None:
    s = strategy(config_root)
    assert s.status()["reason"] == "not asked yet"
    verdict = asyncio.run(s.can_finalize(datetime(2026, 11, 28, 12, 0, tzinfo=UTC)))
    assert not verdict.allowed
    assert verdict.recheck_at == datetime(2026, 11, 28, 21, 30, tzinfo=UTC)
    assert verdict.reason == (
        "outside maintenance windows; next opens at 2026-11-28T22:30:00+01:00"
    )
    status = s.status()
    assert status["allowed"] is False
    assert status["minutes_to_next_window"] == 9 * 60 + 30
    assert status["recheck_at"] == "2026-11-28T21:30:00+00:00"


def test_inside_rechecks_at_close(config_root: Path) -> None:
    s = strategy(config_root)
    verdict = asyncio.run(s.can_finalize(datetime(2026, 11, 28, 21, 45, tzinfo=UTC)))
    assert verdict.allowed
    assert verdict.recheck_at == datetime(2026, 11, 28, 22, 30, tzinfo=UTC)
    assert "until 2026-11-28T23:30:00+01:00" in verdict.reason
    assert s.status()["in_window"] is True


def test_without_windows_never_allows(config_root: Path) -> None:
    s = strategy(config_root, '[updates]\nstrategy = "periodic"\n')
    verdict = asyncio.run(s.can_finalize(datetime(2026, 11, 28, 21, 45, tzinfo=UTC)))
    assert (verdict.allowed, verdict.recheck_at) == (False, None)
    assert verdict.reason == "no valid maintenance window is configured"
