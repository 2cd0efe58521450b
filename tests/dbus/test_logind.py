"""The logind adapter against python-dbusmock's logind (extended template) on a private bus."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from dbus_fast.aio import MessageBus

from testbed.bus import PrivateBus
from testbed.logind import (
    LogindDouble,
    add_session,
    inhibit,
    recorded_calls,
    remove_session,
    set_can_reboot,
)
from testbed.rpmostree import RpmOstreeDouble
from zincati_py.dbus.logind import Logind, LogindError
from zincati_py.dbus.rpmostree import RpmOstree

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connected(address: str) -> tuple[MessageBus, Logind]:
    # negotiate_unix_fd: the same connection takes inhibitor fds in the tests
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    logind = Logind(call_timeout=10)
    await logind.connect(bus)
    return bus, logind


def test_can_reboot(logind_double: LogindDouble) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        assert await logind.can_reboot() == "yes"
        await logind.close()
        bus.disconnect()

    run(body())


def test_can_reboot_answers_the_parameter(logind_factory: Callable[..., LogindDouble]) -> None:
    double = logind_factory(CanReboot="challenge")

    async def body() -> None:
        bus, logind = await connected(double.bus_address)
        assert await logind.can_reboot() == "challenge"
        await logind.close()
        bus.disconnect()

    run(body())


def test_can_reboot_is_challenge_while_another_users_block_inhibitor_is_held(
    logind_double: LogindDouble,
) -> None:
    """As real logind: a ``shutdown`` block inhibitor of another user makes CanReboot answer
    polkit's verdict on reboot-ignore-inhibit ("challenge" for a caller not granted it); the
    caller's own inhibitors, delay inhibitors and other kinds do not count."""

    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        own = await inhibit(bus, "shutdown", "mine", "same user")
        delay = await inhibit(bus, "shutdown", "flush", "saving", mode="delay", uid=1000)
        sleep = await inhibit(bus, "sleep", "player", "playing", uid=1000)
        assert await logind.can_reboot() == "yes"
        other = await inhibit(bus, "shutdown:sleep", "backup", "nightly", uid=1000)
        assert await logind.can_reboot() == "challenge"
        assert [(i.who, i.uid) for i in await logind.block_inhibitors()] == [
            ("mine", os.getuid()),
            ("backup", 1000),
        ]
        await set_can_reboot(bus, "yes", "no")
        assert await logind.can_reboot() == "no"
        await set_can_reboot(bus, "yes", "yes")  # a caller allowed to ignore inhibitors
        assert await logind.can_reboot() == "yes"
        await set_can_reboot(bus, "na", "challenge")
        assert await logind.can_reboot() == "na"
        await set_can_reboot(bus, "yes", "challenge")
        os.close(other)
        assert await logind.wait_block_released(5) is False  # our own one is still held
        assert await logind.can_reboot() == "yes"
        for fd in (own, delay, sleep):
            os.close(fd)
        assert await logind.wait_block_released(5) is True
        await logind.close()
        bus.disconnect()

    run(body())


def test_can_reboot_parameters(logind_factory: Callable[..., LogindDouble]) -> None:
    double = logind_factory(RebootIgnoreInhibit="no")

    async def body() -> None:
        bus, logind = await connected(double.bus_address)
        assert await logind.can_reboot() == "yes"
        fd = await inhibit(bus, "shutdown", "backup", "nightly", uid=4242)
        assert await logind.can_reboot() == "no"
        os.close(fd)
        await logind.close()
        bus.disconnect()

    run(body())


def test_interactive_sessions(logind_double: LogindDouble) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        assert await logind.interactive_sessions() == []
        await add_session(bus, "1", tty="tty1", type="tty")
        await add_session(bus, "2", uid=1001, user="admin", tty="pts/0", remote=True,
                          remote_host="10.0.0.7")  # fmt: skip
        await add_session(bus, "3", uid=1002, user="desk", type="wayland")
        await add_session(bus, "4", uid=0, user="root", type="unspecified",
                          session_class="background")  # fmt: skip
        await add_session(bus, "5", uid=990, user="gdm", type="x11", session_class="greeter")
        await add_session(bus, "6", uid=1003, user="cron", type="unspecified")
        sessions = await logind.interactive_sessions()
        assert [s.id for s in sessions] == ["1", "2", "3"]
        local, ssh, desktop = sessions
        assert (local.tty, local.remote, local.user) == ("tty1", False, "core")
        assert ssh.remote and ssh.describe() == "admin on pts/0 from 10.0.0.7 (session 2)"
        assert desktop.describe() == "desk on wayland (session 3)"
        assert {s.id for s in await logind.sessions()} == {"1", "2", "3", "4", "5", "6"}
        await remove_session(bus, "2")
        assert [s.id for s in await logind.interactive_sessions()] == ["1", "3"]
        await logind.close()
        bus.disconnect()

    run(body())


