"""Window calendar math: table tests across week wrap, overlap, zones with and without DST."""

from __future__ import annotations

import shutil
import zoneinfo
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from zincati_py.config import WindowSettings, load
from zincati_py.config.model import parse_weekday
from zincati_py.schedule.preview import next_elapses
from zincati_py.strategy.windows import Calendar, Position, calendar_from_config, minutes_until


def weekly(days: str, start: str, length: int) -> WindowSettings:
    hh, mm = (int(x) for x in start.split(":"))
    parsed = tuple(sorted(d for d in (parse_weekday(n) for n in days.split(",")) if d is not None))
    return WindowSettings(length, days=parsed, start_time=time(hh, mm))


def cron(expr: str, length: int) -> WindowSettings:
    return WindowSettings(length, cron=expr)


def z(stamp: str) -> datetime:
    """An instant written in UTC ('2026-03-29 01:00')."""
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


# 2026-11-22 is a Sunday; Europe/Berlin springs forward 2026-03-29 01:00Z (02:00 CET -> 03:00
# CEST) and falls back 2026-10-25 01:00Z (03:00 CEST -> 02:00 CET).
CASES = [
    # id, zone, windows, at (UTC), in_window, start (UTC), end (UTC)
    (
        "week-wrap-inside",
        "UTC",
        [weekly("Sun", "23:00", 120)],
        "2026-11-23 00:30",
        True,
        "2026-11-22 23:00",
        "2026-11-23 01:00",
    ),
    (
        "week-wrap-before",
        "UTC",
        [weekly("Sun", "23:00", 120)],
        "2026-11-22 22:59",
        False,
        "2026-11-22 23:00",
        "2026-11-23 01:00",
    ),
    (
        "half-open-end",
        "UTC",
        [weekly("Sun", "23:00", 120)],
        "2026-11-23 01:00",
        False,
        "2026-11-29 23:00",
        "2026-11-30 01:00",
    ),
    (
        "half-open-start",
        "UTC",
        [weekly("Sun", "23:00", 120)],
        "2026-11-22 23:00",
        True,
        "2026-11-22 23:00",
        "2026-11-23 01:00",
    ),
    (
        "sat-to-mon-wrap",
        "UTC",
        [weekly("Sat", "22:00", 1440 + 180)],
        "2026-11-23 00:30",
        True,
        "2026-11-21 22:00",
        "2026-11-23 01:00",
    ),
    (
        "overlap-merges",
        "UTC",
        [weekly("Sat", "10:00", 60), weekly("Sat", "10:30", 60)],
        "2026-11-28 10:45",
        True,
        "2026-11-28 10:00",
        "2026-11-28 11:30",
    ),
    (
        "touching-merge",
        "UTC",
        [weekly("Sat", "10:00", 60), weekly("Sat", "11:00", 60)],
        "2026-11-28 10:59",
        True,
        "2026-11-28 10:00",
        "2026-11-28 12:00",
    ),
    (
        "several-days-next",
        "UTC",
        [weekly("Mon,Wed", "03:00", 30)],
        "2026-11-24 12:00",
        False,
        "2026-11-25 03:00",
        "2026-11-25 03:30",
    ),
    (
        "wrap-to-next-week",
        "UTC",
        [weekly("Mon", "03:00", 30)],
        "2026-11-23 03:30",
        False,
        "2026-11-30 03:00",
        "2026-11-30 03:30",
    ),
    (
        "always-open",
        "UTC",
        [weekly("Mon", "00:00", 7 * 1440)],
        "2026-11-25 12:00",
        True,
        None,
        None,
    ),
    (
        "tokyo-no-dst",
        "Asia/Tokyo",
        [weekly("Mon", "09:00", 60)],
        "2026-11-22 23:30",
        False,
        "2026-11-23 00:00",
        "2026-11-23 01:00",
    ),
    (
        "berlin-winter",
        "Europe/Berlin",
        [weekly("Sat", "22:30", 60)],
        "2026-11-28 21:45",
        True,
        "2026-11-28 21:30",
        "2026-11-28 22:30",
    ),
    (
        "berlin-summer",
        "Europe/Berlin",
        [weekly("Sat", "22:30", 60)],
        "2026-07-04 20:00",
        False,
        "2026-07-04 20:30",
        "2026-07-04 21:30",
    ),
    # Spring forward: wall 02:15-02:45 never happens on 2026-03-29, so that window is skipped.
    (
        "spring-skips",
        "Europe/Berlin",
        [weekly("Sun", "02:15", 30)],
        "2026-03-28 12:00",
        False,
        "2026-04-05 00:15",
        "2026-04-05 00:45",
    ),
    # Wall 01:30-03:30 across the gap lasts one hour of real time.
    (
        "spring-shortens",
        "Europe/Berlin",
        [weekly("Sun", "01:30", 120)],
        "2026-03-29 00:45",
        True,
        "2026-03-29 00:30",
        "2026-03-29 01:30",
    ),
    # Starts in the gap but extends past it: opens at the transition (03:00 CEST).
    (
        "spring-starts-in-gap",
        "Europe/Berlin",
        [weekly("Sun", "02:30", 60)],
        "2026-03-28 12:00",
        False,
        "2026-03-29 01:00",
        "2026-03-29 01:30",
    ),
    # Fall back: wall 01:30-03:30 contains the repeated hour: three hours of real time.
    (
        "fall-lengthens",
        "Europe/Berlin",
        [weekly("Sun", "01:30", 120)],
        "2026-10-25 01:45",
        True,
        "2026-10-24 23:30",
        "2026-10-25 02:30",
    ),
    # Wall 02:30-03:30: 02:30-03:00 CEST, then 02:30-03:30 CET (02:00-02:30 CET is outside).
    (
        "fall-first-part",
        "Europe/Berlin",
        [weekly("Sun", "02:30", 60)],
        "2026-10-25 00:45",
        True,
        "2026-10-25 00:30",
        "2026-10-25 01:00",
    ),
    (
        "fall-reopens",
        "Europe/Berlin",
        [weekly("Sun", "02:30", 60)],
        "2026-10-25 01:10",
        False,
        "2026-10-25 01:30",
        "2026-10-25 02:30",
    ),
    (
        "sydney-fall-back",
        "Australia/Sydney",
        [weekly("Sun", "02:00", 120)],
        "2026-04-04 12:00",
        False,
        "2026-04-04 15:00",
        "2026-04-04 18:00",
    ),
    (
        "cron-daily",
        "UTC",
        [cron("0 3 * * *", 30)],
        "2026-11-22 03:29",
        True,
        "2026-11-22 03:00",
        "2026-11-22 03:30",
    ),
    (
        "cron-alias-daily",
        "UTC",
        [cron("@daily", 30)],
        "2026-11-22 12:00",
        False,
        "2026-11-23 00:00",
        "2026-11-23 00:30",
    ),
    ("cron-chain-merges", "UTC", [cron("*/15 * * * *", 20)], "2026-11-22 12:07", True, None, None),
    (
        "cron-leap-day",
        "UTC",
        [cron("0 0 29 2 *", 60)],
        "2026-11-22 00:00",
        False,
        "2028-02-29 00:00",
        "2028-02-29 01:00",
    ),
    (
        "cron-spring-gap",
        "Europe/Berlin",
        [cron("30 2 * * *", 60)],
        "2026-03-28 23:00",
        False,
        "2026-03-29 01:00",
        "2026-03-29 01:30",
    ),
    (
        "cron-and-weekly",
        "UTC",
        [cron("0 4 * * 1-5", 60), weekly("Sat,Sun", "06:00", 60)],
        "2026-11-27 05:00",
        False,
        "2026-11-28 06:00",
        "2026-11-28 07:00",
    ),
]


