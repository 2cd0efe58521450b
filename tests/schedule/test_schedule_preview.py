"""next_elapses(): previews come from systemd-analyze, including systemd's DST behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from zincati_py.schedule import CronError, translate
from zincati_py.schedule.preview import next_elapses


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_spring_forward_skips_the_nonexistent_time() -> None:
    # 2026-03-29 Europe/Berlin jumps from 02:00 CET to 03:00 CEST: there is no 02:30 that day.
    lines = translate("30 2 * * *", tz="Europe/Berlin")
    assert lines == ["*-*-* 02:30:00 Europe/Berlin"]
    assert next_elapses(lines, 3, after=utc(2026, 3, 28)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST; nothing on the 29th
        utc(2026, 3, 31, 0, 30),
    ]


def test_fall_back_fires_a_repeated_time_once() -> None:
    # 2026-10-25 Europe/Berlin passes 02:30 twice (CEST, then CET); systemd fires the first only.
    lines = translate("30 2 * * *", tz="Europe/Berlin")
    assert next_elapses(lines, 3, after=utc(2026, 10, 24)) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST; 01:30 UTC (02:30 CET) does not fire
        utc(2026, 10, 26, 1, 30),
    ]


def test_closed_ranges_survive_a_dst_year() -> None:
    lines = translate("0 9-17/2 * * 1-5", tz="Europe/Berlin")
    times = next_elapses(lines, 1200, after=utc(2026, 1, 1))
    assert len(times) == 1200
    assert times[-1] > utc(2026, 11, 1)  # 5 fires a weekday: the run crosses both changes

    def hours_on(day: int, month: int) -> set[int]:
        return {t.hour for t in times if (t.month, t.day) == (month, day)}

    assert hours_on(27, 3) == {8, 10, 12, 14, 16}  # Friday before, CET (UTC+1)
    assert hours_on(30, 3) == {7, 9, 11, 13, 15}  # Monday after, CEST (UTC+2)
    assert hours_on(26, 10) == {8, 10, 12, 14, 16}  # Monday after fall-back, CET again


def test_union_is_sorted_and_deduplicated() -> None:
    # Both lines fire on Monday the 1st; the union has it once.
    lines = translate("0 0 1 * 1")
    times = next_elapses(lines, 60, after=utc(2026, 6, 1))
    assert times == sorted(set(times))
    assert utc(2027, 2, 1) in times  # a Monday the 1st
    assert len(times) == 60


def test_after_is_exclusive_and_times_are_utc_aware() -> None:
    lines = translate("0 12 * * *", tz="Asia/Tokyo")  # 03:00 UTC
    times = next_elapses(lines, 2, after=utc(2026, 5, 1, 3))
    assert times == [utc(2026, 5, 2, 3), utc(2026, 5, 3, 3)]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    # a fraction of a second before a fire time still gets it
    just_before = utc(2026, 5, 1, 2, 59) + timedelta(seconds=59, microseconds=5)
    assert next_elapses(lines, 1, after=just_before) == [utc(2026, 5, 1, 3)]
    # any aware `after` works, not only UTC
    tokyo = timezone(timedelta(hours=9))
    assert next_elapses(lines, 1, after=datetime(2026, 5, 1, 12, tzinfo=tokyo)) == [
        utc(2026, 5, 2, 3)
    ]


def test_default_after_is_now() -> None:
    before = datetime.now(UTC)
    (first,) = next_elapses(["*-*-* *:*:00"], 1)
    assert before < first <= before + timedelta(seconds=61)


def test_never_elapsing_line_gives_nothing() -> None:
    assert next_elapses(["2020-01-01 00:00:00"], 5, after=utc(2026, 1, 1)) == []


def test_invalid_line_raises_cron_error() -> None:
    with pytest.raises(CronError, match="Failed to parse calendar specification 'bogus'"):
        next_elapses(["*-*-* 00:00:00", "bogus"], 3)


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_elapses(["*-*-* 00:00:00"], 1, after=datetime(2026, 1, 1))


def test_nothing_asked_nothing_run() -> None:
    assert next_elapses([], 5) == []
    assert next_elapses(["*-*-* 00:00:00"], 0) == []


def test_croniter_disagrees_across_dst_which_is_why_previews_ask_systemd() -> None:
    """croniter moves the missing 02:30 to 03:00 and fires the repeated 02:30 twice; systemd
    (what actually fires) skips the first and fires the second once."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    berlin = ZoneInfo("Europe/Berlin")
    lines = translate("30 2 * * *", tz="Europe/Berlin")
    spring = croniter("30 2 * * *", utc(2026, 3, 28, 12).astimezone(berlin))
    assert spring.get_next(datetime).astimezone(UTC) == utc(2026, 3, 29, 1)  # 03:00 CEST
    assert next_elapses(lines, 1, after=utc(2026, 3, 28, 12)) == [utc(2026, 3, 30, 0, 30)]
    autumn = croniter("30 2 * * *", utc(2026, 10, 24, 12).astimezone(berlin))
    fires = [autumn.get_next(datetime).astimezone(UTC) for _ in range(2)]
    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]
    assert next_elapses(lines, 2, after=utc(2026, 10, 24, 12)) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]
