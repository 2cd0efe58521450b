"""What the real-host tests ask a booted container: the agent's status, the rpm-ostree
double's state and control calls, the boot count. Every wait is bounded."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from testbed.realhost.container import Container


def status(host: Container, user: str | None = None) -> dict[str, Any]:
    out = host.run(["zincati-py", "status", "--json"], user=user).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def double_state(host: Container) -> dict[str, Any]:
    """The rpm-ostree double's state (GetState on its test-control interface, as root)."""
    out = host.run(
        ["busctl", "--json=short", "call", "org.projectatomic.rpmostree1",
         "/io/github/zincatipy/Test/RpmOstree", "io.github.zincatipy.Test.RpmOstree", "GetState"],
    ).stdout  # fmt: skip
    state: dict[str, Any] = json.loads(json.loads(out)["data"][0])
    return state


def publish(host: Container, version: str) -> None:
    host.run(
        ["busctl", "call", "org.projectatomic.rpmostree1", "/io/github/zincatipy/Test/RpmOstree",
         "io.github.zincatipy.Test.RpmOstree", "PublishRelease", "s", version],
    )  # fmt: skip


def boots(host: Container) -> int:
    """How many boots the container's journal has seen."""
    out = host.run(["journalctl", "--list-boots", "--no-pager", "-q"], check=False).stdout
    return len([line for line in out.splitlines() if line.strip()])


def wait_state(host: Container, pattern: str, timeout: float) -> dict[str, Any]:
    """Poll ``zincati-py status --json`` (bounded) until its state matches ``pattern``."""
    found: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal found
        proc = host.run(["zincati-py", "status", "--json"], check=False)
        if proc.returncode != 0:
            return None
        found = json.loads(proc.stdout)
        return found if re.search(pattern, json.dumps(found.get("state"))) else None

    try:
        result = host.wait_for(f"agent state ~ {pattern}", probe, timeout)
    except Exception as e:
        raise AssertionError(f"{e}\nlast status: {json.dumps(found, indent=1)}") from None
    assert isinstance(result, dict)
    return result


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