@pytest.mark.parametrize(
    ("zone", "windows", "at", "inside", "start", "end"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_position(
    zone: str,
    windows: list[WindowSettings],
    at: str,
    inside: bool,
    start: str | None,
    end: str | None,
) -> None:
    pos = Calendar(windows, zoneinfo.ZoneInfo(zone)).position(z(at))
    assert (pos.in_window, pos.start, pos.end) == (
        inside,
        None if start is None else z(start),
        None if end is None else z(end),
    )


def test_span_lengths_across_dst() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    cal = Calendar([weekly("Sun", "01:30", 120)], berlin)
    spring = cal.spans(z("2026-03-28 12:00"), z("2026-03-29 12:00"))
    fall = cal.spans(z("2026-10-24 12:00"), z("2026-10-25 12:00"))
    normal = cal.spans(z("2026-11-21 12:00"), z("2026-11-22 12:00"))
    assert [s.end - s.start for s in spring] == [timedelta(hours=1)]
    assert [s.end - s.start for s in fall] == [timedelta(hours=3)]
    assert [s.end - s.start for s in normal] == [timedelta(hours=2)]


def test_hash_cron_uses_node_id() -> None:
    windows = [cron("H 3 * * *", 10)]
    a = Calendar(windows, UTC, hash_id="0" * 32).position(z("2026-11-22 00:00"))
    b = Calendar(windows, UTC, hash_id="f" * 32).position(z("2026-11-22 00:00"))
    assert a.start is not None and b.start is not None
    assert a.start.hour == b.start.hour == 3
    assert a.start != b.start  # different nodes spread differently (fixed ids, fixed minutes)


def test_no_windows() -> None:
    pos = Calendar([], UTC).position(z("2026-11-22 00:00"))
    assert pos == Position(z("2026-11-22 00:00"), False, None, None)
    assert pos.minutes_to_next_window is None


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(0, 0), (1, 1), (59, 1), (60, 1), (61, 2), (3600, 60)]
)
def test_minutes_round_up(seconds: int, minutes: int) -> None:
    at = z("2026-11-22 00:00")
    assert minutes_until(at, at + timedelta(seconds=seconds)) == minutes


