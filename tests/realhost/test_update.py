"""A staged update through the real thing: the agent (user zincati-py) stages through the
D-Bus-activated rpm-ostreed, unlocks finalization through the polkit-started
zincati-py-finalize.service, asks the real logind to reboot; the container goes down
(ostree-finalize-staged finalizes on the way), nspawn exits 133, boots again into the new
deployment, and the agent reports steady. Then the same with the agent SIGKILLed mid-cycle:
still exactly one reboot.

One container for the module; the tests run in order (the second starts where the first ends).
"""

from __future__ import annotations

import time

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import boots, double_state, publish, status, wait_state

SCRIPT = {
    "booted": {"version": "40.1"},
    "releases": [{"version": "40.2"}, {"version": "40.3"}, {"version": "40.4"}],
}
QUIET = "[agent.timing]\nsteady_interval_secs = 86400\n"  # no timer-driven checks meanwhile


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    return host_factory(script=SCRIPT, fragments={"50-quiet.toml": QUIET})


def test_staged_update_reboots_through_logind_and_next_boot_is_steady(host: Container) -> None:
    assert status(host)["booted"]["version"] == "40.1"
    publish(host, "40.2")
    host.run(["zincati-py", "check"])
    # The reboot is the container's: nspawn exits 133; boot it again.
    host.expect_reboot(timeout=120)
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.2" and doc["staged"] is None, doc
    assert double_state(host)["reboots"] == 1
    assert boots(host) == 2
    previous = host.run(["journalctl", "-b", "-1", "--no-pager", "-q"]).stdout
    # The previous boot: staged with the finalization lock, unlocked by the root oneshot that
    # polkit let the agent start, rebooted by logind, finalized by the shutdown unit.
    assert "zincati-py-finalize.service: Deactivated successfully" in previous, previous[-3000:]
    assert "Staged deployment is now queued to apply on shutdown" in previous
    assert "Finalized 40.2" in previous
    assert "System is rebooting" in previous or "Reached target reboot.target" in previous


def test_sigkill_of_the_agent_mid_cycle_never_reboots_twice(host: Container) -> None:
    before = boots(host)
    publish(host, "40.3")
    host.run(["zincati-py", "check"])  # returns once the request is durable
    # Mid-cycle: the check is recorded, staging may be under way. systemd restarts the agent
    # (Restart=on-failure, RestartSec=10s) and it carries on from its records.
    host.run(["systemctl", "kill", "--signal=SIGKILL", "zincati-py.service"])
    t0 = time.monotonic()
    host.expect_reboot(timeout=150)
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.3", doc
    # No second reboot: the new boot stays up while the agent settles.
    time.sleep(8)
    assert host.running(), f"container went down again ({time.monotonic() - t0:.0f} s)"
    assert boots(host) == before + 1
    assert double_state(host)["reboots"] == 2
    previous = host.run(["journalctl", "-b", "-1", "-u", "zincati-py.service", "-q"]).stdout
    assert "code=killed, status=9/KILL" in previous, previous[-2000:]
    assert status(host)["staged"] is None


def test_sigkill_while_waiting_on_an_inhibitor_still_reboots_once(host: Container) -> None:
    """A deterministic mid-cycle point: staged and decided, held back by root's block
    inhibitor; the agent is SIGKILLed there, restarted by systemd, waits again, and the release
    of the inhibitor gives exactly one reboot."""
    before = boots(host)
    host.spawn(
        ["systemd-inhibit", "--what=shutdown", "--mode=block", "--who=test", "--why=hold",
         "sleep", "600"],
    )  # fmt: skip
    host.wait_for("inhibitor", lambda: "hold" in host.run(["systemd-inhibit", "--list"]).stdout, 20)
    publish(host, "40.4")
    host.run(["zincati-py", "check"])
    host.wait_for("waiting on the inhibitor", lambda: "inhibitor" in str(status(host)), 60)
    pid = host.run(["systemctl", "show", "-P", "MainPID", "zincati-py.service"]).stdout.strip()
    host.run(["kill", "-9", pid])
    # systemd restarts it (RestartSec=10s); it finds its staged update and waits again.
    host.wait_for(
        "restarted agent waiting again",
        lambda: (
            host.run(["systemctl", "show", "-P", "MainPID", "zincati-py.service"]).stdout.strip()
            not in ("0", pid)
            and "inhibitor" in str(status(host))
        ),
        60,
    )
    assert host.running() and boots(host) == before
    host.run(["pkill", "-x", "systemd-inhibit"])
    host.expect_reboot(timeout=60)
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.4", doc
    time.sleep(5)
    assert host.running() and boots(host) == before + 1
    assert double_state(host)["reboots"] == 3
