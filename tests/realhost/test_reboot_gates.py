"""What stands between a staged update and the reboot, with the real systemd-logind and polkit:
an interactive login session (postpones; warned through logind's wall on its terminal; the
reboot follows its logout) and a block inhibitor held by another user (real logind answers
CanReboot=challenge, our rules deny reboot-ignore-inhibit: the agent must wait for the
BlockInhibited change, not back off, and reboot right after the release).

One container for the module; the tests run in order.
"""

from __future__ import annotations

import re
import time

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import double_state, publish, status, wait_state

SCRIPT = {"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}, {"version": "40.3"}]}
QUIET = "[agent.timing]\nsteady_interval_secs = 86400\n"
TYPESCRIPT = "/var/tmp/alice.typescript"


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    h = host_factory(script=SCRIPT, fragments={"50-quiet.toml": QUIET})
    h.run(["useradd", "--create-home", "--shell", "/bin/sh", "alice"])
    return h


def sessions(host: Container) -> list[str]:
    out = host.run(["loginctl", "list-sessions", "--no-legend"]).stdout
    return [line for line in out.splitlines() if "alice" in line]


def test_interactive_session_postpones_and_is_warned(host: Container) -> None:
    # A terminal login as PAM does it (login -f on a pty from script(1)): pam_systemd registers
    # a logind session with a TTY, login writes utmp, so logind's wall reaches that terminal.
    host.spawn(["env", "TERM=dumb", "script", "-qfec", "login -f alice", TYPESCRIPT])
    host.wait_for("alice's session", lambda: sessions(host), 20)
    assert re.search(r"pts/\d+", sessions(host)[0]), sessions(host)
    publish(host, "40.2")
    host.run(["zincati-py", "check"])
    doc = host.wait_for("postponed", lambda: status(host).get("postponed"), 60)
    assert doc, status(host)
    time.sleep(3)
    assert host.running(), "rebooted with alice logged in"
    scheduled = host.run(
        ["busctl", "get-property", "org.freedesktop.login1", "/org/freedesktop/login1",
         "org.freedesktop.login1.Manager", "ScheduledShutdown"],
    ).stdout  # fmt: skip
    # The warning is logind's scheduled (dry-run) reboot at the postponement limit; logind 252
    # shows it as "reboot" (the dry-run flag is not part of the property).
    m = re.fullmatch(r'\(st\) "(\w+)" (\d+)\s*', scheduled)
    assert m and m.group(1) in ("reboot", "dry-reboot"), scheduled
    assert int(m.group(2)) / 1e6 > time.time() + 60, scheduled
    # The warning reached alice's terminal through logind's wall.
    typescript = host.root / TYPESCRIPT.lstrip("/")
    host.wait_for(
        "wall message", lambda: "Broadcast message" in typescript.read_text("utf-8", "replace"), 20
    )
    text = typescript.read_text("utf-8", "replace")
    assert "40.2" in text or "reboot" in text.lower(), text[-1000:]
    # Logging out ends the postponement at once (SessionRemoved), not at max_postpone_secs.
    t0 = time.monotonic()
    host.run(["loginctl", "terminate-user", "alice"])
    host.expect_reboot(timeout=60)
    assert time.monotonic() - t0 < 45
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.2", doc


def test_block_inhibitor_of_another_user_is_waited_on_then_reboot(host: Container) -> None:
    # root holds a shutdown block inhibitor: for the agent (user zincati-py) real logind answers
    # CanReboot=challenge; polkit denies it reboot-ignore-inhibit (see test_host).
    holder = host.spawn(
        ["systemd-inhibit", "--what=shutdown", "--mode=block", "--who=backup",
         "--why=nightly backup", "sleep", "600"],
    )  # fmt: skip
    host.wait_for(
        "inhibitor",
        lambda: "backup" in host.run(["systemd-inhibit", "--list", "--no-pager"]).stdout,
        20,
    )
    publish(host, "40.3")
    host.run(["zincati-py", "check"])
    host.wait_for("staged", lambda: double_state(host).get("staged"), 60)
    time.sleep(5)  # long enough for a backoff retry or a wrong reboot to show
    assert host.running(), "rebooted through a block inhibitor"
    log = host.run(["journalctl", "-b", "-u", "zincati-py.service", "--no-pager", "-q"]).stdout
    assert "blocked by shutdown inhibitor" in log, log[-3000:]
    assert "CanReboot answered" not in log, log[-3000:]  # no refusal, no backoff
    doc = status(host)
    assert "inhibitor" in str(doc.get("reason")), doc
    # Release: the BlockInhibited change wakes the agent; the reboot follows within seconds.
    t0 = time.monotonic()
    host.run(["pkill", "-x", "systemd-inhibit"])  # inside the container: its fd closes
    holder.wait(10)
    host.expect_reboot(timeout=60)
    assert time.monotonic() - t0 < 20, "reboot came late: a backoff, not the signal"
    doc = wait_state(host, "reported steady", timeout=60)
    assert doc["booted"]["version"] == "40.3", doc