def test_naive_instant_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        Calendar([weekly("Mon", "00:00", 1)], UTC).position(datetime(2026, 11, 22))


# Opening times agree with what systemd's generated timer fires at, except for a start time
# that does not exist (spring forward), where systemd skips and the window opens at the gap.
SYSTEMD_CASES = [
    ("Europe/Berlin", "Sat", "22:30", "2026-11-22 00:00"),
    ("Europe/Berlin", "Sun", "02:30", "2026-10-23 00:00"),  # repeated: the first occurrence
    ("America/New_York", "Sun", "01:30", "2026-10-31 00:00"),
    ("Australia/Sydney", "Sun", "02:30", "2026-04-03 00:00"),
    ("Asia/Tokyo", "Mon", "00:00", "2026-11-22 00:00"),
]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize(("zone", "day", "start", "after"), SYSTEMD_CASES)
def test_opening_matches_systemd_timer(zone: str, day: str, start: str, after: str) -> None:
    cal = Calendar([weekly(day, start, 10)], zoneinfo.ZoneInfo(zone))
    expected = next_elapses([f"{day} *-*-* {start}:00 {zone}"], 1, after=z(after))
    assert cal.position(z(after)).start == expected[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_spring_gap_differs_from_systemd_as_documented() -> None:
    zone = "Europe/Berlin"
    cal = Calendar([weekly("Sun", "02:30", 60)], zoneinfo.ZoneInfo(zone))
    (systemd,) = next_elapses([f"Sun *-*-* 02:30:00 {zone}"], 1, after=z("2026-03-28 00:00"))
    assert systemd == z("2026-04-05 00:30")  # systemd skips the nonexistent 02:30
    assert cal.position(z("2026-03-28 00:00")).start == z("2026-03-29 01:00")


def _write(root: Path, text: str) -> None:
    (root / "etc/zincati/config.d/50-windows.toml").write_text(text)


def test_localtime_follows_etc_localtime(config_root: Path) -> None:
    (config_root / "etc/localtime").symlink_to("/usr/share/zoneinfo/America/New_York")
    _write(
        config_root,
        '[updates]\nstrategy = "periodic"\n[updates.periodic]\ntime_zone = "localtime"\n'
        '[[updates.periodic.window]]\ndays = ["Sun"]\nstart_time = "01:30"\nlength_minutes = 60\n',
    )
    result = load(config_root)
    assert result.ok, result.problems
    cal = calendar_from_config(result.config, result.paths)
    # 2026-11-01: New York falls back at 06:00Z (02:00 EDT -> 01:00 EST): wall 01:30-02:30
    # holds 01:30-02:00 EDT, then (after 01:00-01:30 EST, outside) 01:30-02:30 EST.
    spans = cal.spans(z("2026-11-01 00:00"), z("2026-11-01 12:00"))
    assert [(s.start, s.end) for s in spans] == [
        (z("2026-11-01 05:30"), z("2026-11-01 06:00")),
        (z("2026-11-01 06:30"), z("2026-11-01 07:30")),
    ]


def test_localtime_without_link_is_utc(config_root: Path) -> None:
    _write(
        config_root,
        '[updates.periodic]\ntime_zone = "localtime"\n'
        '[[updates.periodic.window]]\ndays = ["Sun"]\nstart_time = "01:30"\nlength_minutes = 60\n',
    )
    result = load(config_root)
    cal = calendar_from_config(result.config, result.paths)
    assert cal.position(z("2026-11-22 00:00")).start == z("2026-11-22 01:30")