def test_session_changes_arrive_on_logind_signals(logind_double: LogindDouble) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        seen: list[str] = []
        changed = asyncio.Event()

        def on_change(reason: str) -> None:
            seen.append(reason)
            changed.set()

        async def next_change() -> str:
            await asyncio.wait_for(changed.wait(), 5)
            changed.clear()
            return seen[-1]

        unsubscribe = logind.on_sessions_changed(on_change)
        await add_session(bus, "7", tty="pts/3")
        assert await next_change() == "SessionNew 7"
        # By the time the signal arrives, the session's properties are set.
        assert [s.describe() for s in await logind.interactive_sessions()] == [
            "core on pts/3 (session 7)"
        ]
        await remove_session(bus, "7")
        assert await next_change() == "SessionRemoved 7"
        assert await logind.interactive_sessions() == []
        unsubscribe()
        await add_session(bus, "8", tty="pts/4")
        await remove_session(bus, "8")
        await asyncio.sleep(0.2)
        assert seen == ["SessionNew 7", "SessionRemoved 7"]
        await logind.close()
        bus.disconnect()

    run(body())


def test_block_inhibitors_are_listed_and_released_on_the_signal(
    logind_double: LogindDouble,
) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        assert await logind.block_inhibitors() == []
        assert await logind.wait_block_released(timeout=1) is True  # nothing to wait for
        fd = await inhibit(bus, "shutdown:sleep", "etcd", "compacting")
        sleep_fd = await inhibit(bus, "sleep", "backup", "running")
        delay_fd = await inhibit(bus, "shutdown", "flush", "saving", mode="delay")
        (blocker,) = await logind.block_inhibitors()
        assert (blocker.what, blocker.who, blocker.why, blocker.mode) == (
            ("shutdown", "sleep"),
            "etcd",
            "compacting",
            "block",
        )
        assert [i.who for i in await logind.block_inhibitors("sleep")] == ["etcd", "backup"]
        assert await logind.blocked()
        assert await logind.wait_block_released(timeout=0.3) is False

        loop = asyncio.get_running_loop()
        released_at: list[float] = []

        def release() -> None:
            released_at.append(time.monotonic())
            os.close(fd)

        loop.call_later(0.3, release)
        started = time.monotonic()
        assert await logind.wait_block_released(timeout=10) is True
        woke = time.monotonic()
        assert released_at and woke - released_at[0] < 0.5, (woke - started, released_at)
        assert await logind.block_inhibitors() == []
        assert not await logind.blocked()
        assert await logind.blocked("sleep")  # the sleep-only blocker still holds
        os.close(sleep_fd)
        os.close(delay_fd)
        await logind.close()
        bus.disconnect()

    run(body())


def test_one_of_two_blockers_released_keeps_waiting(logind_double: LogindDouble) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        first = await inhibit(bus, "shutdown", "a", "one")
        second = await inhibit(bus, "shutdown", "b", "two")
        waiting = asyncio.ensure_future(logind.wait_block_released(timeout=10))
        await asyncio.sleep(0.1)
        os.close(first)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert [i.who for i in await logind.block_inhibitors()] == ["b"]
        os.close(second)
        assert await asyncio.wait_for(waiting, 5) is True
        await logind.close()
        bus.disconnect()

    run(body())


def test_warning_and_reboot_are_recorded(logind_double: LogindDouble) -> None:
    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        at = time.time() + 600
        await logind.warn_sessions("zincati-py: rebooting for 40.2 in 10 minutes", reboot_at=at)
        (wall,) = await recorded_calls(bus, "SetWallMessage")
        assert wall.args == ["zincati-py: rebooting for 40.2 in 10 minutes", True]
        (sched,) = await recorded_calls(bus, "ScheduleShutdown")
        assert sched.args == ["dry-reboot", int(at * 1_000_000)]
        assert await logind.cancel_warning() is True
        assert await logind.cancel_warning() is False
        assert await recorded_calls(bus, "Reboot") == []
        await logind.reboot()
        (reboot,) = await recorded_calls(bus, "Reboot")
        assert reboot.args == [False]
        await logind.close()
        bus.disconnect()

    run(body())
    assert any(line.split(" ", 1)[1] == "Reboot False" for line in logind_double.log_lines())


def test_absent_logind_raises(system_bus: PrivateBus) -> None:
    async def body() -> None:
        bus, logind = await connected(system_bus.address)
        with pytest.raises(LogindError, match="ServiceUnknown"):
            await logind.can_reboot()
        await logind.close()
        bus.disconnect()

    run(body())


def test_logind_reboot_reboots_the_rpm_ostree_double(
    logind_double: LogindDouble, rpmostree_double: RpmOstreeDouble
) -> None:
    """The demo's wiring: the rpm-ostree double follows dbusmock's MethodCalled("Reboot")."""

    async def body() -> None:
        bus, logind = await connected(logind_double.bus_address)
        ro = RpmOstree(
            rpmostree_double.root, ostree_command=rpmostree_double.ostree_command, call_timeout=10
        )
        await ro.connect(bus)
        booted_changed = asyncio.Event()
        ro.on_change(lambda reason: booted_changed.set() if "BootedDeployment" in reason else None)
        staged = await ro.stage_update()
        assert staged is not None
        await ro.unlock_finalization(staged)
        await logind.reboot()
        await asyncio.wait_for(booted_changed.wait(), 5)
        booted = await ro.booted()
        assert booted.checksum == staged.checksum
        await ro.close()
        await logind.close()
        bus.disconnect()

    run(body())
