"""Composition: local gates first, the remote lock only when they all allow (real server)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from zincati_py.config import load
from zincati_py.fleetlock.client import FleetLockAdminClient, FleetLockClient
from zincati_py.strategy import StrategyContext
from zincati_py.strategy.composite import Composite
from zincati_py.strategy.fleet_lock import FleetLock

OTHER = "fedcba9876543210fedcba9876543210"
WINDOW = """
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Sat"]
start_time = "22:30"
length_minutes = 60
"""
BEFORE = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
INSIDE = datetime(2026, 11, 28, 21, 45, tzinfo=UTC)
AFTER = datetime(2026, 11, 28, 22, 30, tzinfo=UTC)


async def holders(url: str, group: str = "default") -> list[str]:
    admin = FleetLockAdminClient(url)
    try:
        return [h["id"] for h in (await admin.group(group))["holders"]]
    finally:
        await admin.close()


def test_no_lock_request_outside_window(node: Any, lock_server: Callable[..., Any]) -> None:
    server = lock_server("")
    # Listed remote-first on purpose: the composite still asks the window first.
    node.fleet_lock(server.url, strategy=["fleet_lock", "periodic"])
    node.write(WINDOW, "60-window.toml")

    async def scenario() -> None:
        s = node.build()
        assert isinstance(s, Composite)
        assert [c.name for c in s.strategies] == ["periodic", "fleet_lock"]
        await s.start()
        try:
            outside = await s.can_finalize(BEFORE)
            assert not outside.allowed
            assert outside.reason.startswith("periodic: outside maintenance windows")
            assert outside.recheck_at == datetime(2026, 11, 28, 21, 30, tzinfo=UTC)
            assert outside.details == {"denied_by": "periodic", "not_asked": ["fleet_lock"]}
            assert server.requests("pre-reboot") == 0
            assert await holders(server.url) == []

            inside = await s.can_finalize(INSIDE)
            assert inside.allowed, inside.reason
            assert inside.recheck_at == AFTER  # the window's end; the lock has no deadline
            assert server.requests("pre-reboot") == 1
            assert await holders(server.url) == [node.node_id]

            status = s.status()
            assert status["order"] == ["periodic", "fleet_lock"]
            assert [c["allowed"] for c in status["strategies"]] == [True, True]
            assert status["strategies"][1]["holds_slot"] is True

            closed = await s.can_finalize(AFTER)  # the window closed before the reboot
            assert not closed.allowed and server.requests("pre-reboot") == 1
            await s.abort()  # the agent won't reboot: the slot goes back to the fleet
            assert await holders(server.url) == []
            assert s.status()["strategies"][1]["holds_slot"] is False
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_later_denial_aborts_earlier_grants(node: Any, lock_server: Callable[..., Any]) -> None:
    server = lock_server("[groups]\na = 1\nb = 1\n")
    node.fleet_lock(server.url, group="a")

    async def scenario() -> None:
        result = load(node.root)
        ctx_a = StrategyContext(result.config, result.paths, node.wakes.append)
        config_b = dataclasses.replace(
            result.config, identity=dataclasses.replace(result.config.identity, group="b")
        )
        ctx_b = StrategyContext(config_b, result.paths, node.wakes.append)
        other = FleetLockClient(server.url, OTHER, "b")
        s = Composite(ctx_a, [FleetLock(ctx_a), FleetLock(ctx_b)])
        try:
            await other.pre_reboot()  # group b is full
            verdict = await s.can_finalize(BEFORE)
            assert not verdict.allowed and "full" in verdict.reason
            assert verdict.details["denied_by"] == "fleet_lock"
            assert verdict.recheck_at is not None and verdict.recheck_at > BEFORE
            assert server.requests("pre-reboot") == 3  # other, a (granted), b (full)
            # The slot in group a was taken and given back.
            assert await holders(server.url, "a") == []
            assert server.requests("steady-state") == 1
        finally:
            await other.close()
            await s.stop()

    asyncio.run(scenario())


def test_recheck_is_the_earliest(node: Any) -> None:
    # A window around the real now, and a marker that expires before the window closes.
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    day = start.strftime("%a")
    node.write(
        f'[updates]\nstrategy = ["file", "periodic"]\n[updates.file]\npath = "/run/ok"\n'
        f'max_age_secs = 600\n[[updates.periodic.window]]\ndays = ["{day}"]\n'
        f'start_time = "{start:%H:%M}"\nlength_minutes = 180\n'
    )
    marker = node.root / "run/ok"

    async def scenario() -> None:
        s = node.build()
        assert isinstance(s, Composite)
        assert [c.name for c in s.strategies] == ["file", "periodic"]  # both local: as listed
        absent = await s.can_finalize(datetime.now(UTC))
        assert not absent.allowed and absent.recheck_at is None
        assert absent.details["not_asked"] == ["periodic"]
        marker.touch()
        now = datetime.now(UTC)
        verdict = await s.can_finalize(now)
        assert verdict.allowed, verdict.reason
        expiry = datetime.fromtimestamp(marker.stat().st_mtime, UTC) + timedelta(seconds=600)
        assert verdict.recheck_at == expiry  # before the window's end, 2 h away
        assert "file: marker file" in verdict.reason and "periodic: inside" in verdict.reason

    asyncio.run(scenario())


def test_report_steady_needs_every_part(node: Any, lock_server: Callable[..., Any]) -> None:
    server = lock_server("")
    node.fleet_lock(server.url, strategy=["periodic", "fleet_lock"])
    node.write(WINDOW, "60-window.toml")

    async def scenario() -> None:
        s = node.build()
        try:
            server.stop()
            pending = await s.report_steady()
            assert not pending.allowed and pending.recheck_at is not None
            assert pending.reason.startswith("fleet_lock: steady-state failed")
            server.start()
            done = await s.report_steady()
            assert done.allowed, done.reason
            assert server.requests("steady-state") == 1
        finally:
            await s.stop()

    asyncio.run(scenario())
