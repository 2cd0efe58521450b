"""The installed product on a real systemd 252 PID 1: generator timers, the hardened agent,
status for root and for others, the D-Bus policy and the polkit rules as shipped.

One container for the module (no update is published: nothing here reboots).
"""

from __future__ import annotations

import re

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import status

AGENT = ("io.github.zincatipy.Agent1", "/io/github/zincatipy/Agent1", "io.github.zincatipy.Agent1")
WINDOW = """\
[updates]
strategy = "periodic"

[updates.periodic]
time_zone = "UTC"

[[updates.periodic.window]]
days = ["Sat", "Sun"]
start_time = "23:30"
length_minutes = 60
"""


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    return host_factory(script={"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}]})


def timers(host: Container) -> list[str]:
    out = host.run(["systemctl", "list-timers", "--all", "--no-legend", "--plain"]).stdout
    return sorted(set(re.findall(r"zincati-py-[\w-]+\.timer", out)))


def test_generator_timer_listed_after_boot(host: Container) -> None:
    assert timers(host) == ["zincati-py-check.timer"]
    show = host.run(
        ["systemctl", "show", "zincati-py-check.timer", "-p", "ActiveState", "-p", "FragmentPath"]
    ).stdout
    assert "ActiveState=active" in show
    # Written by our generator at boot, not installed.
    assert re.search(r"FragmentPath=/run/systemd/generator(\.early|\.late)?/zincati-py-check", show)
    line = next(
        x for x in host.run(["systemctl", "list-timers", "--no-legend"]).stdout.splitlines()
        if "zincati-py-check.timer" in x
    )  # fmt: skip
    assert not line.startswith("-"), f"no next elapse: {line}"


def test_agent_ready_under_shipped_hardening(host: Container) -> None:
    props = dict(
        line.split("=", 1)
        for line in host.run(
            ["systemctl", "show", "zincati-py.service", "-p", "ActiveState", "-p", "SubState",
             "-p", "Type", "-p", "NRestarts", "-p", "FragmentPath", "-p", "DropInPaths",
             "-p", "MainPID", "-p", "StatusText", "-p", "User"],
        ).stdout.splitlines()
    )  # fmt: skip
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["NRestarts"] == "0", props
    # (Debian's merged /usr: systemd names it by its /lib path.)
    assert props["FragmentPath"] in (
        "/usr/lib/systemd/system/zincati-py.service",
        "/lib/systemd/system/zincati-py.service",
    ), props
    assert props["DropInPaths"] == "", props  # the unit exactly as shipped
    assert props["User"] == "zincati-py"
    pid = props["MainPID"]
    proc_status = host.run(["cat", f"/proc/{pid}/status"]).stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", proc_status, re.M))
    uid = host.run(["id", "-u", "zincati-py"]).stdout.strip()
    assert fields["Uid"].split()[0] == uid
    assert fields["NoNewPrivs"] == "1"
    assert fields["CapEff"] == fields["CapBnd"] == "0000000000000000"
    assert fields["Seccomp"] == "2"  # SystemCallFilter= in force
    # systemd's own verdict on the live unit (the packaging test measures the file offline).
    out = host.run(["systemd-analyze", "security", "--no-pager", "zincati-py.service"]).stdout
    m = re.search(r"Overall exposure level for zincati-py.service: ([\d.]+)", out)
    assert m and float(m.group(1)) <= 3.0, out[-400:]


def test_status_as_root_and_as_unprivileged_user(host: Container) -> None:
    as_root = status(host)
    as_nobody = status(host, user="nobody")
    assert as_root["state"] == as_nobody["state"] == "reported steady"
    assert as_root["booted"]["version"] == as_nobody["booted"]["version"] == "40.1"
    text = host.run(["zincati-py", "status"], user="nobody").stdout
    assert "reported steady" in text


def call(host: Container, member: str, user: str | None) -> tuple[int, str]:
    """``dbus-send`` (prints the whole error, unlike busctl) to the agent's ``member``."""
    proc = host.run(
        ["dbus-send", "--system", "--print-reply", f"--dest={AGENT[0]}", AGENT[1],
         f"{AGENT[2]}.{member}"],
        user=user, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_dbus_policy_denies_unprivileged_check_and_reboot(host: Container) -> None:
    rc, out = call(host, "CheckNow", "nobody")
    # Refused by dbus-daemon's policy (io.github.zincatipy.Agent1.conf) before the agent sees it.
    assert rc != 0 and "AccessDenied: Rejected send message" in out, out
    rc, out = call(host, "RebootNow", "nobody")
    # Let through by the policy, refused by the agent after polkit said no for uid 65534.
    assert rc != 0 and "AccessDenied: RebootNow needs uid 0 or polkit" in out, out
    assert "(caller uid 65534)" in out
    # CheckNow is root's; RebootNow would reboot, root's answer to it is tested in test_update.
    rc, out = call(host, "CheckNow", None)
    assert rc == 0, out


# (action, details, allowed for zincati-py); nobody is allowed none of them.
ACTIONS = [
    ("org.projectatomic.rpmostree1.upgrade", (), True),
    ("org.projectatomic.rpmostree1.deploy", (), True),
    ("org.projectatomic.rpmostree1.finalize-deployment", (), True),
    ("org.projectatomic.rpmostree1.client-management", (), True),
    ("org.projectatomic.rpmostree1.reload-daemon", (), True),
    ("org.projectatomic.rpmostree1.rebase", (), False),
    ("org.projectatomic.rpmostree1.rollback", (), True),  # a failed health gate (issue 16)
    ("org.freedesktop.login1.reboot", (), True),
    ("org.freedesktop.login1.reboot-multiple-sessions", (), True),
    ("org.freedesktop.login1.reboot-ignore-inhibit", (), False),
    ("org.freedesktop.login1.power-off", (), False),
    ("org.freedesktop.login1.set-wall-message", (), True),
    ("org.freedesktop.systemd1.reload-daemon", (), True),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-finalize.service", "start"), True),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-finalize.service", "stop"), False),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py.service", "start"), False),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-window-1.timer", "start"), True),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-window-1.timer", "stop"), True),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-check.timer", "reset-failed"), True),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-check.service", "start"), False),
    ("org.freedesktop.systemd1.manage-units", ("sshd.service", "start"), False),
    ("org.freedesktop.systemd1.manage-units", ("zincati-py-x.timer", "restart"), False),
]


