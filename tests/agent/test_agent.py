"""``zincati-py agent`` end to end: a real subprocess, the rpm-ostree double, dbusmock's logind
and a private system bus. Nothing of ours is mocked."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from testbed.systemd import UserManager
from tests.agent.agent_harness import (
    AGENT_BUS_NAME,
    ZPY,
    Node,
    SignalRecorder,
    dbus_call,
    wait_for,
)

NEW = "40.20240115.3.0"
OLD = "40.20240101.3.0"


def reboots(node: Node) -> int:
    return len(node.logind_calls("Reboot")) + len(node.logind_calls("RebootWithFlags"))


def assert_stays(predicate: object, seconds: float, what: str) -> None:
    """``predicate`` holds for the whole of ``seconds`` (a "nothing happens" check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what  # type: ignore[operator]
        time.sleep(0.02)


def test_staged_update_detected_fast_and_reboots_exactly_once(node: Node) -> None:
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert reboots(node) == 0
    # Another tool stages the update: the agent learns it from PropertiesChanged/inotify.
    t0 = time.monotonic()
    node.control("Stage", "sb", NEW, True)
    wait_for(lambda: reboots(node) >= 1, 10, "logind Reboot")
    elapsed = time.monotonic() - t0
    # The double reboots on logind's Reboot: the agent sees the new boot and reports steady.
    node.wait_state("reported steady", agent=agent, booted=NEW)
    assert node.booted_version() == NEW
    latency = node.metric("zincati_py_decision_latency_seconds")
    assert latency is not None and latency < 0.5, latency
    assert elapsed < 3.0, elapsed
    assert_stays(lambda: reboots(node) == 1, 1.0, "exactly one reboot")
    assert node.metric("zincati_py_reboots_requested_total") == 1
    log = agent.log()
    assert "decision: rebooting: strategy immediate" in log
    assert "the update we rebooted into" in log


def test_check_now_from_the_cli_stages_and_reboots(node: Node) -> None:
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    rule = (
        "type='signal',interface='org.freedesktop.DBus.Properties',"
        "member='PropertiesChanged',path='/io/github/zincatipy/Agent1'"
    )
    with SignalRecorder(node.bus.address, rule, "PropertiesChanged") as recorder:
        r = node.cli("check", "--system-bus", node.bus.address)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: reboots(node) == 1, 15, "logind Reboot")
        node.wait_state("reported steady", agent=agent, booted=NEW)
        states = lambda: [  # noqa: E731
            m.body[1]["State"].value for m in recorder.signals if "State" in m.body[1]
        ]
        wait_for(lambda: states()[-1:] == ["reported steady"], 5, "State signal")
    # Every state the agent went through was announced with PropertiesChanged.
    assert "update staged" in states() and "update finalized" in states(), states()
    booted = [
        m.body[1]["BootedVersion"].value for m in recorder.signals if "BootedVersion" in m.body[1]
    ]
    assert booted[-1] == NEW
    # A second check finds nothing newer.
    r = node.cli("check", "--from-timer", "--system-bus", node.bus.address)
    assert r.returncode == 0, r.stderr
    doc = node.wait_state("no new update", agent=agent)
    assert doc["last_check_result"] == "no new update"
    assert reboots(node) == 1
    props = dbus_call(
        node.bus.address,
        AGENT_BUS_NAME,
        "/io/github/zincatipy/Agent1",
        "org.freedesktop.DBus.Properties",
        "GetAll",
        "s",
        "io.github.zincatipy.Agent1",
    )[0]
    assert props["State"].value == "no new update"
    assert props["BootedVersion"].value == NEW
    assert props["LastCheck"].value


def test_interactive_session_postpones_and_warns(node: Node) -> None:
    node.write_config("50-reboot.toml", "[agent.reboot]\nmax_postpone_secs = 2\n")
    node.add_session("c1", tty="pts/0", type="tty", user="alice")
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    doc = node.wait_state("update staged", agent=agent)
    wait_for(lambda: "interactive sessions" in (node.status() or {}).get("reason", ""), 5, "why")
    wait_for(lambda: node.logind_calls("SetWallMessage"), 5, "wall message")
    t_warned = time.monotonic()
    assert reboots(node) == 0
    wall = node.logind_calls("SetWallMessage")[0].args[0]
    assert NEW in wall
    doc = node.status() or {}
    assert doc["postponed"] is not None
    wait_for(lambda: reboots(node) == 1, 10, "reboot after the postponement")
    waited = time.monotonic() - t_warned
    assert 1.0 < waited < 5.0, waited
    assert "postponement of 2 s for interactive sessions" in agent.log()


