"""``zincati-py config check|show`` as a user runs it: a real subprocess, exit codes, stderr
lines, stdout documents, and nothing written to the config directories."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import tomllib
from typing import Any

import pytest

from testbed.proc import zincati_py_argv
from tests.helpers import zpy

#: ``zincati-py ARGS`` without an inherited ``ZINCATI_PY_ROOT``.
run = functools.partial(zpy, unset=("ZINCATI_PY_ROOT",))
# One problem per line: "zincati-py: [warning: ]FILE: KEY: message" (no KEY for whole-file
# problems such as malformed TOML).
Expected = tuple[bool, str, str | None]
# The last line of an invalid check: what the agent does with such a configuration.
INVALID = "zincati-py: configuration invalid: the agent does not apply it"


def assert_problem_lines(stderr: str, expected: list[Expected]) -> None:
    """stderr holds exactly these problems, in order, one per line, each with a message."""
    lines = [x for x in stderr.splitlines() if not x.startswith(("configuration valid", INVALID))]
    assert len(lines) == len(expected), stderr
    for line, (warning, file, key) in zip(lines, expected, strict=True):
        prefix = "zincati-py: " + ("warning: " if warning else "") + file + ": "
        prefix += f"{key}: " if key else ""
        assert line.startswith(prefix), (line, prefix)
        message = line.removeprefix(prefix)
        assert message.strip() and not message.startswith(("updates", "identity", "agent"))


VALID = """
[identity]
group = "workers"
rollout_wariness = 0.5

[updates]
strategy = "periodic"

[updates.periodic]
time_zone = "UTC"

[[updates.periodic.window]]
days = ["Sat", "Sun"]
start_time = "22:30"
length_minutes = 60

