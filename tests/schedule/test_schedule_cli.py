"""``zincati-py schedule translate`` through the installed entry point (a real subprocess)."""

from __future__ import annotations

import functools

import pytest

from tests.helpers import zpy

run = functools.partial(zpy, timeout=30)


def test_translate_prints_only_the_lines() -> None:
    proc = run("schedule", "translate", "0 0 1,15 * 1", "--tz", "Europe/Berlin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "*-*-01,15 00:00:00 Europe/Berlin\nMon *-*-* 00:00:00 Europe/Berlin\n"
    assert proc.stderr == ""


def test_translate_with_hash_id_is_stable() -> None:
    first = run("schedule", "translate", "H H * * *", "--hash-id", "node-a")
    again = run("schedule", "translate", "H H * * *", "--hash-id", "node-a")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert len(first.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["@reboot"], "'@reboot' has no calendar time"),
        (["0 0 5 * 5#2"], "cannot be combined with a restricted day-of-month field"),
        (["not a cron"], "is not a valid cron expression"),
        (["H H * * *"], "needs a hash id"),
        (["0 0 * * *", "--tz", "Mars/Base"], "time zone 'Mars/Base' is not known"),
    ],
)
def test_translate_rejects_with_65_and_one_line(args: list[str], message: str) -> None:
    proc = run("schedule", "translate", *args)
    assert proc.returncode == 65
    assert proc.stdout == ""
    assert proc.stderr.startswith("zincati-py: schedule translate: ")
    assert message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_schedule_needs_a_subcommand() -> None:
    proc = run("schedule")
    assert proc.returncode != 0
    assert "translate" in run("schedule", "--help").stdout