def test_postponement_ends_when_the_last_interactive_session_logs_out(node: Node) -> None:
    node.write_config("50-reboot.toml", "[agent.reboot]\nmax_postpone_secs = 60\n")
    node.add_session("c1", tty="pts/0", type="tty", user="alice")
    node.add_session("c2", tty="tty2", type="tty", user="bob")
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    wait_for(lambda: node.logind_calls("SetWallMessage"), 5, "warning")
    wait_for(lambda: "interactive sessions" in (node.status() or {}).get("reason", ""), 5, "why")
    node.remove_session("c1")  # one interactive session is left: still postponed

    def only_bob() -> bool:
        reason = (node.status() or {}).get("reason", "")
        return "interactive sessions (bob" in reason and "alice" not in reason

    wait_for(only_bob, 5, "re-evaluated on the logout")
    assert_stays(lambda: reboots(node) == 0, 0.5, "still postponed for bob")
    t_logout = time.monotonic()
    node.remove_session("c2")
    wait_for(lambda: reboots(node) == 1, 5, "reboot once nobody is logged in")
    assert time.monotonic() - t_logout < 2.0  # on the signal, not at the 60 s deadline
    assert len(node.logind_calls("SetWallMessage")) == 1  # warned once
    assert "SessionRemoved c2" in agent.log()


def test_block_inhibitor_holds_the_reboot_until_released(node: Node) -> None:
    fd = node.inhibit("shutdown", "backup", "nightly")
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    assert "backup" in node.wait_reason("inhibitor")["reason"]
    assert_stays(lambda: reboots(node) == 0, 1.0, "held by the inhibitor")
    t0 = time.monotonic()
    os.close(fd)
    wait_for(lambda: reboots(node) == 1, 5, "reboot after release")
    assert time.monotonic() - t0 < 2.0


def test_another_users_block_inhibitor_is_waited_on_not_backed_off(node: Node) -> None:
    """With another user's block inhibitor real logind answers CanReboot "challenge" (the agent
    may not ignore inhibitors): the agent waits for the release signal and reboots at once."""
    fd = node.inhibit("shutdown", "backup", "nightly", uid=1000)
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    doc = node.wait_reason("inhibitor")
    assert "backup" in doc["reason"] and doc["recheck_at"] is None, doc  # the signal, no timer
    time.sleep(0.5)  # evaluations already woken by the staging's events settle
    asked = len(node.logind_calls("CanReboot"))
    # Waiting on the signal: no retries with backoff (they would come every 0.5-2 s).
    assert_stays(
        lambda: reboots(node) == 0 and len(node.logind_calls("CanReboot")) == asked,
        2.0,
        "held by the inhibitor, logind not asked again",
    )
    assert "CanReboot answered" not in agent.log()
    t0 = time.monotonic()
    os.close(fd)
    wait_for(lambda: reboots(node) == 1, 5, "reboot after release")
    assert time.monotonic() - t0 < 2.0
    blocked = 'zincati_update_agent_finalization_blocked_count{reason="%s"}'
    assert (node.metric(blocked % "block_inhibitor") or 0) >= 1
    assert node.metric(blocked % "logind_refused") is None


def test_updates_disabled_never_reboots(node: Node) -> None:
    node.write_config("50-off.toml", "[updates]\nenabled = false\n")
    agent = node.agent()
    doc = node.wait_state("disabled", agent=agent)
    assert doc["updates_enabled"] is False
    node.control("Stage", "sb", NEW, True)
    r = node.cli("check", "--system-bus", node.bus.address)
    assert r.returncode == 0
    assert_stays(
        lambda: reboots(node) == 0 and (node.status() or {}).get("state") == "disabled",
        1.5,
        "disabled: no reboot",
    )
    assert node.metric("zincati_update_agent_updates_enabled") == 0