[[schedule]]
name = "cleanup"
cron = "0 3 * * *"
command = "/usr/bin/true"
"""

# (id, {file name: text} in /etc, expected (is_warning, file name, key) per problem)
BAD = [
    ("malformed-toml", {"20-b.toml": "[updates\nenabled = false\n"}, [(False, "20-b.toml", None)]),
    ("malformed-value", {"20-b.toml": "[updates]\nenabled = \n"}, [(False, "20-b.toml", None)]),
    ("duplicate-key", {"20-b.toml": "[updates]\nenabled = true\nenabled = false\n"},
     [(False, "20-b.toml", None)]),
    ("wrong-type", {"20-b.toml": '[agent.timing]\nsteady_interval_secs = "5m"\n'},
     [(False, "20-b.toml", "agent.timing.steady_interval_secs")]),
    ("wrong-table-type", {"20-b.toml": 'updates = "periodic"\n'},
     [(False, "20-b.toml", "updates")]),
    ("bad-schedule-cron",
     {"20-b.toml": '[[schedule]]\nname = "x"\ncron = "* * *"\ncommand = "y"\n'},
     [(False, "20-b.toml", "schedule[x].cron")]),
    ("bad-check-cron", {"20-b.toml": '[agent.timing]\ncheck_cron = "99 * * * *"\n'},
     [(False, "20-b.toml", "agent.timing.check_cron")]),
    ("unknown-strategy", {"20-b.toml": '[updates]\nstrategy = "yolo"\n'},
     [(False, "20-b.toml", "updates.strategy")]),
    ("fleet-lock-without-url", {"20-b.toml": '[updates]\nstrategy = "fleet_lock"\n'},
     [(False, "20-b.toml", "updates.fleet_lock.base_url")]),
    ("bad-window-periodic",
     {"20-b.toml": '[[updates.periodic.window]]\ndays = ["Mon"]\nstart_time = "9am"\n'
                   "length_minutes = 5\n"},
     [(False, "20-b.toml", "updates.periodic.window[0].start_time")]),
    ("errors-and-warnings",
     {"20-b.toml": "[updates]\nenabled = 1\nbogus = 2\n", "30-c.yaml": "x: 1\n"},
     [(True, "30-c.yaml", None), (False, "20-b.toml", "updates.enabled"),
      (True, "20-b.toml", "updates.bogus")]),
]  # fmt: skip


@pytest.fixture
def root(tree):  # type: ignore[no-untyped-def]
    tree.write("usr", "10-a.toml", VALID)
    return tree


def test_check_valid(root) -> None:  # type: ignore[no-untyped-def]
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == "configuration valid (1 fragment)\n"


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_check_invalid(root, files, expected) -> None:  # type: ignore[no-untyped-def]
    for name, text in files.items():
        root.write("etc", name, text)
    before = root.snapshot()
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 65
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert_problem_lines(
        proc.stderr,
        [(warning, str(root.dir("etc") / name), key) for warning, name, key in expected],
    )
    assert root.snapshot() == before
    # show reports the same problems and the same exit status, and still prints a document.
    show = run("config", "show", "--json", "--root", str(root.root))
    assert show.returncode == 65
    assert "Traceback" not in show.stderr
    assert show.stderr == proc.stderr
    assert json.loads(show.stdout)["valid"] is False
    assert root.snapshot() == before


def test_check_warnings_only_exits_0(root) -> None:  # type: ignore[no-untyped-def]
    root.write("etc", "99-disable-updates.yaml", "updates:\n  enabled: false\n")
    root.write("etc", "20-b.toml", "[identity]\nthrottle_permille = 5\n")
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 0
    assert_problem_lines(
        proc.stderr,
        [
            (True, str(root.dir("etc") / "99-disable-updates.yaml"), None),
            (True, str(root.dir("etc") / "20-b.toml"), "identity.throttle_permille"),
        ],
    )
    assert proc.stderr.splitlines()[-1] == "configuration valid (2 fragments)"


def test_problem_with_newline_in_a_name_stays_on_one_line(root) -> None:  # type: ignore[no-untyped-def]
    root.write(
        "etc",
        "20-b.toml",
        '[[schedule]]\nname = "evil\\nzincati-py: forged"\ncron = "@daily"\ncommand = "x"\n',
    )
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 65
    line, summary = proc.stderr.splitlines()
    assert summary.startswith(INVALID)
    assert line.startswith(f"zincati-py: {root.dir('etc') / '20-b.toml'}: schedule[")
    assert "\\n" in line


def test_check_json(root) -> None:  # type: ignore[no-untyped-def]
    bad = root.write("etc", "20-b.toml", '[updates]\nstrategy = "yolo"\n')
    proc = run("config", "check", "--json", "--root", str(root.root))
    assert proc.returncode == 65
    doc = json.loads(proc.stdout)
    assert doc["valid"] is False
    assert doc["fragments"] == [str(root.dir("usr") / "10-a.toml"), str(bad)]
    (problem,) = doc["problems"]
    assert {k: problem[k] for k in ("severity", "file", "key")} == {
        "severity": "error",
        "file": str(bad),
        "key": "updates.strategy",
    }


def test_root_from_environment(root) -> None:  # type: ignore[no-untyped-def]
    proc = run("config", "show", "--json", env={"ZINCATI_PY_ROOT": str(root.root)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["identity"]["group"] == "workers"


def test_show_json_contract(root) -> None:  # type: ignore[no-untyped-def]
    second = root.write(
        "etc",
        "20-b.toml",
        '[[updates.periodic.window]]\ncron = "0 4 * * 1"\nlength_minutes = 30\n',
    )
    before = root.snapshot()
    proc = run("config", "show", "--json", "--root", str(root.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    doc = json.loads(proc.stdout)  # exactly one JSON document, nothing else on stdout
    assert doc["fragments"] == [str(root.dir("usr") / "10-a.toml"), str(second)]
    assert doc["valid"] is True
    assert set(doc) == {
        "agent",
        "identity",
        "cincinnati",
        "updates",
        "schedule",
        "fragments",
        "valid",
    }
    # The TOML's section/key names, defaults filled in.
    assert doc["agent"]["timing"] == {"steady_interval_secs": 300, "check_cron": None}
    assert doc["identity"]["group"] == "workers"
    assert doc["identity"]["rollout_wariness"] == 0.5
    assert re.fullmatch(r"[0-9a-f]{32}", doc["identity"]["node_uuid"])
    assert doc["cincinnati"] == {"base_url": None}
    assert doc["updates"]["enabled"] is True
    assert doc["updates"]["allow_downgrade"] is False
    assert doc["updates"]["strategy"] == ["periodic"]
    assert doc["updates"]["fleet_lock"] == {"base_url": None}
    # Windows: a list under updates.periodic.window, in merge order.
    assert doc["updates"]["periodic"] == {
        "time_zone": "UTC",
        "window": [
            {"days": ["Sat", "Sun"], "start_time": "22:30", "length_minutes": 60},
            {"cron": "0 4 * * 1", "length_minutes": 30},
        ],
    }
    (job,) = doc["schedule"]
    assert {k: job[k] for k in ("name", "cron", "command", "catch_up", "enabled")} == {
        "name": "cleanup",
        "cron": "0 3 * * *",
        "command": "/usr/bin/true",
        "catch_up": True,
        "enabled": True,
    }
    assert root.snapshot() == before


def test_show_json_of_an_empty_root_is_all_defaults(tree) -> None:  # type: ignore[no-untyped-def]
    proc = run("config", "show", "--json", "--root", str(tree.root))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fragments"] == []
    assert doc["updates"]["strategy"] == ["immediate"]
    assert doc["updates"]["periodic"] == {"time_zone": "UTC", "window": []}
    assert doc["schedule"] == []
    assert doc["agent"]["timing"]["steady_interval_secs"] == 300


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


@pytest.mark.parametrize("broken", [False, True])
def test_show_toml_round_trips(root, broken) -> None:  # type: ignore[no-untyped-def]
    root.write("etc", "20-b.toml", '[cincinnati]\nbase_url = "https://c.example/"\n')
    if broken:
        root.write("etc", "30-c.toml", "[updates]\nenabled = 1\n")
    text = run("config", "show", "--root", str(root.root))
    assert text.returncode == (65 if broken else 0)
    assert "Traceback" not in text.stderr
    parsed = tomllib.loads(text.stdout)
    doc = json.loads(run("config", "show", "--json", "--root", str(root.root)).stdout)
    del doc["fragments"], doc["valid"]
    assert parsed == _drop_none(doc)
    # The fragments used are listed as comments, in merge order.
    comments = [line for line in text.stdout.splitlines() if line.startswith("#   ")]
    assert [c.removeprefix("#   ") for c in comments] == [
        str(root.dir("usr") / "10-a.toml"),
        str(root.dir("etc") / "20-b.toml"),
    ] + ([str(root.dir("etc") / "30-c.toml")] if broken else [])


def test_missing_root_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mistyped --root must not read as "configuration valid" (issue 11 item 13)."""
    for command in ("check", "show"):
        proc = run("config", command, "--root", str(tmp_path / "nowhere"))
        assert proc.returncode == 65
        assert proc.stderr == f"zincati-py: {tmp_path / 'nowhere'}: root does not exist\n"
        assert proc.stdout == ""
    (tmp_path / "file").write_text("")
    proc = run("config", "check", "--root", str(tmp_path / "file"))
    assert proc.returncode == 65 and "root is not a directory" in proc.stderr
    assert not (tmp_path / "nowhere").exists()
    # An existing root without any configuration is the defaults, with a machine-id warning.
    (tmp_path / "empty").mkdir()
    proc = run("config", "check", "--root", str(tmp_path / "empty"))
    assert proc.returncode == 0
    assert_problem_lines(
        proc.stderr, [(True, str(tmp_path / "empty/etc/machine-id"), "identity.node_uuid")]
    )
    assert proc.stderr.splitlines()[-1] == "configuration valid (0 fragments)"


