"""The rpm-ostree adapter against the rpm-ostree double on a real private dbus-daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from testbed.bus import PrivateBus
from testbed.rpmostree import (
    BUS_NAME,
    LOCK_REL,
    STAGED_REL,
    RpmOstreeDouble,
    control,
    install_activation,
    interface_xml,
)
from zincati_py.dbus.rpmostree import (
    Deployment,
    RpmOstree,
    RpmOstreeError,
    RpmOstreeUnavailable,
    TransactionFailed,
)

T = TypeVar("T")
OLD, NEW = "40.20240101.3.0", "40.20240115.3.0"


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Every test body is bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connected(
    bus_address: str, double: RpmOstreeDouble | None = None, root: Path | None = None
) -> tuple[MessageBus, RpmOstree]:
    bus = await MessageBus(bus_address=bus_address).connect()
    ro = RpmOstree(
        root if root is not None else double.root if double else "/",
        ostree_command=double.ostree_command if double else ("false",),
        call_timeout=10,
    )
    await ro.connect(bus)
    return bus, ro


class Changes:
    """Collects on_change reasons with arrival times; wait() is bounded."""

    def __init__(self) -> None:
        self.reasons: list[tuple[float, str]] = []
        self._event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append((time.monotonic(), reason))
        self._event.set()

    async def wait_for(self, needle: str, timeout: float = 5.0) -> float:
        """Monotonic arrival time of the first reason containing ``needle``."""
        deadline = time.monotonic() + timeout
        while True:
            for at, reason in self.reasons:
                if needle in reason:
                    return at
            self._event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no change {needle!r} within {timeout}s: {self.reasons}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)


async def state(bus: MessageBus) -> dict[str, Any]:
    (raw,) = await control(bus, "GetState")
    result: dict[str, Any] = json.loads(raw)
    return result


def test_reads_booted_deployment(rpmostree_double: RpmOstreeDouble) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        deployments = await ro.deployments()
        assert [d.version for d in deployments] == [OLD]
        booted = await ro.booted()
        assert booted == deployments[0]
        assert booted.booted and not booted.staged and not booted.finalization_locked
        assert booted.osname == "fedora-coreos"
        assert booted.id == f"fedora-coreos-{booted.checksum}.0"
        assert await ro.staged() is None
        await ro.close()
        bus.disconnect()

    run(body())


def test_stage_update_runs_a_p2p_transaction(rpmostree_double: RpmOstreeDouble) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        staged = await ro.stage_update()
        assert staged is not None
        assert (staged.version, staged.staged, staged.finalization_locked) == (NEW, True, True)
        assert (rpmostree_double.root / LOCK_REL).exists()
        assert (
            rpmostree_double.root / "ostree/deploy/fedora-coreos/deploy" / f"{staged.checksum}.0"
        ).is_dir()
        s = await state(bus)
        assert s["checks"] == 1
        assert s["clients"] == []  # registered only for the transaction
        # Booted is unchanged until a reboot; the staged one leads the boot order.
        assert [d.version for d in await ro.deployments()] == [NEW, OLD]
        assert (await ro.booted()).version == OLD
        # A second check stages nothing new and returns the same staged deployment.
        assert await ro.stage_update() == staged
        await ro.close()
        bus.disconnect()

    run(body())


def test_nothing_to_stage_until_published(
    rpmostree_factory: Callable[..., RpmOstreeDouble],
) -> None:
    double = rpmostree_factory(
        {"booted": {"version": "1"}, "releases": [{"version": "2"}], "transaction_delay": 0}
    )

    async def body() -> None:
        bus, ro = await connected(double.bus_address, double)
        assert await ro.stage_update() is None
        await control(bus, "PublishRelease", "s", "2")
        staged = await ro.stage_update()
        assert staged is not None and staged.version == "2"
        assert (await state(bus))["checks"] == 2
        await ro.close()
        bus.disconnect()

    run(body())


def test_release_appears_after_n_checks(rpmostree_factory: Callable[..., RpmOstreeDouble]) -> None:
    double = rpmostree_factory(
        {
            "booted": {"version": "1"},
            "releases": [
                {"version": "2", "available_after_checks": 1},
                {"version": "3", "available_after_checks": 2},
            ],
            "transaction_delay": 0,
        }
    )

    async def body() -> None:
        bus, ro = await connected(double.bus_address, double)
        first = await ro.stage_update()
        second = await ro.stage_update()
        third = await ro.stage_update()
        assert first is None
        assert second is not None and second.version == "2"
        assert third is not None and third.version == "3"  # newest wins, replaces staged 2
        assert [d.version for d in await ro.deployments()] == ["3", "1"]
        await ro.close()
        bus.disconnect()

    run(body())


def test_stage_a_given_revision(rpmostree_factory: Callable[..., RpmOstreeDouble]) -> None:
    double = rpmostree_factory(
        {
            "booted": {"version": "1"},
            "releases": [{"version": v, "available_after_checks": 0} for v in ("2", "3")],
            "transaction_delay": 0,
        }
    )

    async def body() -> None:
        bus, ro = await connected(double.bus_address, double)
        target = double.sysroot().script.release("2")
        staged = await ro.stage_update(revision=f"revision={target.checksum}")
        assert staged is not None and (staged.version, staged.checksum) == ("2", target.checksum)
        with pytest.raises(TransactionFailed, match="no release"):
            await ro.stage_update(revision="revision=" + "f" * 64)
        await ro.close()
        bus.disconnect()

    run(body())


def test_transaction_timeout_cancels_it(rpmostree_factory: Callable[..., RpmOstreeDouble]) -> None:
    double = rpmostree_factory(
        {
            "booted": {"version": OLD},
            "releases": [{"version": NEW, "available_after_checks": 0}],
            "transaction_delay": 3,
        }
    )

    async def body() -> None:
        bus, ro = await connected(double.bus_address, double)
        with pytest.raises(TimeoutError):
            await ro.stage_update(timeout=0.2)
        s = await state(bus)
        assert s["clients"] == [] and s["staged"] is None
        # The cancelled transaction is gone: a new one can start (no "in progress" error).
        with pytest.raises(TimeoutError):
            await ro.stage_update(timeout=0.2)
        await ro.close()
        bus.disconnect()

    run(body())


def test_failed_transaction_raises(rpmostree_double: RpmOstreeDouble) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        await control(bus, "SetFailure", "s", "error: pulling: 503 Service Unavailable")
        with pytest.raises(TransactionFailed, match="503 Service Unavailable"):
            await ro.stage_update()
        assert await ro.staged() is None
        assert (await state(bus))["clients"] == []  # unregistered despite the failure
        await ro.close()
        bus.disconnect()

    run(body())


def test_staged_deployment_detected_within_milliseconds_of_signal(
    rpmostree_double: RpmOstreeDouble,
) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        changes = Changes()
        ro.on_change(changes)
        # Subscribe our own probe to the same signal to timestamp its arrival independently.
        seen = asyncio.get_running_loop().create_future()

        def probe(msg: Message) -> None:
            if (
                msg.member == "PropertiesChanged"
                and "Deployments" in msg.body[1]
                and not seen.done()
            ):
                seen.set_result(time.monotonic())

        bus.add_message_handler(probe)
        await control(bus, "Stage", "sb", NEW, True)  # another tool staged it
        arrived = await changes.wait_for("PropertiesChanged Sysroot: ")
        signal_at = await asyncio.wait_for(seen, 5)
        assert abs(arrived - signal_at) < 0.05, (arrived, signal_at)
        staged = await ro.staged()
        assert staged is not None and staged.version == NEW and staged.finalization_locked
        await ro.close()
        bus.disconnect()

    run(body())


def test_inotify_sees_changes_made_while_rpm_ostreed_was_idle(
    system_bus: PrivateBus, rpmostree_factory: Callable[..., RpmOstreeDouble]
) -> None:
    double = rpmostree_factory(idle_timeout=0.3)
    install_activation(system_bus, double)
    (double.root / "run/ostree").mkdir(parents=True)  # as on a booted ostree system

    async def body() -> None:
        bus, ro = await connected(double.bus_address, double)
        changes = Changes()
        ro.on_change(changes)
        assert (await ro.booted()).version == OLD
        await changes.wait_for("rpm-ostreed exited", timeout=10)  # idle exit, not killed
        assert double.wait_exit(5) == 0
        changes.reasons.clear()
        # Stage the way `ostree admin deploy --stage --lock-finalization` would, offline.
        sysroot = double.sysroot()
        sysroot.stage(sysroot.script.release(NEW), locked=True)
        await changes.wait_for(f"inotify IN_MOVED_TO {STAGED_REL}")
        assert not any("PropertiesChanged" in r for _, r in changes.reasons)
        # Reading activates rpm-ostreed again (D-Bus activation), which reports the new state.
        staged = await ro.staged()
        assert staged is not None and staged.version == NEW and staged.finalization_locked
        await changes.wait_for("rpm-ostreed started")
        await ro.close()
        bus.disconnect()

    run(body())


def test_inotify_follows_directories_created_later(tmp_path: Path, system_bus: PrivateBus) -> None:
    root = tmp_path / "bare"
    root.mkdir()

    async def body() -> None:
        bus, ro = await connected(system_bus.address, root=root)
        changes = Changes()
        ro.on_change(changes)
        (root / "run/ostree").mkdir(parents=True)
        (root / LOCK_REL).touch()
        # Either the file's own event or the new watch on its directory is reported.
        await changes.wait_for("run/ostree")
        (root / "unrelated").touch()  # siblings seen by ancestor watches are not reported
        changes.reasons.clear()
        (root / LOCK_REL).unlink()
        await changes.wait_for(f"inotify IN_DELETE {LOCK_REL}")
        deploy = root / "ostree/deploy/fedora-coreos/deploy"
        deploy.mkdir(parents=True)
        (deploy / "abc.0").mkdir()
        await changes.wait_for("ostree/deploy/fedora-coreos")
        assert not any("unrelated" in r for _, r in changes.reasons)
        await ro.close()
        bus.disconnect()

    run(body())


def test_inotify_sees_a_deployment_in_a_deploy_dir_just_created_or_replaced(
    tmp_path: Path, system_bus: PrivateBus
) -> None:
    """The deploy dir and a deployment in it are created in quick succession (before the
    watcher reads any event), first as a new OS and then replacing the deploy dir by a new one
    of the same name; each time a later deployment is still reported, so the new directory
    is watched. A watch looked up by name found the replaced directory's dead watch."""
    root = tmp_path / "sysroot"
    (root / "run/ostree").mkdir(parents=True)
    (root / "ostree/deploy").mkdir(parents=True)
    deploy = root / "ostree/deploy/fedora-coreos/deploy"

    async def body() -> None:
        bus, ro = await connected(system_bus.address, root=root)
        changes = Changes()
        ro.on_change(changes)
        deploy.mkdir(parents=True)
        (deploy / "abc.0").mkdir()
        await changes.wait_for("ostree/deploy/fedora-coreos")
        (deploy / "abc.1").mkdir()
        await changes.wait_for("IN_CREATE|IN_ISDIR ostree/deploy/fedora-coreos/deploy/abc.1")
        # Replaced: the old directory goes, a new one with a deployment takes its place.
        (deploy / "abc.0").rmdir()
        (deploy / "abc.1").rmdir()
        deploy.rmdir()
        deploy.mkdir()
        (deploy / "def.0").mkdir()
        await changes.wait_for("IN_DELETE_SELF ostree/deploy/fedora-coreos/deploy")
        changes.reasons.clear()
        (deploy / "def.1").mkdir()
        await changes.wait_for("IN_CREATE|IN_ISDIR ostree/deploy/fedora-coreos/deploy/def.1")
        await ro.close()
        bus.disconnect()

    run(body())


