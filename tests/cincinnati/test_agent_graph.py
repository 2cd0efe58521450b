"""The real agent following the update graph: the graph server double over loopback HTTP, the
rpm-ostree double and dbusmock's logind on a private bus. Nothing of ours is mocked."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

from testbed.cincinnati import GraphRelease, GraphServer
from testbed.rpmostree import default_checksum
from tests.agent.agent_harness import AGENT_BUS_NAME, Node, dbus_call, wait_for
from tests.cincinnati.conftest import MACHINE_ID
from zincati_py.config.checks import app_specific_id
from zincati_py.metrics import short_path

MOTD = "run/motd.d/85-zincati-deadend.motd"


def reboots(node: Node) -> int:
    return len(node.logind_calls("Reboot")) + len(node.logind_calls("RebootWithFlags"))


def check(node: Node) -> None:
    r = node.cli("check", "--system-bus", node.bus.address)
    assert r.returncode == 0, r.stderr


def metrics(node: Node) -> str:
    path = node.root / "run/zincati-py/public/metrics.promsock"
    with socket.socket(socket.AF_UNIX) as s, short_path(path) as short:
        s.settimeout(5)
        s.connect(short)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def metric(node: Node, sample: str) -> float | None:
    for line in metrics(node).splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def props(node: Node) -> dict[str, Any]:
    got = dbus_call(
        node.bus.address,
        AGENT_BUS_NAME,
        "/io/github/zincatipy/Agent1",
        "org.freedesktop.DBus.Properties",
        "GetAll",
        "s",
        "io.github.zincatipy.Agent1",
    )[0]
    return {k: v.value for k, v in got.items()}


def wait_result(node: Node, pattern: str, timeout: float = 15) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = node.status()
        if doc and re.search(pattern, doc.get("last_check_result") or ""):
            return doc
        return None

    try:
        return dict(wait_for(done, timeout, f"last_check_result ~ {pattern!r}"))
    except AssertionError:
        logs = "\n".join(a.log() for a in node.agents)
        raise AssertionError(f"status: {node.status()}\n{logs}") from None


def stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


def test_barrier_is_staged_first_then_the_next_after_reboot(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    releases = [GraphRelease("A"), GraphRelease("B", barrier=True), GraphRelease("C")]
    node = graph_node("A", releases, '[identity]\nrollout_wariness = 0.3\ngroup = "canary"\n')
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert graph_server.requests == []  # no polling: only the check asks the graph
    check(node)
    wait_for(lambda: reboots(node) == 1, 20, "logind Reboot into B")
    node.wait_state("reported steady", agent=agent, booted="B")
    # Staged B (never C), and did not ask the graph again while B was staged.
    assert len(graph_server.requests) == 1
    q = graph_server.requests[0]
    assert q.path == "/v1/graph" and q.headers["accept"] == "application/json"
    assert q.params == {
        "basearch": q.params["basearch"],
        "os_version": "A",
        "group": "canary",
        "node_uuid": app_specific_id(MACHINE_ID),
        "platform": "qemu",
        "stream": "testing",
        "os_checksum": default_checksum("A"),
        "rollout_wariness": "0.300000",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", q.params["node_uuid"])
    assert q.params["basearch"]
    check(node)
    wait_for(lambda: reboots(node) == 2, 20, "logind Reboot into C")
    node.wait_state("reported steady", agent=agent, booted="C")
    assert graph_server.requests[-1].params["os_version"] == "B"
    check(node)
    doc = wait_result(node, "up to date")
    assert reboots(node) == 2
    g = doc["cincinnati"]
    assert g["source"] == graph_server.base_url + "v1/graph"
    assert g["last_fetch"] and g["deadend"] is False and g["target"] is None
    p = props(node)
    assert p["UpdateGraph"] == graph_server.base_url + "v1/graph"
    assert p["UpdateGraphFetched"] and p["DeadEnd"] == "no" and p["UpdateTarget"] == ""
    assert metric(node, "zincati_cincinnati_update_checks_total") == 3
    assert metric(node, "zincati_cincinnati_graph_nodes_count") == 3
    assert metric(node, "zincati_cincinnati_graph_edges_count") == 2
    r = node.cli("status", "--root", str(node.root))
    assert "Graph:" in r.stdout and "up to date" in r.stdout, r.stdout


def test_deadend_motd_written_and_removed_when_the_graph_changes(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    releases = [
        GraphRelease("A", deadend="https://github.com/coreos/fcos/issues/1"),
        GraphRelease("B"),
    ]
    node = graph_node("A", releases)
    motd = node.root / MOTD
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    check(node)
    doc = wait_result(node, "no new update")
    assert motd.read_text() == (
        "This release is a dead-end and will not further auto-update: "
        "https://github.com/coreos/fcos/issues/1\n"
    )
    assert oct(motd.stat().st_mode & 0o777) == "0o644"
    assert doc["cincinnati"]["deadend"] is True
    assert props(node)["DeadEnd"] == "yes: https://github.com/coreos/fcos/issues/1"
    assert metric(node, "zincati_cincinnati_booted_release_is_deadend") == 1
    assert reboots(node) == 0
    # The graph no longer marks A a dead-end (and offers B): the MOTD goes.
    graph_server.set_releases([GraphRelease("A"), GraphRelease("B")])
    check(node)
    wait_for(lambda: reboots(node) == 1, 20, "logind Reboot into B")
    assert not motd.exists()
    assert metric(node, "zincati_cincinnati_booted_release_is_deadend") == 0
    assert "dead-end" in agent.log()


def test_downgrade_edge_refused_unless_allow_downgrade(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    node = graph_node("B", [GraphRelease("A"), GraphRelease("B")], extra_edges=[("B", "A")])
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    check(node)
    wait_result(node, "downgrade")
    assert node.double_state()["staged"] is None and reboots(node) == 0
    node.write_config("60-downgrade.toml", "[updates]\nallow_downgrade = true\n")
    wait_for(lambda: "configuration changed" in agent.log(), 10, "config reload")
    check(node)
    wait_for(lambda: reboots(node) == 1, 20, "logind Reboot into A")
    node.wait_state("reported steady", agent=agent, booted="A")


def test_failed_stage_is_denylisted(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    releases = [GraphRelease("A"), GraphRelease("B"), GraphRelease("C")]
    node = graph_node(
        "A", releases, '[updates]\nstrategy = "file"\n[updates.file]\npath = "/nope"\n'
    )
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("SetFailure", "s", "disk full")
    check(node)
    doc = wait_result(node, "failed to stage C")
    assert doc["cincinnati"]["denylist"] == [default_checksum("C")]
    requests = len(graph_server.requests)
    stays(lambda: len(graph_server.requests) == requests, 1.5, "no faster retry")
    node.control("SetFailure", "s", "")
    check(node)
    doc = wait_result(node, "staged B")
    assert node.double_state()["staged"]["version"] == "B"
    assert metric(node, "zincati_cincinnati_ignored_update_targets") == 1
    # B stays staged (the file strategy says no): a check now does not ask the graph again.
    requests = len(graph_server.requests)
    check(node)
    stays(lambda: len(graph_server.requests) == requests, 1.5, "no query while staged")
    assert node.status()["state"] == "update staged"  # type: ignore[index]


def test_oci_target_is_not_staged_nor_denylisted(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    # Review finding 9: deployed as revision=<pull-spec> it always failed and was deny-listed.
    oci = {"org.fedoraproject.coreos.scheme": "oci"}
    pullspec = "quay.io/fedora/fedora-coreos@sha256:" + "c" * 64
    releases = [GraphRelease("A"), GraphRelease("B", checksum=pullspec, metadata=oci)]
    node = graph_node("A", releases)
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    check(node)
    doc = wait_result(node, "graph target B is an OCI image: unsupported")
    assert doc["cincinnati"]["denylist"] == []
    assert node.double_state()["staged"] is None and reboots(node) == 0
    assert "is an OCI image (quay.io/fedora/fedora-coreos@sha256:" in agent.log()
    assert "failed to stage" not in agent.log()


def test_graph_errors_of_every_kind_are_no_update_counted_by_kind(
    graph_node: Callable[..., Node], graph_server: GraphServer
) -> None:
    node = graph_node("A", [GraphRelease("A"), GraphRelease("B")])
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    faults = [
        ("generic_http", 502, "bad gateway"),
        ("invalid_params", 400, '{"kind": "invalid_params", "value": "no such stream"}'),
        ("failed_json_parsing", 200, "<html>"),
        ("failed_node_parsing", 200, '{"nodes": [], "edges": [[3, 4]]}'),
    ]
    for kind, status, body in faults:
        graph_server.fail(status, body)
        before = len(graph_server.requests)
        check(node)
        wait_result(node, f"graph error: {kind}")
        assert len(graph_server.requests) == before + 1
        assert node.status()["state"] == "no new update"  # type: ignore[index]
        sample = f'zincati_cincinnati_update_checks_errors_total{{kind="{kind}"}}'
        assert metric(node, sample) == 1, metrics(node)
    # No answer at all.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node.write_config("50-graph.toml", f'[cincinnati]\nbase_url = "http://127.0.0.1:{port}/"\n')
    wait_for(lambda: "configuration changed" in agent.log(), 10, "config reload")
    check(node)
    wait_result(node, "graph error: failed_request")
    assert metric(node, 'zincati_cincinnati_update_checks_errors_total{kind="failed_request"}') == 1
    # Never a faster retry, never a crash, nothing staged.
    count = len(graph_server.requests)
    stays(lambda: len(graph_server.requests) == count and agent.alive(), 1.5, "no retry")
    assert node.double_state()["staged"] is None and reboots(node) == 0
    assert metric(node, "zincati_cincinnati_update_checks_total") == 5
    assert "Traceback" not in agent.log()
