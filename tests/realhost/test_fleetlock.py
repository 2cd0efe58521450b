"""The fleet_lock strategy against zincati-py-fleetlock.service in the same container: both
units as shipped (users zincati-py and zincati-py-fleetlock, SQLite in the server's
StateDirectory=). The slot is taken before the reboot (after another node gave it back) and
released by the agent after booting the new deployment.
"""

from __future__ import annotations

import json
import time

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import publish, status, wait_state

SCRIPT = {"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}]}
URL = "http://127.0.0.1:8080/"
FRAGMENT = f"""\
[agent.timing]
steady_interval_secs = 30

[updates]
strategy = "fleet_lock"

[updates.fleet_lock]
base_url = "{URL}"
"""


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    return host_factory(
        script=SCRIPT,
        fragments={"60-fleet-lock.toml": FRAGMENT},
        enable=("zincati-py.service", "zincati-py-fleetlock.service"),
    )


def holders(host: Container) -> list[str]:
    out = host.run(["zincati-py", "fleetlock", "status", "--url", URL, "--json"]).stdout
    doc = json.loads(out)
    found: list[str] = []

    def walk(node: object) -> None:  # holder ids wherever the document lists them
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("holders", "owners") and isinstance(value, list):
                    found.extend(v if isinstance(v, str) else str(v.get("id")) for v in value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return sorted(found)


def test_fleet_lock_slot_taken_before_and_released_after_reboot(host: Container) -> None:
    assert host.run(["systemctl", "is-active", "zincati-py-fleetlock.service"]).stdout.strip() == (
        "active"
    )
    # Another node holds the group's only slot.
    host.run(["zincati-py", "fleetlock", "lock", "--url", URL, "--group", "default",
              "--id", "other-node"])  # fmt: skip
    assert holders(host) == ["other-node"]
    publish(host, "40.2")
    host.run(["zincati-py", "check"])
    doc = wait_state(host, "update staged", timeout=60)
    time.sleep(3)
    assert host.running(), "rebooted without the slot"
    assert holders(host) == ["other-node"]
    assert "fleet" in json.dumps(doc.get("strategy")).lower(), doc
    # The other node is done: the agent's next try (backoff, capped at 30 s) takes the slot.
    host.run(["zincati-py", "fleetlock", "unlock", "--url", URL, "--group", "default",
              "--id", "other-node"])  # fmt: skip
    host.expect_reboot(timeout=90)
    previous = host.run(["journalctl", "-b", "-1", "--no-pager", "-q"]).stdout
    assert "Finalized 40.2" in previous
    # After the reboot: steady on 40.2, and the slot given back.
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.2", doc
    host.wait_for("slot released", lambda: holders(host) == [], 30)
    server = host.run(
        ["journalctl", "-u", "zincati-py-fleetlock.service", "--no-pager", "-q"]
    ).stdout
    node = status(host).get("strategy")
    assert "Traceback" not in server, server[-2000:]
    agent = host.run(["journalctl", "-b", "-u", "zincati-py.service", "--no-pager", "-q"]).stdout
    assert "Traceback" not in agent and "release failed" not in agent, agent[-2000:]
    assert node is not None