def test_unlock_finalization_then_reboot_boots_staged(rpmostree_double: RpmOstreeDouble) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        changes = Changes()
        ro.on_change(changes)
        staged = await ro.stage_update()
        assert staged is not None and staged.finalization_locked
        changes.reasons.clear()
        await ro.unlock_finalization(staged)
        await changes.wait_for(f"inotify IN_DELETE {LOCK_REL}")
        after = await ro.staged()
        assert after is not None and not after.finalization_locked
        assert not (rpmostree_double.root / LOCK_REL).exists()
        await ro.unlock_finalization(staged)  # idempotent
        (booted_version,) = await control(bus, "Reboot")
        assert booted_version == NEW
        booted = await ro.booted()
        assert (booted.version, booted.checksum) == (NEW, staged.checksum)
        assert await ro.staged() is None
        assert [d.version for d in await ro.deployments()] == [NEW, OLD]  # old is the rollback
        assert not (rpmostree_double.root / STAGED_REL).exists()
        await ro.close()
        bus.disconnect()

    run(body())


def test_locked_staged_deployment_is_discarded_on_reboot(
    rpmostree_double: RpmOstreeDouble,
) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        staged = await ro.stage_update()
        assert staged is not None
        (booted_version,) = await control(bus, "Reboot")
        assert booted_version == OLD
        assert await ro.staged() is None
        assert [d.version for d in await ro.deployments()] == [OLD]
        deploy_dir = rpmostree_double.root / "ostree/deploy/fedora-coreos/deploy"
        assert not (deploy_dir / f"{staged.checksum}.0").exists()
        await ro.close()
        bus.disconnect()

    run(body())


