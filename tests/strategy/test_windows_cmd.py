"""``zincati-py windows``: JSON schema and values, via the installed entry point."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import zpy

BERLIN = """
[updates]
strategy = "periodic"
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Sat", "Sun"]
start_time = "22:30"
length_minutes = 60
[[updates.periodic.window]]
cron = "0 4 * * 1-5"
length_minutes = 30
"""


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return zpy("windows", "--root", str(root), *args)


def write(root: Path, text: str) -> Path:
    path = root / "etc/zincati/config.d/50-windows.toml"
    path.write_text(text)
    return path


def as_json(root: Path, at: str) -> dict[str, Any]:
    proc = run(root, "--json", "--at", at)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_outside_json(config_root: Path) -> None:
    source = write(config_root, BERLIN)
    doc = as_json(config_root, "2026-11-25T12:00:00+00:00")  # a Wednesday, 13:00 CET
    assert set(doc) == {
        "in_window",
        "minutes_to_next_window",
        "next_window_start",
        "time_zone",
        "windows",
    }
    assert doc["in_window"] is False
    # Thu 04:00 CET = 03:00Z: 15 h from 12:00Z.
    assert doc["next_window_start"] == "2026-11-26T04:00:00+01:00"
    assert doc["minutes_to_next_window"] == 15 * 60
    assert doc["time_zone"] == "Europe/Berlin"
    assert doc["windows"] == [
        {
            "length_minutes": 60,
            "days": ["Sat", "Sun"],
            "start_time": "22:30",
            "source": str(source),
            "next_start": "2026-11-28T22:30:00+01:00",
            "next_end": "2026-11-28T23:30:00+01:00",
        },
        {
            "length_minutes": 30,
            "cron": "0 4 * * 1-5",
            "source": str(source),
            "next_start": "2026-11-26T04:00:00+01:00",
            "next_end": "2026-11-26T04:30:00+01:00",
        },
    ]


def test_inside_json(config_root: Path) -> None:
    write(config_root, BERLIN)
    doc = as_json(config_root, "2026-11-29T23:00:00+01:00")  # Sunday 23:00 CET
    assert doc["in_window"] is True
    assert doc["minutes_to_next_window"] == 0
    assert doc["next_window_start"] == "2026-11-29T22:30:00+01:00"


def test_minutes_round_up(config_root: Path) -> None:
    write(config_root, BERLIN)
    # 30 s before Thursday 04:00 CET: one minute, not zero.
    doc = as_json(config_root, "2026-11-26T03:59:30+01:00")
    assert (doc["in_window"], doc["minutes_to_next_window"]) == (False, 1)


def test_naive_at_is_read_in_window_zone(config_root: Path) -> None:
    write(config_root, BERLIN)
    doc = as_json(config_root, "2026-11-28T22:30:00")  # 22:30 in Berlin, not UTC
    assert doc["in_window"] is True


def test_localtime_zone_name(config_root: Path) -> None:
    (config_root / "etc/localtime").symlink_to("/usr/share/zoneinfo/America/New_York")
    write(config_root, BERLIN.replace('"Europe/Berlin"', '"localtime"'))
    doc = as_json(config_root, "2026-11-25T12:00:00+00:00")
    assert doc["time_zone"] == "America/New_York"
    assert doc["next_window_start"] == "2026-11-26T04:00:00-05:00"


def test_not_periodic_still_works(config_root: Path) -> None:
    write(config_root, BERLIN.replace('strategy = "periodic"', 'strategy = "immediate"'))
    proc = run(config_root, "--json", "--at", "2026-11-25T12:00:00Z")
    assert proc.returncode == 0, proc.stderr
    assert "not enforced" in proc.stderr
    assert json.loads(proc.stdout)["minutes_to_next_window"] == 15 * 60


def test_no_windows(config_root: Path) -> None:
    proc = run(config_root, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["windows"] == []
    assert (doc["in_window"], doc["next_window_start"], doc["minutes_to_next_window"]) == (
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (BERLIN.replace('"22:30"', '"25:00"'), "start_time"),
        (BERLIN.replace('"Europe/Berlin"', '"Mars/Olympus"'), "time_zone"),
        (BERLIN.replace('"0 4 * * 1-5"', '"61 * * * *"'), "cron"),
    ],
)
def test_invalid_windows_exit_65(config_root: Path, text: str, key: str) -> None:
    source = write(config_root, text)
    proc = run(config_root, "--json")
    assert proc.returncode == 65
    assert proc.stdout == ""
    assert f"zincati-py: {source}: updates.periodic" in proc.stderr
    assert key in proc.stderr


def test_bad_at_is_usage_error(config_root: Path) -> None:
    write(config_root, BERLIN)
    proc = run(config_root, "--at", "next tuesday")
    assert proc.returncode == 64
    assert "--at" in proc.stderr


def test_text_output(config_root: Path) -> None:
    write(config_root, BERLIN)
    proc = run(config_root, "--at", "2026-11-25T12:00:00Z")
    assert proc.returncode == 0, proc.stderr
    assert "time zone: Europe/Berlin" in proc.stdout
    assert "next opens 2026-11-26T04:00:00+01:00 (in 900 minutes)" in proc.stdout
    assert "Sat,Sun 22:30 for 60 min" in proc.stdout
