"""Fixtures for the Cincinnati agent tests: a sandboxed node (the agent harness of
tests/agent) whose updates come from the graph server double."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from testbed.bus import PrivateBus
from testbed.cincinnati import GraphRelease, GraphServer
from testbed.rpmostree import RpmOstreeDouble

if TYPE_CHECKING:
    from tests.agent.agent_harness import Node

MACHINE_ID = "b1a3f8a47b8c4a56a5f8d0c2e2a1c0d1"


@pytest.fixture
def graph_server() -> Iterator[GraphServer]:
    with GraphServer() as server:
        yield server


@pytest.fixture
def graph_node(
    system_bus: PrivateBus,
    rpmostree_factory: Callable[..., RpmOstreeDouble],
    graph_server: GraphServer,
    user_manager_factory: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[Callable[..., Node]]:
    """``graph_node(booted, releases, config="")`` → a Node booted on ``booted`` whose
    rpm-ostree double knows ``releases`` (GraphRelease list, oldest first, booted included)
    and whose agent's ``[cincinnati] base_url`` is the graph server (serving ``releases``)."""
    from testbed import logind as logind_sandbox
    from tests.agent.agent_harness import Node

    nodes: list[Node] = []
    mocks: list[Any] = []

    def make(booted: str, releases: list[GraphRelease], config: str = "", **kw: Any) -> Node:
        graph_server.set_releases(releases, kw.pop("extra_edges", None))
        # Timestamps follow the graph order, so "older" means the same to both doubles.
        script = {
            "booted": {"version": booted, "timestamp": 1_700_000_000 + _pos(releases, booted)},
            "releases": [
                {"version": r.version, "timestamp": 1_700_000_000 + i}
                for i, r in enumerate(releases)
                if r.version != booted
            ],
            "origin": "fedora:fedora/x86_64/coreos/testing",
            "transaction_delay": 0.02,
        }
        double = rpmostree_factory(script, idle_timeout=0)
        if not logind_sandbox.logind_double_available():
            pytest.skip("needs python3-dbusmock under /usr/bin/python3")
        mock = logind_sandbox.LogindDouble(
            system_bus.address, tmp_path / f"logind-{len(mocks)}.log"
        ).start()
        mocks.append(mock)
        # The health gate needs a systemd manager that reached boot-complete.target.
        n = Node(system_bus, double, mock, tmp_path, user_manager_factory(None).bus_address)
        (n.root / "etc").mkdir(parents=True, exist_ok=True)
        (n.root / "etc/machine-id").write_text(MACHINE_ID + "\n")
        (n.root / "proc").mkdir(exist_ok=True)
        (n.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ignition.platform.id=qemu rw\n")
        n.write_config(
            "50-graph.toml", f'[cincinnati]\nbase_url = "{graph_server.base_url}"\n' + config
        )
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        for a in n.agents:
            if a.alive():
                a.stop()
    for mock in mocks:
        mock.stop()


def _pos(releases: list[GraphRelease], version: str) -> int:
    return next(i for i, r in enumerate(releases) if r.version == version)