def test_unlock_refuses_a_deployment_that_is_not_staged(
    rpmostree_double: RpmOstreeDouble,
) -> None:
    async def body() -> None:
        bus, ro = await connected(rpmostree_double.bus_address, rpmostree_double)
        booted = await ro.booted()
        with pytest.raises(RpmOstreeError, match="nothing is staged"):
            await ro.unlock_finalization(booted)
        staged = await ro.stage_update()
        assert staged is not None
        other = Deployment(**{**staged.__dict__, "checksum": "0" * 64})
        with pytest.raises(RpmOstreeError, match=f"{NEW} \\({staged.checksum}\\) is staged"):
            await ro.unlock_finalization(other)
        assert (rpmostree_double.root / LOCK_REL).exists()
        await ro.close()
        bus.disconnect()

    run(body())


def test_failing_ostree_command_is_reported(rpmostree_double: RpmOstreeDouble) -> None:
    async def body() -> None:
        bus = await MessageBus(bus_address=rpmostree_double.bus_address).connect()
        ro = RpmOstree(rpmostree_double.root, ostree_command=("false",), call_timeout=10)
        await ro.connect(bus)
        staged = await ro.stage_update()
        assert staged is not None
        with pytest.raises(RpmOstreeError, match="failed \\(1\\)"):
            await ro.unlock_finalization(staged)
        await ro.close()
        bus.disconnect()

    run(body())