def test_invalid_strategy_says_what_the_agent_does(root) -> None:  # type: ignore[no-untyped-def]
    path = root.write("etc", "50-s.toml", '[updates]\nstrategy = "periodc"\n')
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 65
    line, summary = proc.stderr.splitlines()
    assert line == (
        f"zincati-py: {path}: updates.strategy: unknown strategy 'periodc' (expected one of "
        "immediate, periodic, fleet_lock, file, marker_file); the agent never reboots under an "
        "invalid configuration"
    )
    assert "using immediate" not in proc.stderr
    assert summary == (
        f"{INVALID}; it keeps the last valid configuration in force (none since it started: "
        "it never reboots until one is valid)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[schedule]]\nname = "j"\ncron = "0 0 3 * * *"\ncommand = "true"\n', "schedule[j].cron"),
        ('[agent.timing]\ncheck_cron = "0 */5 * * * *"\n', "agent.timing.check_cron"),
        (
            '[[updates.periodic.window]]\ncron = "0 3 * * 1 0"\nlength_minutes = 60\n',
            "updates.periodic.window[0].cron",
        ),
    ],
)
def test_six_field_cron_warns_about_the_field_order(root, text, key) -> None:  # type: ignore[no-untyped-def]
    path = root.write("etc", "50-six.toml", text)
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 0, proc.stderr
    assert_problem_lines(proc.stderr, [(True, str(path), key)])
    assert "minute hour day-of-month month day-of-week SECOND" in proc.stderr
    # Five fields (and seven, with a year) are not warned about.
    path.write_text(re.sub(r'cron = "(\S+ ){5}\S+"', 'cron = "0 3 * * *"', text))
    proc = run("config", "check", "--root", str(root.root))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_version() -> None:
    from zincati_py import __version__

    proc = run("--version")
    assert (proc.returncode, proc.stdout) == (0, f"zincati-py {__version__}\n")


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["config", "check", "--bogus"], "usage: zincati-py config check "),
        (["config", "show", "extra"], "usage: zincati-py config show "),
        (["config", "bogus"], "usage: zincati-py config "),
        (["config", "check", "--root"], "usage: zincati-py config check "),
        (["--bogus", "config", "check"], "usage: zincati-py [-h]"),
    ],
)
def test_usage_errors_show_the_subcommands_usage(args, usage) -> None:  # type: ignore[no-untyped-def]
    proc = run(*args)
    assert proc.returncode == 64
    first, *_, last = proc.stderr.splitlines()
    assert first.startswith(usage), proc.stderr
    assert ": error: " in last


@pytest.mark.parametrize(
    "args", [["config", "show"], ["config", "show", "--json"], ["config", "check", "--json"]]
)
def test_closed_stdout_is_no_traceback(root, args) -> None:  # type: ignore[no-untyped-def]
    """``zincati-py ... | head``: the reader goes away; stop quietly (128 + SIGPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [*zincati_py_argv(), *args, "--root", str(root.root)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 128 + signal.SIGPIPE
    assert proc.stderr == ""