def test_invalid_config_edit_keeps_last_good_config(node: Node) -> None:
    node.write_config("50-off.toml", "[updates]\nenabled = false\n")
    agent = node.agent()
    node.wait_state("disabled", agent=agent)
    # Invalid: the last good config (updates disabled) stays in force, visibly.
    node.write_config("50-off.toml", '[updates]\nenabled = true\nstrategy = "nope"\n')
    wait_for(
        lambda: (node.status() or {}).get("config", {}).get("valid") is False, 5, "invalid config"
    )
    doc = node.status() or {}
    assert doc["config"]["in_force"] == "last good configuration"
    assert any("nope" in p for p in doc["config"]["problems"])
    assert doc["state"] == "disabled"
    node.control("Stage", "sb", NEW, True)
    assert_stays(lambda: reboots(node) == 0 and agent.alive(), 1.0, "old config in force")
    human = node.cli("status", "--root", str(node.root))
    assert "INVALID" in human.stdout and "nope" in human.stdout
    # Fixed: applies without restart, and the staged update is handled at once.
    node.write_config("50-off.toml", "[updates]\nenabled = true\n")
    wait_for(lambda: reboots(node) == 1, 10, "reboot with the fixed config")
    assert agent.alive()
    assert "configuration changed: applying it" in agent.log()


def test_invalid_config_at_startup_runs_but_never_reboots(node: Node) -> None:
    node.write_config("50-bad.toml", '[updates]\nstrategy = "nope"\n')
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    node.wait_state("update staged", agent=agent)
    node.wait_reason("configuration is invalid", 5)
    assert_stays(lambda: reboots(node) == 0, 1.0, "no reboot while invalid")
    node.write_config("50-bad.toml", '[updates]\nstrategy = "immediate"\n')
    wait_for(lambda: reboots(node) == 1, 10, "reboot once valid")


def _sessions_node_with_pending_postponement(node: Node, secs: int) -> None:
    node.write_config("50-reboot.toml", f"[agent.reboot]\nmax_postpone_secs = {secs}\n")
    node.add_session("c1", tty="tty1", type="tty", user="alice")


def test_sigkill_during_postponement_keeps_the_deadline_and_warns_once(node: Node) -> None:
    _sessions_node_with_pending_postponement(node, 3)
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    wait_for(lambda: node.logind_calls("SetWallMessage"), 5, "warning")
    t_warned = time.monotonic()
    agent.kill()
    again = node.agent()
    wait_for(lambda: reboots(node) == 1, 10, "reboot at the original deadline")
    # The restarted agent resumed the persisted postponement: no new warning, no new 3 s.
    assert time.monotonic() - t_warned < 4.5
    assert len(node.logind_calls("SetWallMessage")) == 1
    node.wait_state("reported steady", agent=again, booted=NEW)
    assert_stays(lambda: reboots(node) == 1, 0.5, "one reboot")


def test_sigkill_in_every_state_never_reboots_twice(node_factory: Callable[..., Node]) -> None:
    # The double does not reboot by itself here, so the agent stays "update finalized".
    from testbed.rpmostree import Script  # noqa: F401  (script keys documented there)

    node = node_factory(
        {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": NEW, "available_after_checks": 0}],
            "transaction_delay": 0.02,
            "reboot_on_logind": False,
        }
    )
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    agent.kill()
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    node.wait_state("update finalized", agent=agent)
    # "update finalized" is announced just before logind is asked, then the call is recorded.
    wait_for(lambda: reboots(node) == 1, 5, "logind Reboot")
    state_file = node.root / "var/lib/zincati-py/state.json"
    wait_for(
        lambda: (json.loads(state_file.read_text())["reboot_requested"] or {}).get("called"),
        5,
        "the reboot call recorded",
    )
    state = json.loads(state_file.read_text())
    assert state["reboot_requested"]["version"] == NEW
    assert state["reboot_requested"]["called"] is True
    for _ in range(3):
        agent.kill()
        agent = node.agent()
        doc = node.wait_state("update finalized", agent=agent)
        assert "waiting for it" in doc["reason"]
        assert_stays(lambda: reboots(node) == 1, 0.5, "no second reboot after restart")
    # The simulated reboot happens now; the agent recognises the update it asked for.
    assert node.control("Reboot") == [NEW]
    doc = node.wait_state("reported steady", agent=agent, booted=NEW)
    assert doc["reboot_requested"] is None
    agent.kill()
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert_stays(lambda: reboots(node) == 1, 0.5, "still one reboot")


