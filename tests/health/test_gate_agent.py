"""The health gate, the rollback and the pre-reboot checks with the real agent against the
doubles (rpm-ostree double, dbusmock logind, private bus); nothing of ours is mocked."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent.agent_harness import Node, wait_for

NEW = "40.20240115.3.0"
OLD = "40.20240101.3.0"
SCRIPT = {
    "osname": "fedora-coreos",
    "booted": {"version": OLD},
    "releases": [{"version": NEW}],
}


def reboots(node: Node) -> int:
    return len(node.logind_calls("Reboot")) + len(node.logind_calls("RebootWithFlags"))


def state(node: Node) -> dict[str, Any]:
    return dict(json.loads((node.root / "var/lib/zincati-py/state.json").read_text()))


def gate(node: Node) -> dict[str, Any]:
    return dict(state(node)["extra"].get("health_gate") or {})


def checksum(node: Node, version: str) -> str:
    import hashlib

    return hashlib.sha256(version.encode()).hexdigest()


def required(node: Node, name: str, body: str, kind: str = "required") -> Path:
    path = node.root / f"etc/zincati-py/health.d/{kind}.d/{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def assert_stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


def test_gate_passes_then_reports_healthy(node_factory: Callable[..., Node]) -> None:
    node = node_factory(SCRIPT)
    marker = node.tmp / "gate-ran"
    required(node, "10-ok", f'echo "checked $ZINCATI_PY_VERSION"; touch {marker}')
    required(node, "20-meh", "echo 'disk 91% full'; exit 3", kind="wanted")
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert not marker.exists()  # no gate for a boot the agent did not update into
    node.control("Stage", "sb", NEW, True)
    doc = node.wait_state("reported steady", agent=agent, booted=NEW, timeout=20)
    assert marker.exists()
    health = doc["health"]
    assert (health["phase"], health["verdict"], health["release"]) == ("reported", "healthy", NEW)
    checks = {c["name"]: c for c in health["checks"]}
    assert checks["10-ok"]["ok"] and checks["10-ok"]["output"] == f"checked {NEW}"
    assert not checks["20-meh"]["ok"] and checks["20-meh"]["output"] == "disk 91% full"
    assert checks["boot-complete.target"]["detail"] == "skipped: no systemd manager"
    assert reboots(node) == 1
    assert "wanted check wanted 20-meh: FAILED (exit status 3)" in agent.log()
    assert not (node.root / "run/motd.d/85-zincati-py-rollback.motd").exists()
    out = node.cli("status", "--root", str(node.root))
    assert "Health:     reported" in out.stdout, out.stdout + out.stderr


def test_gate_fails_rolls_back_exactly_once(node_factory: Callable[..., Node]) -> None:
    node = node_factory(SCRIPT)
    required(node, "10-app", 'echo "app down on $ZINCATI_PY_VERSION"; exit 1')
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    # Boots NEW, the gate fails, rollback, reboot: back on OLD and steady, the report sent.
    try:
        wait_for(lambda: reboots(node) == 2, 20, "the rollback reboot")
    except AssertionError:
        raise AssertionError(agent.log() + json.dumps(node.status(), indent=1)) from None
    doc = node.wait_state("reported steady", agent=agent, booted=OLD, timeout=20)
    wait_for(lambda: gate(node).get("phase") == "reported", 10, "report delivered")
    assert node.booted_version() == OLD
    double = node.double_state()
    # The double did what rpm-ostreed does: OLD the default, NEW kept as the rollback.
    assert [d["version"] for d in double["deployments"]] == [OLD, NEW]
    g = gate(node)
    assert (g["verdict"], g["version"], g["from_version"]) == ("failed", NEW, OLD)
    assert "app down on" in json.dumps(doc["health"]) or "exit status 1" in g["reason"]
    st = state(node)
    bad = checksum(node, NEW)
    assert bad in st["failed"] and st["extra"]["health_rolled_back"] == [bad]
    motd = (node.root / "run/motd.d/85-zincati-py-rollback.motd").read_text()
    assert f"update {NEW} failed its health check and was rolled back to {OLD}" in motd
    assert "HEALTH GATE FAILED" in agent.log()
    # The deny-list holds for origin-based updates: staged again, never rebooted into.
    node.control("PublishRelease", "s", NEW)
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    wait_for(lambda: (node.status() or {}).get("staged"), 10, "NEW staged again")
    assert_stays(lambda: reboots(node) == 2, 2.0, "never rebooted into the deny-listed release")
    assert "earlier reboot into it did not come up" in (node.status() or {})["reason"]


def test_pre_reboot_check_postpones_until_it_passes(node_factory: Callable[..., Node]) -> None:
    node = node_factory(SCRIPT)
    flag = node.tmp / "cluster-healthy"
    node.write_config(
        "50-health.toml",
        f'[agent.health]\npre_reboot = ["/bin/sh -c \\"echo quorum lost; test -e {flag}\\""]\n',
    )
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    doc = node.wait_state("update staged", agent=agent)
    reason = lambda: (node.status() or {}).get("reason", "")  # noqa: E731
    wait_for(lambda: "pre-reboot check failed" in reason(), 10, "postponed")
    doc = node.status() or {}
    assert doc["recheck_at"], doc
    assert doc["health"]["pre_reboot"][0]["output"] == "quorum lost"
    assert_stays(lambda: reboots(node) == 0, 1.0, "no reboot while the check fails")
    flag.touch()
    # Re-run at the next evaluation (the recheck armed by the postponement, or a wake).
    assert node.cli("wake", "test", "--system-bus", node.bus.address).returncode == 0
    wait_for(lambda: reboots(node) == 1, 15, "reboot once the check passes")
    node.wait_state("reported steady", agent=agent, booted=NEW, timeout=20)
