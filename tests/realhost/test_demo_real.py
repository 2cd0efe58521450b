"""``zincati-py demo --real``: the fleet demo on booted containers (a lock-server container and
two nodes sharing one loopback) ends with its success verdict: each node rebooted exactly once
into the release, never two down at a time."""

from __future__ import annotations

import json
import subprocess

from testbed.proc import zincati_py_argv
from testbed.realhost import Image


def test_demo_real_two_nodes(realhost_image: Image) -> None:
    proc = subprocess.run(
        [*zincati_py_argv(), "demo", "--real", "--nodes", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = [e for e in events if e["kind"] == "verdict"]
    assert verdict and verdict[-1]["message"].startswith("OK"), events
    reboots = [e["node"] for e in events if e["kind"] == "reboot"]
    assert sorted(reboots) == ["node1", "node2"], events
