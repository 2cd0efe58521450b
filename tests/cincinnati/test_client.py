"""The client and GraphCheck against the graph server double over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from testbed.cincinnati import GraphRelease, GraphServer
from testbed.rpmostree import default_checksum
from zincati_py.cincinnati.check import BootedFacts, GraphCheck, kernel_platform, oci_pullspec
from zincati_py.cincinnati.client import fetch_graph
from zincati_py.cincinnati.errors import CincinnatiError
from zincati_py.cincinnati.metrics import CincinnatiMetrics
from zincati_py.config import IdentitySettings, Settings, UpdatesSettings

UUID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def server() -> Iterator[GraphServer]:
    with GraphServer([GraphRelease("A"), GraphRelease("B", barrier=True), GraphRelease("C")]) as s:
        yield s


def settings(base_url: str, **kw: object) -> Settings:
    ident = IdentitySettings(
        group=str(kw.pop("group", "default")),
        node_uuid=UUID,
        rollout_wariness=kw.pop("wariness", None),  # type: ignore[arg-type]
    )
    return Settings(
        identity=ident,
        cincinnati_base_url=base_url,
        updates=UpdatesSettings(allow_downgrade=bool(kw.pop("allow_downgrade", False))),
    )


def facts(version: str, stream: str = "stable") -> BootedFacts:
    return BootedFacts(version, default_checksum(version), stream)


def run(check: GraphCheck, s: Settings, f: BootedFacts, **kw: object):  # type: ignore[no-untyped-def]
    return asyncio.run(check.run(s, f, timeout=5, **kw))  # type: ignore[arg-type]


def rendered(m: CincinnatiMetrics) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(m)
    return generate_latest(reg).decode()


def test_query_carries_every_parameter(server: GraphServer, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=x ignition.platform.id=qemu quiet\n")
    check = GraphCheck(tmp_path)
    base = server.base_url + "${stream}/${basearch}/${platform}/${group}/"
    out = run(
        check, settings(base, group="canary", wariness=0.25), facts("A", "testing"), arch="aarch64"
    )
    assert out.error is None and out.target is not None
    req = server.requests[-1]
    assert req.path == "/testing/aarch64/qemu/canary/v1/graph"
    assert req.params == {
        "basearch": "aarch64",
        "os_version": "A",
        "group": "canary",
        "node_uuid": UUID,
        "platform": "qemu",
        "stream": "testing",
        "os_checksum": default_checksum("A"),
        "rollout_wariness": "0.250000",
    }
    assert req.headers["accept"] == "application/json"
    run(check, settings(server.base_url), facts("A"))
    assert "rollout_wariness" not in server.requests[-1].params


def test_barrier_then_next(server: GraphServer, tmp_path: Path) -> None:
    check = GraphCheck(tmp_path)
    out = run(check, settings(server.base_url), facts("A"))
    assert out.target is not None and out.target.version == "B"
    assert out.target.payload == default_checksum("B")
    out = run(check, settings(server.base_url), facts("B"))
    assert out.target is not None and out.target.version == "C"
    out = run(check, settings(server.base_url), facts("C"))
    assert out.target is None and out.error is None
    text = rendered(check.metrics)
    assert "zincati_cincinnati_graph_nodes_count 3.0" in text
    assert "zincati_cincinnati_graph_edges_count 2.0" in text
    assert "zincati_cincinnati_update_checks_total 3.0" in text
    st = check.status(settings(server.base_url).cincinnati_base_url)
    assert st["source"] == server.base_url + "v1/graph" and st["last_fetch"] is not None


def test_per_wariness_answers(tmp_path: Path) -> None:
    with GraphServer([GraphRelease("A"), GraphRelease("B", rollout=0.3)]) as s:
        check = GraphCheck(tmp_path)
        eager = run(check, settings(s.base_url, wariness=0.1), facts("A"))
        wary = run(check, settings(s.base_url, wariness=0.9), facts("A"))
        assert eager.target is not None and eager.target.version == "B"
        assert wary.target is None and wary.error is None


def test_deadend_motd_and_metric(tmp_path: Path) -> None:
    with GraphServer(
        [GraphRelease("A", deadend="https://example/issue/7"), GraphRelease("B")]
    ) as s:
        check = GraphCheck(tmp_path)
        motd = tmp_path / "run/motd.d/85-zincati-deadend.motd"
        out = run(check, settings(s.base_url), facts("A"))
        assert out.plan is not None and out.plan.deadend and out.target is None
        assert motd.read_text() == (
            "This release is a dead-end and will not further auto-update: https://example/issue/7\n"
        )
        assert "zincati_cincinnati_booted_release_is_deadend 1.0" in rendered(check.metrics)
        s.set_releases([GraphRelease("A"), GraphRelease("B")])
        out = run(check, settings(s.base_url), facts("A"))
        assert out.target is not None and not motd.exists()
        assert "zincati_cincinnati_booted_release_is_deadend 0.0" in rendered(check.metrics)


def test_downgrade_edge_and_denylist(tmp_path: Path) -> None:
    with GraphServer([GraphRelease("A"), GraphRelease("B")], extra_edges=[("B", "A")]) as s:
        check = GraphCheck(tmp_path)
        assert run(check, settings(s.base_url), facts("B")).target is None
        out = run(check, settings(s.base_url, allow_downgrade=True), facts("B"))
        assert out.target is not None and out.target.version == "A"
        out = run(check, settings(s.base_url), facts("A"), denylist={default_checksum("B")})
        assert out.target is None
        assert "zincati_cincinnati_ignored_update_targets 1.0" in rendered(check.metrics)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_error_kind_is_no_update_counted_by_kind(server: GraphServer, tmp_path: Path) -> None:
    check = GraphCheck(tmp_path)
    cases: list[tuple[str, object]] = [
        ("generic_http", (503, "<html>busy</html>")),
        ("invalid_params", (400, '{"kind": "invalid_params", "value": "bad basearch"}')),
        ("failed_json_parsing", (200, "{not json")),
        ("failed_node_parsing", (200, '{"nodes": [], "edges": [[0, 1]]}')),
    ]
    for kind, (status, body) in cases:  # type: ignore[misc]
        server.fail(status, body)
        out = run(check, settings(server.base_url), facts("A"))
        assert out.target is None and out.error is not None and out.error.kind == kind, out
    server.heal()
    out = run(check, settings(f"http://127.0.0.1:{_closed_port()}/"), facts("A"))
    assert out.error is not None and out.error.kind == "failed_request"
    out = run(check, settings("not a url"), facts("A"))
    assert out.error is not None and out.error.kind == "client_builder"
    text = rendered(check.metrics)
    for kind in (
        "generic_http",
        "invalid_params",
        "failed_json_parsing",
        "failed_node_parsing",
        "failed_request",
        "client_builder",
    ):
        line = f'zincati_cincinnati_update_checks_errors_total{{kind="{kind}"}} 1.0'
        assert line in text, text
    assert "zincati_cincinnati_update_checks_total 6.0" in text


def test_fetch_graph_raises_for_non_2xx(server: GraphServer) -> None:
    server.fail(404, "")
    with pytest.raises(CincinnatiError) as e:
        asyncio.run(fetch_graph(server.base_url + "v1/graph", {}, timeout=5))
    assert e.value.kind == "generic_http" and e.value.status == 404


def test_platform_and_oci_helpers(tmp_path: Path) -> None:
    assert kernel_platform(tmp_path) == ""
    assert (
        oci_pullspec(
            "ostree-remote-image:fedora:docker://quay.io/fedora/fedora-coreos:stable", "sha256:ab"
        )
        == "quay.io/fedora/fedora-coreos@sha256:ab"
    )
    assert oci_pullspec("ostree-unverified-registry:localhost:5000/os:1", "sha256:cd") == (
        "localhost:5000/os@sha256:cd"
    )
