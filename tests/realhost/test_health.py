"""The health gate on a real systemd PID 1 (issue 16): a required unit that fails after the
update boot gives exactly one rollback (rpm-ostree Rollback through rpm-ostreed, then the real
logind reboot); the node ends on the old deployment, steady, the release deny-listed and the
verdict reported; nothing reboots again. The bootloader's part (the default deployment boots)
is the test bed's ``ostree admin boot-default`` stand-in at boot.

One container for the module.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import boots, double_state, publish, status, wait_state

SCRIPT = {"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}, {"version": "40.3"}]}
BAD = hashlib.sha256(b"40.2").hexdigest()
FRAGMENT = (
    "[agent.timing]\nsteady_interval_secs = 86400\n"
    '[agent.health]\nrequired_units = ["app.service"]\ntimeout_secs = 120\n'
    # Event hooks: the generated zincati-py-hook@.service, started by the agent through polkit.
    "[agent.hooks]\ncommands = ['/bin/sh -c \"echo $ZINCATI_PY_EVENT $ZINCATI_PY_VERSION"
    " $(id -un) >> /var/tmp/hooks.log\"']\n"
)
# The application fails on 40.2 only (it reads what the double says is booted).
APP = f"""[Unit]
Description=the node's application (fails on 40.2)
After=ostree-booted.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -c "import json, sys; \\
s = json.load(open('/var/lib/rpmostree-double/state.json')); sys.exit(s['booted'] == '{BAD}')"

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    h: Container = host_factory(script=SCRIPT, fragments={"50-health.toml": FRAGMENT})
    h.run(["sh", "-c", "cat > /etc/systemd/system/app.service"], input=APP)
    h.run(["systemctl", "daemon-reload"])
    h.run(["systemctl", "enable", "--now", "app.service"])
    return h


def test_failed_required_unit_rolls_back_once_and_reports(host: Container) -> None:
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.1"
    publish(host, "40.2")
    host.run(["zincati-py", "check"])
    host.expect_reboot(timeout=120)  # into 40.2: app.service fails, the gate fails
    host.expect_reboot(timeout=120)  # the rollback reboot, back into 40.1
    doc = wait_state(host, "reported steady", timeout=90)
    assert doc["booted"]["version"] == "40.1", doc
    health = doc["health"]
    assert (health["phase"], health["verdict"], health["release"]) == (
        "reported",
        "failed",
        "40.2",
    )
    assert health["from_release"] == "40.1"
    assert "app.service: FAILED" in health["reason"], health
    assert health["rolled_back"] == [BAD]
    state = json.loads(host.run(["cat", "/var/lib/zincati-py/state.json"]).stdout)
    assert BAD in state["failed"]
    # rpm-ostreed kept both: 40.1 the default (booted), 40.2 the rollback deployment.
    ds = double_state(host)
    assert [d["version"] for d in ds["deployments"]] == ["40.1", "40.2"]
    assert ds["reboots"] == 2 and boots(host) == 3
    previous = host.run(["journalctl", "-b", "-1", "-u", "zincati-py.service", "-q"]).stdout
    assert "HEALTH GATE FAILED for 40.2" in previous, previous[-3000:]
    assert "rolled back to 40.1: rebooting" in previous
    this_boot = host.run(["journalctl", "-b", "-u", "zincati-py.service", "-q", "-p", "crit"])
    assert "failed its health check and was rolled back" in this_boot.stdout
    # The hooks ran as the agent's user: staged and reboot before, rolled-back after.
    hooks = host.run(["cat", "/var/tmp/hooks.log"]).stdout.splitlines()
    assert "staged 40.2 zincati-py" in hooks and "rolled-back 40.2 zincati-py" in hooks, hooks
    assert "booted 40.2 zincati-py" in hooks and "reboot 40.1 zincati-py" in hooks, hooks
    # Exactly one rollback: the node stays up, the release is never taken again.
    time.sleep(8)
    assert host.running()
    assert boots(host) == 3
    host.run(["zincati-py", "check"])
    time.sleep(5)
    assert host.running() and boots(host) == 3
    assert status(host)["booted"]["version"] == "40.1"


def test_healthy_update_reports_steady_after_the_checks(host: Container) -> None:
    # A health.d check the agent (user zincati-py, sandboxed) runs after the update boot.
    check = "/etc/zincati-py/health.d/required.d/10-app"
    host.run(["mkdir", "-p", "/etc/zincati-py/health.d/required.d"])
    host.run(
        ["sh", "-c", f"cat > {check} && chmod 755 {check}"],
        input="#!/bin/sh\nsystemctl is-active app.service && "
        'echo "app ok on $ZINCATI_PY_VERSION"\n',
    )
    publish(host, "40.3")
    host.run(["zincati-py", "check"])
    host.expect_reboot(timeout=120)
    doc = wait_state(host, "reported steady", timeout=90)
    assert doc["booted"]["version"] == "40.3", doc
    health = doc["health"]
    assert (health["phase"], health["verdict"], health["release"]) == (
        "reported",
        "healthy",
        "40.3",
    )
    checks = {c["name"]: c for c in health["checks"]}
    assert checks["boot-complete.target"]["ok"] and checks["app.service"]["ok"], checks
    assert checks["10-app"]["output"] == "active\napp ok on 40.3", checks["10-app"]
    time.sleep(5)
    assert host.running() and boots(host) == 4
    assert double_state(host)["reboots"] == 3