def test_absent_rpm_ostreed_is_reported_as_unavailable(system_bus: PrivateBus) -> None:
    async def body() -> None:
        bus, ro = await connected(system_bus.address, root=system_bus.directory)
        with pytest.raises(RpmOstreeUnavailable):
            await ro.deployments()
        with pytest.raises(RpmOstreeUnavailable):
            await ro.stage_update()
        await ro.close()
        bus.disconnect()

    run(body())


def test_registered_client_keeps_daemon_alive_until_it_leaves(
    rpmostree_factory: Callable[..., RpmOstreeDouble],
) -> None:
    double = rpmostree_factory(idle_timeout=0.3)

    async def body() -> None:
        bus = await MessageBus(bus_address=double.bus_address).connect()
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path="/org/projectatomic/rpmostree1/Sysroot",
                interface="org.projectatomic.rpmostree1.Sysroot",
                member="RegisterClient",
                signature="a{sv}",
                body=[{"id": Variant("s", "test")}],
            )
        )
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
        await asyncio.sleep(0.8)
        assert double.running()
        bus.disconnect()  # rpm-ostreed notices the client vanished, then idles out

    run(body())
    assert double.wait_exit(5) == 0


def test_double_serves_the_interface_xml_and_checks_signatures(
    rpmostree_double: RpmOstreeDouble,
) -> None:
    async def body() -> None:
        bus = await MessageBus(bus_address=rpmostree_double.bus_address).connect()
        node = await bus.introspect(BUS_NAME, "/org/projectatomic/rpmostree1/fedora_coreos")
        methods = {m.name for i in node.interfaces for m in i.methods}
        assert {"UpdateDeployment", "FinalizeDeployment", "Deploy"} <= methods
        assert "UpdateDeployment" in interface_xml()
        call: Callable[..., Awaitable[Message | None]] = bus.call
        bad = await call(
            Message(
                destination=BUS_NAME,
                path="/org/projectatomic/rpmostree1/fedora_coreos",
                interface="org.projectatomic.rpmostree1.OS",
                member="UpdateDeployment",
                signature="a{sv}",
                body=[{}],
            )
        )
        assert bad is not None and bad.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
        unmodelled = await call(
            Message(
                destination=BUS_NAME,
                path="/org/projectatomic/rpmostree1/fedora_coreos",
                interface="org.projectatomic.rpmostree1.OS",
                member="Cleanup",
                signature="as",
                body=[["base"]],
            )
        )
        assert unmodelled is not None
        assert unmodelled.error_name == "org.freedesktop.DBus.Error.NotSupported"
        bus.disconnect()

    run(body())
