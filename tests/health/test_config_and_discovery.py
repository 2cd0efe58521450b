"""Fast tier: ``[agent.health]``/``[agent.hooks]`` keys and health.d discovery (pure logic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zincati_py.config import load
from zincati_py.health import spec
from zincati_py.health.discover import discover

F = "etc/zincati/config.d/50-health.toml"


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / F
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load(tmp_path)


def _problems(result) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return [(p.severity, p.key, p.message) for p in result.problems]


def test_defaults(tmp_path: Path) -> None:
    health = _load(tmp_path, "").config.agent.health
    assert (health.pre_reboot, health.required_units, health.timeout_secs, health.rollback) == (
        (),
        (),
        300,
        True,
    )
    hooks = _load(tmp_path, "").config.agent.hooks
    assert (hooks.commands, hooks.events, hooks.timeout_secs) == ((), (), 60)


def test_valid_keys(tmp_path: Path) -> None:
    result = _load(
        tmp_path,
        """
[agent.health]
pre_reboot = ["/usr/bin/etcdctl endpoint health", "etcd-healthy.service"]
required_units = ["kubelet.service", "getty@tty1.service", "remote-fs.target"]
timeout_secs = 90
rollback = false
[agent.hooks]
commands = ["/usr/local/bin/notify --to 'ops team'"]
events = ["rolled-back", "dead-end"]
timeout_secs = 5
""",
    )
    assert result.ok, _problems(result)
    h = result.config.agent.health
    assert h.pre_reboot == ("/usr/bin/etcdctl endpoint health", "etcd-healthy.service")
    assert h.required_units == ("kubelet.service", "getty@tty1.service", "remote-fs.target")
    assert (h.timeout_secs, h.rollback) == (90, False)
    k = result.config.agent.hooks
    assert k.commands == ("/usr/local/bin/notify --to 'ops team'",)
    assert (k.events, k.timeout_secs) == (("rolled-back", "dead-end"), 5)
    doc = result.config.as_dict()["agent"]
    assert doc["health"]["required_units"][0] == "kubelet.service"
    assert doc["hooks"]["events"] == ["rolled-back", "dead-end"]


def test_bad_entries_are_named_and_dropped(tmp_path: Path) -> None:
    result = _load(
        tmp_path,
        """
[agent.health]
pre_reboot = ["relative/cmd", "/bin/true", "/bin/echo 'unterminated", 3]
required_units = ["kubelet", "ok.service", "bad\\nname.service"]
timeout_secs = 0
[agent.hooks]
commands = ["notify.service", "/bin/true"]
events = ["staged", "exploded"]
""",
    )
    found = _problems(result)
    keys = [k for _, k, _ in found]
    assert keys == [
        "agent.health.pre_reboot[0]",
        "agent.health.pre_reboot[2]",
        "agent.health.pre_reboot[3]",
        "agent.health.required_units[0]",
        "agent.health.required_units[2]",
        "agent.health.timeout_secs",
        "agent.hooks.commands[0]",
        "agent.hooks.events[1]",
    ], found
    assert all(sev == "error" for sev, _, _ in found)
    assert all(p.file == tmp_path / F for p in result.problems)
    h = result.config.agent.health
    assert h.pre_reboot == ("/bin/true",)
    assert h.required_units == ("ok.service",)
    assert h.timeout_secs == 300
    assert result.config.agent.hooks.commands == ("/bin/true",)
    assert result.config.agent.hooks.events == ("staged",)


def test_wrong_types(tmp_path: Path) -> None:
    result = _load(tmp_path, '[agent.health]\nrequired_units = "kubelet.service"\n')
    assert [(s, k) for s, k, _ in _problems(result)] == [("error", "agent.health.required_units")]


@pytest.mark.parametrize(
    ("text", "unit", "argv"),
    [
        ("kubelet.service", "kubelet.service", ()),
        ("getty@tty1.service", "getty@tty1.service", ()),
        ("/usr/bin/check --x 'a b'", None, ("/usr/bin/check", "--x", "a b")),
    ],
)
def test_parse(text: str, unit: str | None, argv: tuple[str, ...]) -> None:
    check = spec.parse(text)
    assert (check.unit, check.argv) == (unit, argv)


@pytest.mark.parametrize("text", ["", "check.sh", "kubelet", "/bin/x\x1b", "'/bin/x"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        spec.parse(text)


def _exe(path: Path, body: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def test_discovery_shadowing_and_masking(tmp_path: Path) -> None:
    usr = tmp_path / "usr/lib/zincati-py/health.d/required.d"
    etc = tmp_path / "etc/zincati-py/health.d/required.d"
    _exe(usr / "10-net")
    _exe(usr / "20-disk")
    _exe(usr / "30-masked")
    _exe(etc / "20-disk")  # /etc replaces /usr/lib by name
    etc.mkdir(parents=True, exist_ok=True)
    os.symlink(os.devnull, etc / "30-masked")
    _exe(etc / "05-admin")
    _exe(etc / ".hidden")
    found, problems = discover(tmp_path, "required")
    assert [(f.path.relative_to(tmp_path).as_posix()) for f in found] == [
        "etc/zincati-py/health.d/required.d/05-admin",
        "usr/lib/zincati-py/health.d/required.d/10-net",
        "etc/zincati-py/health.d/required.d/20-disk",
    ]
    assert problems == []
    assert discover(tmp_path, "wanted") == ([], [])


def test_discovery_refuses_what_it_must_not_run(tmp_path: Path) -> None:
    usr = tmp_path / "usr/lib/zincati-py/health.d/wanted.d"
    etc = tmp_path / "etc/zincati-py/health.d/wanted.d"
    _exe(usr / "10-plain", mode=0o644)  # not executable
    _exe(usr / "20-writable", mode=0o757)  # others may change it
    _exe(usr / "30-real")
    etc.mkdir(parents=True)
    os.symlink(usr / "30-real", etc / "30-real")  # a symlink shadows, is not run
    (usr / "40-dir").mkdir()
    found, problems = discover(tmp_path, "wanted")
    assert found == []
    reasons = sorted(p.split(": ignored: ")[1] for p in problems)
    assert reasons == [
        "a symlink (only one to /dev/null masks)",
        "not a regular file",
        "not executable",
        "writable by group or others",
    ], problems
