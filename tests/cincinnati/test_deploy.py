"""The rpm-ostree adapter deploys a graph target by checksum on the rpm-ostree double:
``set-revision`` with lock-finalization and skip-branch-check, no downgrade unless allowed;
the booted deployment carries the stream and version the graph request needs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast.aio import MessageBus

from testbed.rpmostree import RpmOstreeDouble
from zincati_py.cincinnati.check import BootedFacts
from zincati_py.dbus.rpmostree import RpmOstree, TransactionFailed

SCRIPT = {
    "booted": {"version": "B"},
    "releases": [{"version": "C"}],
    "origin": "fedora:fedora/x86_64/coreos/testing",
    "transaction_delay": 0,
}


def test_deploy_revision(rpmostree_factory: Callable[..., RpmOstreeDouble]) -> None:
    # "A" is older than the booted "B": give it an older timestamp than the booted release.
    script: dict[str, Any] = {
        **SCRIPT,
        "releases": [{"version": "A", "timestamp": 1_600_000_000}, {"version": "C"}],
    }
    double = rpmostree_factory(script, idle_timeout=0)
    sysroot = double.sysroot()

    async def body() -> None:
        bus = await MessageBus(bus_address=double.bus_address).connect()
        ro = RpmOstree(double.root, ostree_command=double.ostree_command, call_timeout=10)
        await ro.connect(bus)
        try:
            facts = BootedFacts.from_deployment(await ro.booted())
            b = sysroot.script.release("B")
            assert (facts.version, facts.checksum, facts.stream) == ("B", b.checksum, "testing")
            older = sysroot.script.release("A").checksum
            with pytest.raises(TransactionFailed, match="chronologically older"):
                await ro.stage_update(revision=f"revision={older}", allow_downgrade=False)
            assert await ro.staged() is None
            with pytest.raises(TransactionFailed, match="chronologically older"):
                await ro.stage_update(revision=f"revision={older}")  # rpm-ostreed's default
            staged = await ro.stage_update(revision=f"revision={older}", allow_downgrade=True)
            assert staged is not None and staged.version == "A" and staged.finalization_locked
            newer = sysroot.script.release("C").checksum
            staged = await ro.stage_update(revision=f"revision={newer}", allow_downgrade=False)
            assert staged is not None and staged.checksum == newer and staged.finalization_locked
        finally:
            await ro.close()
            bus.disconnect()

    asyncio.run(asyncio.wait_for(body(), 60))
