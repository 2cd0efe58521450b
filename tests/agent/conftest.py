"""Fixtures for agent tests: sandboxed nodes (see agent_harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from testbed.bus import PrivateBus
from testbed.rpmostree import RpmOstreeDouble
from testbed.systemd import UserManager

if TYPE_CHECKING:
    # Imported lazily in the fixture, like the sandbox modules.
    from tests.agent.agent_harness import Node


@pytest.fixture
def node_factory(
    system_bus: PrivateBus,
    rpmostree_factory: Callable[..., RpmOstreeDouble],
    user_manager_factory: Callable[..., UserManager],
    tmp_path: Path,
) -> Iterator[Callable[..., Node]]:
    """``node_factory(script=None, start_double=True)`` → a Node with its own systemd user
    manager (boot-complete.target reached: the health gate assesses each boot); agents and
    logind are stopped at teardown."""
    from testbed import logind as logind_sandbox
    from tests.agent.agent_harness import Node

    nodes: list[Node] = []
    mocks: list[Any] = []

    def make(script: dict[str, object] | None = None, *, start_double: bool = True) -> Node:
        double = rpmostree_factory(script, idle_timeout=0, start=start_double)
        if not logind_sandbox.logind_double_available():
            pytest.skip("needs python3-dbusmock under /usr/bin/python3")
        mock = logind_sandbox.LogindDouble(
            system_bus.address, tmp_path / f"logind-{len(mocks)}.log"
        ).start()
        mocks.append(mock)
        manager = user_manager_factory(None)
        n = Node(system_bus, double, mock, tmp_path, manager.bus_address)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        for a in n.agents:
            if a.alive():
                a.stop()
    for mock in mocks:
        mock.stop()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory()


@pytest.fixture
def fleet_factory(
    tmp_path: Path, user_manager_factory: Callable[..., UserManager]
) -> Iterator[Callable[..., Node]]:
    """``fleet_factory(name, script)`` → a Node with its own private bus (each node's
    rpm-ostree double and logind own the well-known names on their bus), as in the demo."""
    from testbed import logind as logind_sandbox
    from testbed.bus import dbus_daemon_available
    from tests.agent.agent_harness import Node

    if not dbus_daemon_available() or not logind_sandbox.logind_double_available():
        pytest.skip("needs dbus-daemon and python3-dbusmock")
    started: list[Any] = []
    nodes: list[Node] = []

    def make(name: str, script: dict[str, object]) -> Node:
        base = tmp_path / name
        base.mkdir()
        bus = PrivateBus("system", base / "bus").start()
        started.append(bus)
        double = RpmOstreeDouble(bus.address, base / "root", dict(script), idle_timeout=0)
        started.append(double)
        double.start()
        mock = logind_sandbox.LogindDouble(bus.address, base / "logind.log")
        started.append(mock)
        mock.start()
        manager = user_manager_factory(None)
        n = Node(bus, double, mock, base, manager.bus_address)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        for a in n.agents:
            if a.alive():
                a.stop()
    for thing in reversed(started):
        thing.stop()
