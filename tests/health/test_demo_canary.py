"""``zincati-py demo --canary`` end to end (the README's command): exit 0 and the story told."""

from __future__ import annotations

import subprocess

from tests.agent.agent_harness import ZPY


def test_demo_canary_runs_from_the_readme(fleet_factory: object) -> None:
    # fleet_factory: only for its tier markers and skips (dbus-daemon, dbusmock); unused.
    out = subprocess.run(
        [*ZPY, "demo", "--canary"], capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout
    assert "node1: gate FAILED" in lines and "rolled back to 40.20251102.3.0" in lines
    assert lines.count("slot refused: the server halted its rollout") == 4
    assert lines.count("health gate passed (healthy)") == 5
    assert "reboots [3, 1, 1, 1, 1]" in lines
    assert lines.count("published to the update graph") == 2
    assert "every node followed the update graph" in lines
