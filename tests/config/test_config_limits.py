"""Issue 11 items 9 and 10: hostile or mistaken fragments cost one error, never the rest;
what ``config check`` accepts, systemd accepts.

A deeply nested fragment used to raise RecursionError (``config check`` printed a traceback,
the generator wrote no unit at all); a huge fragment took seconds to parse at boot.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.config.conftest import Tree
from tests.generator.helpers import run_generator
from tests.helpers import zpy
from zincati_py.config.checks import SYSTEMD_MAX_SECS
from zincati_py.config.fragments import MAX_FRAGMENT_BYTES

run = functools.partial(zpy, unset=("ZINCATI_PY_ROOT",))
JOB = '[[schedule]]\nname = "job"\ncron = "0 3 * * *"\ncommand = "true"\n'
NESTED = "a = " + "[" * 5000 + "]" * 5000 + "\n"


def test_nested_fragment_is_one_error(tree: Tree) -> None:
    nested = tree.write("etc", "50-nested.toml", NESTED)
    tree.write("etc", "60-job.toml", JOB)
    result = tree.load()
    assert [(p.severity, p.file, p.key) for p in result.errors] == [("error", nested, "")]
    assert "nested too deeply" in result.errors[0].message
    assert [j.name for j in result.config.schedules] == ["job"]

    proc = run("config", "check", "--root", str(tree.root))
    assert proc.returncode == os.EX_DATAERR
    assert "Traceback" not in proc.stderr
    line, summary = proc.stderr.splitlines()
    assert summary.startswith("zincati-py: configuration invalid")
    assert line.startswith(f"zincati-py: {nested}: invalid TOML, file ignored: nested too deeply")


def test_nested_inline_tables_too(tree: Tree) -> None:
    path = tree.write("etc", "50-nested.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n")
    (error,) = tree.load().errors
    assert error.file == path and "nested too deeply" in error.message


def test_generator_keeps_the_update_timer_and_valid_jobs(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    tree.write("etc", "50-nested.toml", NESTED)
    tree.write("etc", "60-job.toml", JOB)
    out = tmp_path / "out"
    proc = run_generator(tree.root, out)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "50-nested.toml: invalid TOML, file ignored: nested too deeply" in proc.stderr
    assert sorted(p.name for p in out.glob("*.timer")) == [
        "zincati-py-check.timer",
        "zincati-py-schedule-job.timer",
    ]


def test_oversized_fragment_is_refused_quickly(tree: Tree) -> None:
    # Valid TOML, so only its size can be the reason.
    big = tree.write("etc", "50-big.toml", "# padding\n" * (MAX_FRAGMENT_BYTES // 10 + 1))
    tree.write("etc", "60-job.toml", JOB)
    start = time.monotonic()
    result = tree.load()
    assert time.monotonic() - start < 5
    (error,) = result.errors
    assert (error.file, error.key) == (big, "")
    assert error.message == f"larger than {MAX_FRAGMENT_BYTES // 1024} KiB, file ignored"
    assert [j.name for j in result.config.schedules] == ["job"]
    # Exactly at the limit is read.
    big.write_text("#" * (MAX_FRAGMENT_BYTES - 1) + "\n")
    assert tree.load().errors == ()


# Issue 11 item 10: every number of seconds is bounded by what systemd parses.
SECS_KEYS = [
    ("agent.timing.steady_interval_secs", "[agent.timing]\nsteady_interval_secs = {v}\n"),
    ("agent.reboot.max_postpone_secs", "[agent.reboot]\nmax_postpone_secs = {v}\n"),
    ("updates.file.max_age_secs", "[updates.file]\nmax_age_secs = {v}\n"),
    ("schedule[job].randomized_delay_secs", JOB + "randomized_delay_secs = {v}\n"),
    ("schedule[job].timeout_secs", JOB + "timeout_secs = {v}\n"),
]


@pytest.mark.parametrize(("key", "text"), SECS_KEYS, ids=[k for k, _ in SECS_KEYS])
def test_seconds_past_what_systemd_parses_are_errors(tree: Tree, key: str, text: str) -> None:
    path = tree.write("etc", "50-secs.toml", text.format(v=SYSTEMD_MAX_SECS))
    assert tree.load().problems == ()
    for value in (SYSTEMD_MAX_SECS + 1, 20000000000000):
        path.write_text(text.format(v=value))
        problems = [(p.severity, p.file, p.key) for p in tree.load().problems]
        if key == "updates.file.max_age_secs":  # file strategy not used: a warning
            assert problems == [("warning", path, key)]
        else:
            assert problems == [("error", path, key)]
        (problem,) = tree.load().problems
        assert f"{value} is more than systemd accepts" in problem.message


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_every_value_config_check_accepts(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "root")
    v = SYSTEMD_MAX_SECS
    tree.write("etc", "50-max.toml", f"[agent.timing]\nsteady_interval_secs = {v}\n")
    tree.write("etc", "60-job.toml", JOB + f"randomized_delay_secs = {v}\ntimeout_secs = {v}\n")
    assert run("config", "check", "--root", str(tree.root)).returncode == 0
    out = tmp_path / "out"
    assert run_generator(tree.root, out).returncode == 0
    units = sorted(str(p) for p in out.iterdir() if p.is_file())
    assert len(units) == 4

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *units],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=out,
        )

    proc = verify()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # One second more and systemd refuses the timer: config check must say so first.
    timer = out / "zincati-py-check.timer"
    timer.write_text(timer.read_text().replace(f"={v}s", f"={v + 1}s"))
    assert "Timer unit lacks value setting" in verify().stderr
    tree.write("etc", "50-max.toml", f"[agent.timing]\nsteady_interval_secs = {v + 1}\n")
    assert run("config", "check", "--root", str(tree.root)).returncode == os.EX_DATAERR
