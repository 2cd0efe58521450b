"""polkit rules (evaluated by a JavaScript engine, as polkitd does), the polkit action and
the D-Bus policy for the agent's bus name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

PACKAGING = Path(__file__).resolve().parent.parent.parent / "packaging"
RULES = PACKAGING / "polkit" / "zincati-py.rules"
POLICY = PACKAGING / "polkit" / "io.github.zincatipy.policy"
DBUS_CONF = PACKAGING / "dbus" / "io.github.zincatipy.Agent1.conf"
BUS_NAME = "io.github.zincatipy.Agent1"

# The polkit JavaScript API subset the rules may use; polkit.Result.NOT_HANDLED is null there.
HARNESS = r"""
const fs = require("fs");
const rules = [];
const polkit = {
  Result: {NO: "no", YES: "yes", AUTH_SELF: "auth_self", AUTH_SELF_KEEP: "auth_self_keep",
           AUTH_ADMIN: "auth_admin", AUTH_ADMIN_KEEP: "auth_admin_keep", NOT_HANDLED: null},
  addRule: (f) => rules.push(f),
  addAdminRule: () => {},
  log: () => {},
  spawn: () => { throw new Error("rules must not spawn"); },
};
(new Function("polkit", fs.readFileSync(process.env.POLKIT_RULES, "utf8")))(polkit);
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const results = cases.map((c) => {
  const action = {id: c.action, lookup: (key) => (c.details || {})[key]};
  const subject = {user: c.user, groups: [], local: true, active: false, pid: 1234,
                   isInGroup: () => false, isInNetGroup: () => false};
  for (const rule of rules) {
    const r = rule(action, subject);
    if (r !== null && r !== undefined) return r;
  }
  return null;
});
process.stdout.write(JSON.stringify(results));
"""

GRANTED = (
    "org.projectatomic.rpmostree1.upgrade",
    "org.projectatomic.rpmostree1.deploy",
    "org.projectatomic.rpmostree1.finalize-deployment",
    "org.projectatomic.rpmostree1.client-management",
    "org.projectatomic.rpmostree1.reload-daemon",
    "org.projectatomic.rpmostree1.rollback",
    "org.freedesktop.login1.reboot",
    "org.freedesktop.login1.reboot-multiple-sessions",
    "org.freedesktop.login1.set-wall-message",
    "org.freedesktop.systemd1.reload-daemon",
)
NOT_GRANTED = (
    "org.projectatomic.rpmostree1.rebase",
    "org.projectatomic.rpmostree1.override",
    "org.projectatomic.rpmostree1.install-uninstall-packages",
    "org.projectatomic.rpmostree1.bootconfig",
    "org.projectatomic.rpmostree1.cleanup",
    "org.projectatomic.rpmostree1.cancel",
    "org.projectatomic.rpmostree1.repo-refresh",
    "org.freedesktop.login1.reboot-ignore-inhibit",
    "org.freedesktop.login1.power-off",
    "io.github.zincatipy.reboot-now",
)


def evaluate(cases: list[dict[str, Any]]) -> list[str | None]:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "evaluating the polkit rules needs node (apt-get install nodejs)"
    proc = subprocess.run(
        [node, "-e", HARNESS],
        input=json.dumps(cases),
        env={"POLKIT_RULES": str(RULES), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[str | None] = json.loads(proc.stdout)
    assert len(results) == len(cases)
    return results


@pytest.mark.nodejs
def test_rules_grant_the_agent_user_exactly_what_it_uses() -> None:
    cases = [{"action": a, "user": "zincati-py"} for a in GRANTED + NOT_GRANTED]
    assert evaluate(cases) == ["yes"] * len(GRANTED) + [None] * len(NOT_GRANTED)


@pytest.mark.nodejs
@pytest.mark.parametrize("user", ["root", "core", "zincati-py-fleetlock", "zincati"])
def test_rules_grant_nothing_to_other_users(user: str) -> None:
    cases: list[dict[str, Any]] = [{"action": a, "user": user} for a in GRANTED + NOT_GRANTED]
    cases.append(
        {
            "action": "org.freedesktop.systemd1.manage-units",
            "user": user,
            "details": {"unit": "zincati-py-finalize.service", "verb": "start"},
        }
    )
    assert evaluate(cases) == [None] * len(cases)


@pytest.mark.nodejs
def test_rules_let_the_agent_start_only_the_finalize_unit_and_manage_our_timers() -> None:
    manage = "org.freedesktop.systemd1.manage-units"
    details = [
        ({"unit": "zincati-py-finalize.service", "verb": "start"}, "yes"),
        ({"unit": "zincati-py-finalize.service", "verb": "stop"}, None),
        ({"unit": "zincati-py-finalize.service", "verb": "restart"}, None),
        ({"unit": "zincati-py-check.service", "verb": "start"}, None),
        ({"unit": "zincati-py-schedule-backup.service", "verb": "start"}, None),
        ({"unit": "zincati-py-check.timer", "verb": "start"}, "yes"),
        ({"unit": "zincati-py-window-2.timer", "verb": "stop"}, "yes"),
        ({"unit": "zincati-py-schedule-backup.timer", "verb": "reset-failed"}, "yes"),
        ({"unit": "zincati-py-check.timer", "verb": "restart"}, None),
        ({"unit": "other-zincati-py-x.timer", "verb": "start"}, None),
        ({"unit": "zincati-py-x.timer.d/evil.timer", "verb": "start"}, None),
        ({"unit": "sshd.service", "verb": "start"}, None),
        # [agent.hooks]: instances of the generated template, start only (issue 16).
        ({"unit": "zincati-py-hook@rolled-back-1-2-3.service", "verb": "start"}, "yes"),
        ({"unit": "zincati-py-hook@rolled-back-1.service", "verb": "stop"}, None),
        ({"unit": "zincati-py-hook@.service", "verb": "start"}, None),
        ({"unit": "zincati-py-hook@x/../sshd.service", "verb": "start"}, None),
        ({}, None),
    ]
    cases = [{"action": manage, "user": "zincati-py", "details": d} for d, _ in details]
    assert evaluate(cases) == [want for _, want in details]


@pytest.mark.nodejs
def test_reboot_now_action_lets_the_agent_ask_about_its_callers() -> None:
    root = ET.parse(POLICY).getroot()
    actions = {a.get("id"): a for a in root.iter("action")}
    assert set(actions) == {"io.github.zincatipy.reboot-now"}
    action = actions["io.github.zincatipy.reboot-now"]
    annotations = {a.get("key"): a.text for a in action.iter("annotate")}
    # polkit answers CheckAuthorization about another user's process only to root and to the
    # identities in this annotation; the agent runs as zincati-py.
    assert annotations == {"org.freedesktop.policykit.owner": "unix-user:zincati-py"}
    defaults_element = action.find("defaults")
    assert defaults_element is not None
    defaults = {d.tag: d.text for d in defaults_element}
    assert defaults == {
        "allow_any": "auth_admin",
        "allow_inactive": "auth_admin",
        "allow_active": "auth_admin_keep",
    }


def test_dbus_policy_owner_and_callers() -> None:
    root = ET.parse(DBUS_CONF).getroot()
    policies = {
        (p.get("user"), p.get("context")): [dict(rule.attrib) | {"": rule.tag} for rule in p]
        for p in root.iter("policy")
    }
    assert policies[("zincati-py", None)] == [{"": "allow", "own": BUS_NAME}]
    assert policies[("root", None)] == [{"": "allow", "send_destination": BUS_NAME}]
    default = policies[(None, "default")]
    assert all(rule[""] == "allow" and rule["send_destination"] == BUS_NAME for rule in default)
    members = {(r["send_interface"], r.get("send_member")) for r in default}
    assert (BUS_NAME, "RebootNow") in members
    assert (BUS_NAME, "CheckNow") not in members and (BUS_NAME, None) not in members
    assert ("org.freedesktop.DBus.Properties", "Set") not in members
    # Nobody else may own the name.
    assert sum(1 for rule in root.iter("allow") if rule.get("own")) == 1


@pytest.mark.dbus
def test_dbus_daemon_accepts_the_policy(tmp_path: Path) -> None:
    daemon = shutil.which("dbus-daemon")
    assert daemon, "needs dbus-daemon (apt-get install dbus)"
    config = tmp_path / "bus.conf"
    config.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<busconfig>"
        f"<listen>unix:path={tmp_path}/bus</listen>"
        '<policy context="default"><allow user="*"/></policy>'
        f"<include>{DBUS_CONF}</include></busconfig>\n"
    )
    # --print-address makes it start, parse every file and exit cleanly on SIGTERM; a config
    # error makes it exit at once with the reason.
    proc = subprocess.Popen(
        [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline()
        assert address.startswith("unix:"), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    # The host has no zincati-py user (the RPM's sysusers.d creates it); dbus-daemon says so
    # and skips that <policy>. Any other complaint about the configuration is a defect of the
    # file (complaints about the machine, such as the fd limit in a container, are not).
    about_config = [
        line
        for line in err.splitlines()
        if "configuration" in line and 'Unknown username "zincati-py"' not in line
    ]
    assert about_config == []
