"""``zincati-py updates``: the real CLI against the graph server double (and the rpm-ostree
double for the booted release)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cincinnati import GraphRelease, GraphServer
from testbed.proc import zincati_py_argv
from testbed.rpmostree import RpmOstreeDouble, default_checksum

ZPY = zincati_py_argv()
MACHINE_ID = "b1a3f8a47b8c4a56a5f8d0c2e2a1c0d1"


@pytest.fixture
def server() -> Iterator[GraphServer]:
    releases = [GraphRelease("A"), GraphRelease("B", barrier=True), GraphRelease("C")]
    with GraphServer(releases, extra_edges=[("B", "A")]) as s:
        yield s


def make_root(root: Path, base_url: str | None, extra: str = "") -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
    conf = root / "etc/zincati/config.d"
    conf.mkdir(parents=True, exist_ok=True)
    text = extra
    if base_url is not None:
        text = f'[cincinnati]\nbase_url = "{base_url}"\n' + text
    (conf / "50-test.toml").write_text(text)
    return root


def zpy(
    root: Path, *args: str, env: dict[str, str] | None = None, stream: bool = True
) -> subprocess.CompletedProcess[str]:
    """``zincati-py updates``; a what-if run (``--booted-*``) gets ``--stream stable`` unless it
    names one or ``stream`` is False."""
    what_if = any(a.startswith("--booted-") for a in args)
    extra = ["--stream", "stable"] if stream and what_if and "--stream" not in args else []
    return subprocess.run(
        [*ZPY, "updates", "--root", str(root), "--timeout", "5", *args, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def plan_json(root: Path, *args: str) -> dict[str, Any]:
    r = zpy(root, "--json", *args)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_what_if_barrier(server: GraphServer, tmp_path: Path) -> None:
    root = make_root(tmp_path, server.base_url)
    doc = plan_json(root, "--booted-version", "A", "--stream", "next", "--basearch", "s390x")
    assert doc["chosen"]["version"] == "B"
    assert doc["booted"]["payload"] == default_checksum("A")
    assert [t["version"] for t in doc["targets"]] == ["B"]
    q = server.requests[-1].params
    assert q["stream"] == "next" and q["basearch"] == "s390x" and q["os_version"] == "A"
    r = zpy(root, "--booted-checksum", default_checksum("B"))
    assert r.returncode == 0, r.stderr
    assert "Update:     C: C is the newest target of B" in r.stdout
    assert "A  age index    0  dropped: older than the chosen target" in r.stdout  # B->A
    doc = plan_json(root, "--booted-checksum", default_checksum("C"))
    assert doc["chosen"] is None and doc["reason"].startswith("C is up to date")


def test_up_to_date_and_deadend(tmp_path: Path) -> None:
    with GraphServer([GraphRelease("A"), GraphRelease("B", deadend="see https://x/1")]) as s:
        root = make_root(tmp_path, s.base_url)
        r = zpy(root, "--booted-version", "B")
        assert r.returncode == 0, r.stderr
        assert "Dead-end:   yes: see https://x/1" in r.stdout
        assert "Update:     none:" in r.stdout
        assert not (root / "run/motd.d").exists()  # planning writes nothing
        doc = plan_json(root, "--booted-version", "B")
        assert doc["chosen"] is None and doc["deadend"] is True


def test_denylist_from_the_agent_state(server: GraphServer, tmp_path: Path) -> None:
    root = make_root(tmp_path, server.base_url)
    state = root / "var/lib/zincati-py/state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"version": 1, "failed": [default_checksum("B")], "extra": {}}))
    doc = plan_json(root, "--booted-version", "A")
    assert doc["chosen"] is None and doc["ignored"] == 1
    assert doc["targets"][0]["dropped"] == "deny-listed"


def test_exit_codes(server: GraphServer, tmp_path: Path) -> None:
    root = make_root(tmp_path, server.base_url)
    server.fail(200, "{]")
    r = zpy(root, "--json", "--booted-version", "A")
    assert r.returncode == 65 and "failed_json_parsing" in r.stderr
    # --json: the error is the one document on stdout too.
    err = json.loads(r.stdout)
    assert err["exit_status"] == 65 and "failed_json_parsing" in err["error"], err
    server.fail(503, "busy")
    r = zpy(root, "--booted-version", "A")
    assert r.returncode == 69 and "generic_http" in r.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = zpy(root, "--booted-version", "A", "--url", f"http://127.0.0.1:{port}/")
    assert r.returncode == 69 and "failed_request" in r.stderr
    # Without --booted-*, the booted release comes from rpm-ostree: unreachable is 69 too.
    r = zpy(root, "--system-bus", f"unix:path={tmp_path}/no-bus")
    assert r.returncode == 69 and "--booted-checksum" in r.stderr, r.stderr
    r = zpy(make_root(tmp_path / "none", None), "--booted-version", "A")
    assert r.returncode == 65 and "base_url" in r.stderr
    assert "Traceback" not in r.stderr


def test_booted_from_rpmostree(
    server: GraphServer, rpmostree_factory: Callable[..., RpmOstreeDouble]
) -> None:
    double = rpmostree_factory(
        {"booted": {"version": "B"}, "origin": "fedora:fedora/x86_64/coreos/testing"},
        idle_timeout=0,
    )
    root = make_root(double.root, server.base_url + "${stream}/", '[identity]\ngroup = "canary"\n')
    r = zpy(root, "--json", env={"DBUS_SYSTEM_BUS_ADDRESS": double.bus_address})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["chosen"]["version"] == "C"
    req = server.requests[-1]
    assert req.path == "/testing/v1/graph"
    assert req.params["stream"] == "testing" and req.params["group"] == "canary"
    assert req.params["os_checksum"] == default_checksum("B")


def test_downgrade_shown_and_allowed(tmp_path: Path) -> None:
    with GraphServer([GraphRelease("A"), GraphRelease("B")], extra_edges=[("B", "A")]) as s:
        root = make_root(tmp_path, s.base_url)
        r = zpy(root, "--booted-version", "B")
        assert r.returncode == 0, r.stderr
        assert "A  age index    0  dropped: downgrade (allow_downgrade is false)" in r.stdout
        assert "Update:     none:" in r.stdout
        make_root(tmp_path, s.base_url, "[updates]\nallow_downgrade = true\n")
        doc = plan_json(root, "--booted-version", "B")
        assert doc["chosen"]["version"] == "A" and doc["allow_downgrade"] is True


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "soon"])
def test_timeout_must_be_positive_and_finite(tmp_path: Path, value: str) -> None:
    root = make_root(tmp_path, "http://127.0.0.1:9/")
    r = zpy(root, "--booted-version", "A", "--timeout", value)
    assert r.returncode == 64 and "--timeout" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_what_if_needs_a_stream(server: GraphServer, tmp_path: Path) -> None:
    root = make_root(tmp_path, server.base_url)
    r = zpy(root, "--json", "--booted-version", "A", stream=False)
    assert r.returncode == 64 and "--stream" in r.stderr, r.stderr
    assert json.loads(r.stdout)["exit_status"] == 64
    assert server.requests == []  # nothing was asked with stream=""
