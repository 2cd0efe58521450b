"""The dbus-fast systemd adapter against a real systemd --user manager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from testbed.systemd import UserManager
from zincati_py.dbus import systemd


def test_unit_object_path_matches_systemd(user_manager: UserManager) -> None:
    for name in ("zincati-py-schedule-a_b.service", "foo@x.y.timer", "dbus.socket"):
        got = user_manager.systemctl(
            "show", "-P", "Id", name
        )  # loads it, so GetUnit below is answered
        assert got
        from pystemd.dbuslib import DBusAddress

        with DBusAddress(user_manager.bus_address.encode()) as bus:
            reply = bus.call_method(
                b"org.freedesktop.systemd1",
                b"/org/freedesktop/systemd1",
                b"org.freedesktop.systemd1.Manager",
                b"LoadUnit",
                [(ord("s"), name.encode())],
            )
        assert reply.body.decode() == systemd.unit_object_path(name)


def test_reload_start_and_states(user_manager: UserManager) -> None:
    async def scenario() -> None:
        bus = await systemd.connect(address=user_manager.bus_address)
        try:
            before = await systemd.unit_state(bus, "job.service")
            assert before.load_state == "not-found" and not before.exists
            (user_manager.unit_dir / "job.service").write_text(
                "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n"
            )
            (user_manager.unit_dir / "job.timer").write_text(
                "[Timer]\nOnCalendar=*-*-* 04:00:00 UTC\nOnUnitActiveSec=1h\n"
            )
            # Reload returns only when the manager has re-read its units.
            await systemd.reload_manager(bus)
            state = await systemd.unit_state(bus, "job.service")
            assert state.exists and state.active_state == "inactive" and not state.busy

            started_at = datetime.now(UTC)
            job = await systemd.start_unit(bus, "job.service")
            assert job.startswith("/org/freedesktop/systemd1/job/")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                state = await systemd.unit_state(bus, "job.service")
                if state.active_state == "activating":
                    break
                await asyncio.sleep(0.05)
            assert state.busy
            assert state.busy_since is not None
            assert abs(state.busy_since - started_at) < timedelta(seconds=5)

            timer = await systemd.timer_state(bus, "job.timer")
            assert timer.next_elapse is None  # not started: nothing scheduled
            await systemd.start_unit(bus, "job.timer")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and timer.next_elapse is None:
                timer = await systemd.timer_state(bus, "job.timer")
                await asyncio.sleep(0.05)
            assert timer.triggers == "job.service"
            assert timer.next_elapse is not None and timer.next_elapse > datetime.now(UTC)
            assert await systemd.list_unit_names(bus, ["job.*"]) == ["job.service", "job.timer"]

            with pytest.raises(systemd.SystemdError) as err:
                await systemd.start_unit(bus, "no-such-unit.service")
            assert "NoSuchUnit" in err.value.name
            assert not isinstance(err.value, systemd.SystemdUnavailable)
        finally:
            bus.disconnect()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_unreachable_bus_is_unavailable(tmp_path: object) -> None:
    async def scenario() -> None:
        with pytest.raises(systemd.SystemdUnavailable):
            await systemd.connect(address=f"unix:path={tmp_path}/nothing-here")

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_timestamps() -> None:
    assert systemd.usec_to_datetime(0) is None
    assert systemd.usec_to_datetime(2**64 - 1) is None
    assert systemd.usec_to_datetime(1_700_000_000_000_000) == datetime.fromtimestamp(
        1_700_000_000, tz=UTC
    )
    soon = systemd.monotonic_usec_to_datetime(
        int((time.clock_gettime(time.CLOCK_MONOTONIC) + 60) * 1_000_000)
    )
    assert soon is not None
    assert abs(soon - (datetime.now(UTC) + timedelta(seconds=60))) < timedelta(seconds=1)


def test_reload_manager_applies_generated_timers(
    user_manager_factory: Callable[..., UserManager], config_root: Path
) -> None:
    """What the agent relies on after a config change: new timers run, removed ones are gone."""
    (config_root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    fragment = config_root / "etc" / "zincati" / "config.d" / "70-schedule-a.toml"
    fragment.write_text('[[schedule]]\nname = "a"\ncron = "0 4 * * *"\ncommand = "true"\n')
    manager = user_manager_factory(config_root)
    timer = "zincati-py-schedule-a.timer"

    async def active_state(bus: Any, name: str) -> str:
        return (await systemd.unit_state(bus, name)).active_state

    async def scenario() -> None:
        bus = await systemd.connect(address=manager.bus_address)
        try:
            assert await active_state(bus, timer) == "active"
            fragment.unlink()
            await systemd.reload_manager(bus)
            state = await systemd.unit_state(bus, timer)
            assert not state.exists and state.active_state == "inactive"  # stopped, not failed
            fragment.write_text('[[schedule]]\nname = "a"\ncron = "0 5 * * *"\ncommand = "x"\n')
            # Without apply, the reload loads the timer but nothing starts it.
            await systemd.reload_manager(bus, apply=False)
            assert await active_state(bus, timer) == "inactive"
            await systemd.reload_manager(bus)
            assert await active_state(bus, timer) == "active"
        finally:
            bus.disconnect()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_apply_steps() -> None:
    def row(name: str, load: str, active: str) -> tuple[str, ...]:
        return (name, "", load, active, "", "", "/", 0, "", "/")

    rows = [
        row("zincati-py-window-1.timer", "loaded", "active"),  # unchanged: nothing
        row("zincati-py-schedule-new.timer", "loaded", "inactive"),  # new: start
        row("zincati-py-schedule-old.timer", "not-found", "active"),  # removed, running
        row("zincati-py-schedule-gone.timer", "not-found", "failed"),  # removed, failed
        row("zincati-py-schedule-again.timer", "loaded", "failed"),  # failed before: start
    ]
    assert systemd.apply_steps(rows) == [
        ("start", "zincati-py-schedule-again.timer"),
        ("reset-failed", "zincati-py-schedule-gone.timer"),
        ("start", "zincati-py-schedule-new.timer"),
        ("stop", "zincati-py-schedule-old.timer"),
        ("reset-failed", "zincati-py-schedule-old.timer"),
    ]
