"""Graph parsing and the choice of a target (fast tier)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zincati_py.cincinnati.errors import CincinnatiError
from zincati_py.cincinnati.graph import (
    DROP_DENYLIST,
    DROP_DOWNGRADE,
    DROP_OLDER,
    Booted,
    parse_error_body,
    parse_graph,
    plan,
)


def node(version: str, age: int | str | None, **meta: str) -> dict[str, Any]:
    m = {"org.fedoraproject.coreos.scheme": "checksum", **meta}
    if age is not None:
        m["org.fedoraproject.coreos.releases.age_index"] = str(age)
    return {"version": version, "payload": f"sum-{version}", "metadata": m}


def graph(nodes: list[dict[str, Any]], edges: list[list[int]]) -> bytes:
    return json.dumps({"nodes": nodes, "edges": edges}).encode()


def booted(version: str) -> Booted:
    return Booted(version, f"sum-{version}")


A, B, C = node("A", 0), node("B", 1), node("C", 2)


def test_barrier_only_edge_to_the_barrier() -> None:
    g = parse_graph(graph([A, B, C], [[0, 1], [1, 2]]))
    p = plan(g, booted("A"))
    assert p.chosen is not None and p.chosen.version == "B"
    assert [t.node.version for t in p.targets] == ["B"]
    p = plan(g, booted("B"))
    assert p.chosen is not None and p.chosen.version == "C"
    p = plan(g, booted("C"))
    assert p.chosen is None and "up to date" in p.reason


def test_greatest_target_by_age_index_not_by_order() -> None:
    g = parse_graph(graph([node("C", 5), A, node("B", 3)], [[1, 2], [1, 0]]))
    p = plan(g, booted("A"))
    assert p.chosen is not None and p.chosen.version == "C"
    assert [(t.node.version, t.dropped) for t in p.targets] == [("B", DROP_OLDER), ("C", None)]


def test_denylist_drops_and_counts() -> None:
    g = parse_graph(graph([A, B, C], [[0, 1], [0, 2]]))
    p = plan(g, booted("A"), denylist={"sum-C"})
    assert p.chosen is not None and p.chosen.version == "B"
    assert p.ignored == 1
    assert ("C", DROP_DENYLIST) in [(t.node.version, t.dropped) for t in p.targets]
    p = plan(g, booted("A"), denylist={"sum-B", "sum-C"})
    assert p.chosen is None and p.ignored == 2 and "dropped" in p.reason


def test_downgrade_only_with_allow_downgrade() -> None:
    g = parse_graph(graph([A, B], [[1, 0]]))
    p = plan(g, booted("B"))
    assert p.chosen is None and "downgrade" in p.reason
    assert [(t.node.version, t.dropped) for t in p.targets] == [("A", DROP_DOWNGRADE)]
    p = plan(g, booted("B"), allow_downgrade=True)
    assert p.chosen is not None and p.chosen.version == "A"
    # same age index: not newer, so a downgrade too
    g = parse_graph(graph([node("X", 1), B], [[1, 0]]))
    assert plan(g, booted("B")).chosen is None


def test_deadend() -> None:
    dead = node(
        "A",
        0,
        **{
            "org.fedoraproject.coreos.updates.deadend": "true",
            "org.fedoraproject.coreos.updates.deadend_reason": "https://example/issue/1",
        },
    )
    p = plan(parse_graph(graph([dead, B], [])), booted("A"))
    assert p.deadend and p.deadend_reason == "https://example/issue/1"
    assert p.as_dict()["deadend_reason"] == "https://example/issue/1"
    almost = node("A", 0, **{"org.fedoraproject.coreos.updates.deadend": "false"})
    assert not plan(parse_graph(graph([almost], [])), booted("A")).deadend


def test_booted_lookup_by_scheme_and_payload() -> None:
    oci = {
        "version": "A",
        "payload": "quay.io/x@sha256:1",
        "metadata": {
            "org.fedoraproject.coreos.scheme": "oci",
            "org.fedoraproject.coreos.releases.age_index": "0",
        },
    }
    g = parse_graph(graph([oci, A], []))
    # same version, but the scheme decides
    assert plan(g, booted("A")).booted == g.nodes[1]
    assert plan(g, Booted("A", "quay.io/x@sha256:1", "oci")).booted == g.nodes[0]
    p = plan(g, Booted("A", "other"))
    assert p.booted is None and p.chosen is None and "not in the graph" in p.reason


def test_invalid_target_dropped_invalid_booted_is_an_error() -> None:
    g = parse_graph(graph([A, node("B", "x"), node("C", None)], [[0, 1], [0, 2]]))
    p = plan(g, booted("A"))
    assert p.chosen is None and len(p.warnings) == 2
    g = parse_graph(graph([node("A", "zero"), B], [[0, 1]]))
    with pytest.raises(CincinnatiError) as e:
        plan(g, booted("A"))
    assert e.value.kind == "failed_node_parsing"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"not json", "failed_json_parsing"),
        (b"[]", "failed_json_parsing"),
        (b'{"nodes": []}', "failed_json_parsing"),
        (b'{"nodes": [{"version": "A"}], "edges": []}', "failed_json_parsing"),
        (
            b'{"nodes": [{"version": "A", "payload": "p", "metadata": {"k": 1}}], "edges": []}',
            "failed_json_parsing",
        ),
        (b'{"nodes": [], "edges": [[0]]}', "failed_json_parsing"),
        (b'{"nodes": [], "edges": [[true, 0]]}', "failed_json_parsing"),
        (b'{"nodes": [], "edges": [[0, 1]]}', "failed_node_parsing"),
    ],
)
def test_malformed_graphs(body: bytes, kind: str) -> None:
    with pytest.raises(CincinnatiError) as e:
        parse_graph(body)
    assert e.value.kind == kind and e.value.malformed


def test_error_body() -> None:
    assert parse_error_body(b'{"kind": "invalid_params", "value": "bad arch"}') == (
        "invalid_params",
        "bad arch",
    )
    assert parse_error_body(b"<html>") is None
    assert parse_error_body(b'{"value": "x"}') is None