def test_sigkill_between_the_reboot_record_and_logind_then_another_reboot(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """Killed after recording "reboot requested" but before unlocking finalization and asking
    logind, then the host reboots for another reason (the locked update is discarded, the old
    deployment boots): the update is not marked failed; it is staged and applied again."""
    node = node_factory(
        {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": NEW, "available_after_checks": 0}],
            "transaction_delay": 0.02,
            "reboot_on_logind": False,
        }
    )
    boot_id = node.root / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.write_text("boot-1\n")
    # The unlock (the first step after the record) stops until the test lets it go: a window.
    inside, go = tmp_path / "inside-window", tmp_path / "go"
    gate = (
        f'echo $$ > {inside}; for i in $(seq 600); do [ -e {go} ] && exec "$@"; sleep 0.05; '
        "done; exit 1"
    )
    agent = node.agent(
        ostree_command=("sh", "-c", shlex.quote(gate), "gate", *node.double.ostree_command)
    )
    node.wait_state("reported steady", agent=agent)
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    wait_for(inside.exists, 10, "the agent inside the window")
    state_file = node.root / "var/lib/zincati-py/state.json"
    state = json.loads(state_file.read_text())
    assert state["reboot_requested"]["version"] == NEW
    assert state["reboot_requested"]["called"] is False
    agent.kill()
    os.kill(int(inside.read_text()), signal.SIGKILL)  # the gate would unlock later otherwise
    # An interrupted atomic write's leftover, swept at the next start.
    leftover = state_file.with_name(".state.json.k1ll3d.tmp")
    leftover.write_text("{")
    # The unrelated reboot: the finalization-locked update is discarded, the old one boots.
    assert node.control("Reboot") == [OLD]
    boot_id.write_text("boot-2\n")
    assert reboots(node) == 0
    agent = node.agent()
    node.wait_state("reported steady", agent=agent, booted=OLD)
    wait_for(lambda: not leftover.exists(), 5, "the leftover temp file removed")
    state = json.loads(state_file.read_text())
    assert state["failed"] == [] and state["reboot_requested"] is None
    assert "that reboot was not ours" in agent.log()
    # The update is applied on the next check, as if nothing had happened.
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    wait_for(lambda: reboots(node) == 1, 10, "logind Reboot")
    state = json.loads(state_file.read_text())
    assert state["failed"] == [] and state["reboot_requested"]["called"] is True
    assert node.control("Reboot") == [NEW]
    boot_id.write_text("boot-3\n")
    agent.kill()
    agent = node.agent()
    doc = node.wait_state("reported steady", agent=agent, booted=NEW)
    assert doc["reboot_requested"] is None
    assert_stays(lambda: reboots(node) == 1, 0.5, "one reboot")


def test_sigkill_before_asking_logind_decides_again_in_the_same_boot(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """Killed inside the same window, restarted without a reboot: logind was never asked, so
    the restarted agent decides again at once (no 15-minute wait) and reboots once."""
    node = node_factory(
        {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": NEW, "available_after_checks": 0}],
            "transaction_delay": 0.02,
            "reboot_on_logind": False,
        }
    )
    inside, go = tmp_path / "inside-window", tmp_path / "go"
    gate = (
        f'echo $$ > {inside}; for i in $(seq 600); do [ -e {go} ] && exec "$@"; sleep 0.05; '
        "done; exit 1"
    )
    agent = node.agent(
        ostree_command=("sh", "-c", shlex.quote(gate), "gate", *node.double.ostree_command)
    )
    node.wait_state("reported steady", agent=agent)
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    wait_for(inside.exists, 10, "the agent inside the window")
    agent.kill()
    os.kill(int(inside.read_text()), signal.SIGKILL)
    assert reboots(node) == 0
    agent = node.agent()
    wait_for(lambda: reboots(node) == 1, 10, "logind Reboot by the restarted agent")
    assert "logind was never asked" in agent.log()
    node.wait_state("update finalized", agent=agent)
    assert_stays(lambda: reboots(node) == 1, 0.5, "one reboot")


def test_reboot_now_skips_the_postponement(node: Node) -> None:
    _sessions_node_with_pending_postponement(node, 600)
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    nothing = node.cli("reboot-now", "--system-bus", node.bus.address)
    assert nothing.returncode == 75, nothing.stderr
    assert "no update is staged" in nothing.stderr
    node.control("Stage", "sb", NEW, True)
    wait_for(lambda: node.logind_calls("SetWallMessage"), 5, "warning")
    assert reboots(node) == 0
    r = node.cli("reboot-now", "--system-bus", node.bus.address)
    assert r.returncode == 0, r.stderr
    assert NEW in r.stdout
    wait_for(lambda: reboots(node) == 1, 5, "reboot")
    assert "RebootNow requested by" in agent.log()


def test_sd_notify_ready_status_watchdog_stopping(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        agent = node.agent(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        seen: list[str] = []

        def recv_until(key: str) -> None:
            deadline = time.monotonic() + 10
            while not any(key in m for m in seen):
                assert time.monotonic() < deadline, f"no {key} in {seen}"
                seen.append(sock.recv(4096).decode())

        recv_until("READY=1")
        ready = next(m for m in seen if "READY=1" in m)
        assert "STATUS=" in ready
        recv_until("STATUS=reported steady")
        before = sum("WATCHDOG=1" in m for m in seen)
        drain_until = time.monotonic() + 0.6
        while (left := drain_until - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                seen.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        sock.settimeout(10)
        # 200 ms WatchdogSec → a ping every 100 ms.
        assert sum("WATCHDOG=1" in m for m in seen) - before >= 3
        agent.process.send_signal(15)
        recv_until("STOPPING=1")
        assert agent.process.wait(10) == 0
    doc = node.status() or {}
    assert doc["state"] == "end"
    assert node.cli("status", "--root", str(node.root)).returncode == 0


def test_second_agent_on_the_same_bus_name_exits_75(node: Node) -> None:
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    other = node.agent()
    assert other.process.wait(30) == 75
    assert "another agent is running" in other.log()


def test_config_dir_created_later_is_watched(node: Node) -> None:
    assert not (node.root / "etc").exists()
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    # /etc/zincati/config.d does not exist yet: its nearest ancestor is watched.
    node.write_config("50-off.toml", "[updates]\nenabled = false\n")
    node.wait_state("disabled", agent=agent, timeout=5)
    (node.config_dir / "50-off.toml").unlink()
    node.wait_state("reported steady", agent=agent, timeout=5)
    assert "configuration changed: applying it" in agent.log()


def test_file_strategy_wakes_the_agent_when_the_marker_appears(node: Node) -> None:
    # The file strategy resolves its path under --root, like every other path.
    marker = node.root / "run/allow-reboot"
    node.write_config(
        "50-file.toml", '[updates]\nstrategy = "file"\nfile.path = "/run/allow-reboot"\n'
    )
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    node.control("Stage", "sb", NEW, True)
    doc = node.wait_reason("does not exist")
    assert doc["state"] == "update staged" and doc["strategy"]["name"] == "file"
    assert_stays(lambda: reboots(node) == 0, 0.5, "gate closed")
    t0 = time.monotonic()
    marker.touch()
    wait_for(lambda: reboots(node) == 1, 5, "reboot once the marker exists")
    assert time.monotonic() - t0 < 2.0
    # The CLI's wake (window timers) reaches the agent and is logged.
    r = node.cli("wake", "window", "--system-bus", node.bus.address)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "wake requested: window" in agent.log(), 5, "wake logged")


def test_valid_config_change_asks_systemd_to_reload(
    node: Node, user_manager_factory: Callable[..., UserManager]
) -> None:
    manager = user_manager_factory(node.root)
    timer = manager.generator_output / "zincati-py-check.timer"

    def unit() -> str:
        try:  # systemd recreates the generator directory on every run
            return timer.read_text()
        except FileNotFoundError:
            return ""

    wait_for(unit, 15, "generated check timer")
    assert "OnCalendar=" not in unit()
    agent = node.agent(ZINCATI_PY_SYSTEMD_BUS=manager.bus_address)
    node.wait_state("reported steady", agent=agent)
    node.write_config("60-cron.toml", '[agent.timing]\ncheck_cron = "0 3 * * *"\n')
    # The agent's daemon-reload re-ran the generator with the new configuration.
    wait_for(lambda: "OnCalendar=" in unit(), 15, "regenerated check timer")
    wait_for(lambda: "asked systemd to reload" in agent.log(), 5, "reload logged")


def test_sigkill_during_a_check_does_not_lose_the_request(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory(
        {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": NEW, "available_after_checks": 0}],
            "transaction_delay": 1.5,  # a check that takes a while
        }
    )
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    assert node.cli("check", "--system-bus", node.bus.address).returncode == 0
    wait_for(lambda: (node.status() or {}).get("action") == "check", 5, "check running")
    agent.kill()
    # The restarted agent owes the check: it runs it, stages and reboots, once.
    again = node.agent()
    wait_for(lambda: reboots(node) == 1, 20, "reboot after the resumed check")
    node.wait_state("reported steady", agent=again, booted=NEW)
    state = json.loads((node.root / "var/lib/zincati-py/state.json").read_text())
    assert state["extra"]["check_pending"] is False


def test_fleet_lock_lets_one_node_reboot_at_a_time(
    fleet_factory: Callable[..., Node], tmp_path: Path
) -> None:
    from testbed.etcd import free_port

    port = free_port()
    server_conf = tmp_path / "fleetlock.toml"
    server_conf.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\n"
    )
    with (tmp_path / "fleetlock.log").open("wb") as log:
        server = subprocess.Popen(
            [*ZPY, "fleetlock", "serve", "--config", str(server_conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        script = {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": NEW}],
            "transaction_delay": 0.02,
            "reboot_on_logind": False,  # the test reboots each node, as the demo does
        }
        nodes = [fleet_factory(f"node{i}", script) for i in range(2)]
        agents = []
        for i, n in enumerate(nodes):
            # steady_interval_secs caps the strategy's retry backoff: 2 s keeps this quick.
            n.write_config(
                "40-fleet.toml",
                f'[identity]\nnode_uuid = "{i:032x}"\n[agent.timing]\nsteady_interval_secs = 2\n'
                f'[updates]\nstrategy = "fleet_lock"\n'
                f'[updates.fleet_lock]\nbase_url = "http://127.0.0.1:{port}"\n',
            )
            agents.append(n.agent())
        for n, a in zip(nodes, agents, strict=True):
            n.wait_state("reported steady", agent=a, timeout=30)
        for n in nodes:
            n.control("Stage", "sb", NEW, True)
        first = wait_for(
            lambda: next((n for n in nodes if reboots(n) == 1), None), 20, "one node rebooting"
        )
        second = nodes[1 - nodes.index(first)]
        first_agent, second_agent = agents[nodes.index(first)], agents[nodes.index(second)]
        # The other node waits for the slot: its pre-reboot request is held by our server
        # (long poll, fleet-lock-wait) until its turn comes.
        wait_for(lambda: (second.status() or {}).get("state") == "update staged", 10, "staged")
        assert_stays(lambda: reboots(second) == 0, 2.5, "second node waits for the slot")
        assert (first.status() or {})["lock_state"] == "held"
        # The first node "reboots" into the update and reports steady, which frees the slot.
        assert first.control("Reboot") == [NEW]
        t_freed = time.monotonic()
        first.wait_state("reported steady", agent=first_agent, booted=NEW, timeout=20)
        wait_for(lambda: reboots(second) == 1, 20, "second node gets the slot")
        assert reboots(first) == 1
        # Nothing on its own bus told it, and no timer: the held request was answered at once.
        assert time.monotonic() - t_freed < 10
        assert "reboot slot granted" in second_agent.log()
    finally:
        server.terminate()
        server.wait(10)


def test_rpm_ostree_unreachable_at_start_then_appearing(node_factory: Callable[..., Node]) -> None:
    node = node_factory(start_double=False)
    agent = node.agent()
    doc = node.wait_state("start", agent=agent)
    wait_for(
        lambda: "cannot read deployments" in (node.status() or {}).get("reason", ""),
        10,
        "the reason it waits",
    )
    assert agent.alive()
    # The double appearing (its files: inotify; its bus name: NameOwnerChanged) is an event.
    node.double.start()
    doc = node.wait_state("reported steady", agent=agent, booted=OLD)
    assert doc["booted"]["version"] == OLD