def pkcheck_all(host: Container, user: str) -> dict[tuple[str, tuple[str, ...]], int]:
    """``pkcheck`` (as root) of every action for a process of ``user``; exit codes."""
    lines = []
    for action, details, _ in ACTIONS:
        extra = f" --detail unit {details[0]} --detail verb {details[1]}" if details else ""
        lines.append(f'pkcheck -a {action} -p "$pid"{extra} >/dev/null 2>&1; echo "$?"')
    # setpriv execs: $! is the sleeping process of the user, the subject polkit is asked about.
    script = (
        f"setpriv --reuid={user} --regid=$(id -g {user}) --init-groups sleep 60 & pid=$!\n"
        # Ask only once the process is the user's sleep (before the exec it is root's shell).
        f'for _ in $(seq 100); do [ "$(stat -c %U /proc/$pid)" = {user} ] &&'
        ' [ "$(cat /proc/$pid/comm)" = sleep ] && break; sleep 0.05; done\n'
        + "\n".join(lines)
        + "\nkill $pid\n"
    )
    out = host.sh(script, timeout=120).stdout.split()
    assert len(out) == len(ACTIONS), out
    return {(a, d): int(code) for (a, d, _), code in zip(ACTIONS, out, strict=True)}


def test_polkit_allows_exactly_what_the_rules_intend(host: Container) -> None:
    agent = pkcheck_all(host, "zincati-py")
    nobody = pkcheck_all(host, "nobody")
    wrong = []
    for action, details, allowed in ACTIONS:
        # pkcheck: 0 authorized, 1 not authorized, 2 challenge (auth_admin*: nobody may not
        # either, it has no polkit agent), 3 dismissed.
        if (agent[(action, details)] == 0) != allowed:
            wrong.append(f"zincati-py {action} {details}: pkcheck {agent[(action, details)]}")
        if nobody[(action, details)] == 0:
            wrong.append(f"nobody {action} {details}: authorized")
    assert not wrong, "\n".join(wrong)


def test_config_change_adds_and_removes_a_timer_through_polkit(host: Container) -> None:
    fragment = "/etc/zincati/config.d/55-window.toml"
    host.run(["sh", "-c", f"cat > {fragment}.tmp && mv {fragment}.tmp {fragment}"], input=WINDOW)

    # The agent (user zincati-py) sees the fragment, asks systemd to reload (polkit:
    # reload-daemon), the generator writes the window timer, the agent starts it (polkit:
    # manage-units on zincati-py-*.timer).
    def active() -> bool:
        proc = host.run(["systemctl", "is-active", "zincati-py-window-1.timer"], check=False)
        return proc.stdout.strip() == "active"

    host.wait_for("window timer started", active, 30)
    assert "zincati-py-window-1.timer" in timers(host)
    host.wait_for("strategy periodic", lambda: "periodic" in str(status(host)["strategy"]), 15)
    host.run(["rm", fragment])
    host.wait_for("window timer gone", lambda: "zincati-py-window-1.timer" not in timers(host), 30)
    assert timers(host) == ["zincati-py-check.timer"]
    # The agent itself did it, as zincati-py: polkit said yes, nobody was root.
    log = host.journal("-b", "-u", "zincati-py.service")
    assert "Traceback" not in log
    assert status(host)["config"]["valid"]
