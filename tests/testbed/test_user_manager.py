"""The systemd --user harness: starts, runs our generator, loads units, leaves nothing behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from testbed.systemd import UserManager

# A stand-in generator (the harness must work before and independently of ours): records its
# arguments and ZINCATI_PY_ROOT and emits one timer + service.
FAKE_GENERATOR = """#!/bin/sh
echo "args=$# root=$ZINCATI_PY_ROOT" >> "$ZINCATI_PY_ROOT/generator-calls"
mkdir -p "$3/timers.target.wants"
printf '[Timer]\\nOnCalendar=*-*-* 04:00:00\\n' > "$3/fake.timer"
printf '[Service]\\nType=oneshot\\nExecStart=/bin/sleep 30\\n' > "$3/fake.service"
ln -s ../fake.timer "$3/timers.target.wants/fake.timer"
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (it is only waiting for its parent to reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _fake_generator(tmp_path: Path) -> Path:
    script = tmp_path / "fake-generator"
    script.write_text(FAKE_GENERATOR)
    script.chmod(0o755)
    return script


def test_runs_generator_with_root_and_loads_its_timer(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    manager = user_manager_factory(root, generator=_fake_generator(tmp_path))
    assert (root / "generator-calls").read_text() == f"args=3 root={root}\n"
    assert (manager.generator_output / "fake.timer").exists()
    timers = manager.systemctl("list-timers", "--all", "--plain", "--no-legend")
    assert "fake.timer" in timers and "fake.service" in timers
    # Every daemon-reload re-runs the generator.
    manager.daemon_reload()
    assert (root / "generator-calls").read_text().count("args=3") == 2


def test_loads_and_runs_a_unit_from_unit_dir(
    user_manager_factory: Callable[..., UserManager],
) -> None:
    user_manager = user_manager_factory(None)  # no generator at all
    (user_manager.unit_dir / "hello.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/echo hello-from-the-sandbox\n"
    )
    user_manager.daemon_reload()
    user_manager.systemctl("start", "hello.service")  # oneshot: returns when it has finished
    state = user_manager.systemctl("show", "-P", "Result", "hello.service").strip()
    assert state == "success"
    # Unit output goes to the manager's log (no journald in the sandbox).
    assert "hello-from-the-sandbox" in user_manager.log()


def test_clients_outside_the_namespace_reach_the_manager(user_manager: UserManager) -> None:
    from pystemd.dbuslib import DBusAddress

    with DBusAddress(user_manager.bus_address.encode()) as bus:
        state = bus.get_property(
            b"org.freedesktop.systemd1",
            b"/org/freedesktop/systemd1",
            b"org.freedesktop.systemd1.Manager",
            b"SystemState",
            b"s",
        )
    assert state in (b"running", b"degraded")
    # The host's /run/systemd is not what the manager sees: it is on its own tmpfs.
    with open(f"/proc/{user_manager.pid}/mountinfo") as f:
        assert any(" /run/systemd " in line and "tmpfs" in line for line in f)


def test_stop_leaves_no_process_behind(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    manager = user_manager_factory(root, generator=_fake_generator(tmp_path))
    manager.systemctl("start", "--no-block", "fake.service")
    deadline = time.monotonic() + 10
    main_pid = 0
    while time.monotonic() < deadline and not main_pid:
        main_pid = int(manager.systemctl("show", "-P", "MainPID", "fake.service").strip() or 0)
        time.sleep(0.05)
    assert main_pid and _alive(main_pid)
    pids = [manager.pid, main_pid]
    bus_pid = int(manager.systemctl("show", "-P", "MainPID", "dbus.service").strip())
    assert bus_pid and _alive(bus_pid)
    pids.append(bus_pid)
    cgroups = list(manager._cgroups)
    directory = manager.directory
    manager.stop()
    assert [p for p in pids if _alive(p)] == []
    assert not directory.exists()
    assert [c for c in cgroups if c.exists()] == []


def test_two_managers_do_not_share_unit_cgroups(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    gen = _fake_generator(tmp_path)
    # Same directory basename on purpose (the demo names every node's directory "systemd").
    a = user_manager_factory(root, generator=gen, directory=tmp_path / "a" / "systemd")
    b = user_manager_factory(root, generator=gen, directory=tmp_path / "b" / "systemd")
    cgroups = [Path(f"/proc/{m.pid}/cgroup").read_text() for m in (a, b)]
    assert all("zincati-py-sandbox-" in text for text in cgroups)
    assert cgroups[0] != cgroups[1]
    a.systemctl("start", "--no-block", "fake.service")
    b.systemctl("start", "--no-block", "fake.service")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [m.systemctl("is-active", "fake.service", check=False).strip() for m in (a, b)]
        if states == ["activating", "activating"]:
            break
        time.sleep(0.05)
    b.systemctl("stop", "fake.service")
    # Same unit name, separate cgroups: stopping b's job must not kill a's.
    assert a.systemctl("is-active", "fake.service", check=False).strip() == "activating"
