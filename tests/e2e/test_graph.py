"""The demo's fleet follows the Cincinnati update graph (testbed/cincinnati.py), as Fedora
CoreOS hosts do: every node asks the fleet's graph server double with its own identity, and a
release reaches the nodes only once it is published to the graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.demo import NEW_VERSION, OLD_VERSION, Fleet
from testbed.rpmostree import default_checksum


def test_fleet_updates_through_the_graph_each_node_asking_with_its_identity(
    fleet_run: Callable[..., Any],
) -> None:
    async def scenario(fleet: Fleet) -> Any:
        assert fleet.graph is not None
        summary = await fleet.run()
        ids = {n.node_id for n in fleet.nodes}
        return summary, list(fleet.graph.requests), fleet.find("release_published"), ids

    summary, requests, published, ids = fleet_run(scenario)
    assert summary.ok, summary.reason
    assert [e.data["graph_edge"] for e in published] == [[OLD_VERSION, NEW_VERSION]]
    assert "published to the update graph" in published[0].message
    by_node: dict[str, list[dict[str, str]]] = {}
    for r in requests:
        assert r.path == "/v1/graph"
        assert r.headers.get("accept") == "application/json"
        by_node.setdefault(r.params["node_uuid"], []).append(r.params)
    # Every node asked, with the identity the demo gave it (node id from its machine-id).
    assert set(by_node) == ids
    for params in by_node.values():
        first = params[0]
        assert first["group"] == "demo"
        assert first["stream"] == "stable"
        assert first["platform"] == "qemu"
        assert first["os_version"] == OLD_VERSION
        assert first["os_checksum"] == default_checksum(OLD_VERSION)
