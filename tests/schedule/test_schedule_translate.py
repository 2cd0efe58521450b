"""translate(): the exact lines for the documented mappings, and what is rejected and why."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from zincati_py.schedule import CronError, translate, validate_time_zone

# The mappings HACKING/issue 2 name, as exact text (the differential test proves the meaning).
EXACT = [
    ("0 3 L * *", None, ["*-*~01 03:00:00"]),
    ("0 0 * * L5", None, ["Fri *-*~07/1 00:00:00"]),
    ("0 0 * * 5#2", None, ["Fri *-*-08..14 00:00:00"]),
    ("0 0 * * 5#5", None, ["Fri *-*-29..31 00:00:00"]),
    ("0 9-17/2 * * *", None, ["*-*-* 09..17/2:00:00"]),
    ("*/15 9-17 * * 1-5", None, ["Mon..Fri *-*-* 09..17:00..45/15:00"]),
    ("@weekly", None, ["Sun *-*-* 00:00:00"]),
    ("0 3 * * *", "Europe/Berlin", ["*-*-* 03:00:00 Europe/Berlin"]),
    ("0 0 1,15 * 1", "UTC", ["*-*-01,15 00:00:00 UTC", "Mon *-*-* 00:00:00 UTC"]),
    # OR with all seven weekdays: every day, one line
    ("0 0 1,15 * 0-6", None, ["*-*-* 00:00:00"]),
    (
        "0 0 15W * *",
        None,
        ["Mon..Fri *-*-15 00:00:00", "Fri *-*-14 00:00:00", "Mon *-*-16 00:00:00"],
    ),
    ("0 0 31W * *", None, ["Mon..Fri *-*~01 00:00:00", "Fri *-*~02,03 00:00:00"]),
    ("0 0 * * * */20", None, ["*-*-* 00:00:00..40/20"]),
    ("0 0 1 1 * 0 2027-2030", None, ["2027..2030-01-01 00:00:00"]),
]


@pytest.mark.parametrize(("expr", "tz", "lines"), EXACT)
def test_exact_lines(expr: str, tz: str | None, lines: list[str]) -> None:
    assert translate(expr, tz=tz) == lines


def test_per_month_lines_for_30w() -> None:
    lines = translate("0 0 30W * *")
    # 31-day months: the 30th is an ordinary day; February and 30-day months: the last day.
    assert "Mon..Fri *-01..07/2,08..12/2-30 00:00:00" in lines
    assert "Mon..Fri *-02..06/2,09,11~01 00:00:00" in lines


# Every value list must be a closed range, a closed step or a list; "~NN/1" (the last N days)
# is systemd's own closed form. Never "09/2".
_OPEN_REPEAT = re.compile(r"(?<![.\d~])\d+/\d+")


@pytest.mark.parametrize(
    "expr",
    ["*/7 */5 * * *", "10/20 3/4 * * *", "0 0 */3 */2 *", "0 0 * * L1", "H/15 H * * *"],
)
def test_no_open_ended_repetition(expr: str) -> None:
    for line in translate(expr, hash_id="node"):
        assert not _OPEN_REPEAT.search(line), line


def test_every_emitted_line_normalizes_in_systemd() -> None:
    exprs = [e for e, _, _ in EXACT] + ["0 0 28W * *", "0 0 1W 2 *", "0 0 * * 1#2,L3"]
    lines = [line for e in exprs for line in translate(e, tz="Europe/Berlin")]
    proc = subprocess.run(
        ["systemd-analyze", "calendar", "--", *lines],
        capture_output=True,
        text=True,
        env={"TZ": "UTC", "LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Normalized form:") == len(lines)


@pytest.mark.parametrize(
    ("expr", "hash_id", "message"),
    [
        ("@reboot", None, "'@reboot' has no calendar time"),
        ("@REBOOT", None, "'@reboot' has no calendar time"),
        ("@fortnightly", None, "unknown alias '@fortnightly'"),
        ("0 0 5 * 5#2", None, "'#' and 'L<weekday>' cannot be combined"),
        ("0 0 1-7 * L5", None, "'#' and 'L<weekday>' cannot be combined"),
        ("0 0 15W * 1-5", None, "'W' (nearest weekday) cannot be combined"),
        ("R * * * *", None, "'R' (random)"),
        ("R(0-29) * * * *", None, "'R' (random)"),
        ("H * * * *", None, "needs a hash id"),
        ("0 0 31 2 *", None, "never fires"),
        ("0 0 30,31 2 *", None, "never fires"),
        ("0 0 29 2 * 0 2027", None, "never fires"),
        ("0 0 29 2 * 0 2025-2027", None, "never fires"),
        ("garbage", None, "is not a valid cron expression"),
        ("61 * * * *", None, "is not a valid cron expression"),
        ("0 0 * * 5L", None, "is not a valid cron expression"),
        ("0 0 * * 1,2#3", None, "is not a valid cron expression"),
        ("* * * * * * * *", None, "is not a valid cron expression"),
        ("H(50-70) * * * *", "node", "is not a valid cron expression"),
    ],
)
def test_rejections(expr: str, hash_id: str | None, message: str) -> None:
    with pytest.raises(CronError) as info:
        translate(expr, hash_id=hash_id)
    assert message in str(info.value)
    # user-facing: one line, no croniter traceback
    assert "\n" not in str(info.value)


def test_feb_29_in_a_leap_year_is_fine() -> None:
    assert translate("0 0 29 2 * 0 2027,2028") == ["2027,2028-02-29 00:00:00"]
    assert translate("0 0 29,L 2 * 0 2027") == ["2027-02-29 00:00:00", "2027-02~01 00:00:00"]


def test_impossible_day_side_of_an_or_is_dropped() -> None:
    # cron's OR: the 31st never comes in February, Mondays still do.
    assert translate("0 0 31 2 1") == ["Mon *-02-* 00:00:00"]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York"])
def test_valid_time_zones(zone: str) -> None:
    assert validate_time_zone(zone) == zone


@pytest.mark.parametrize(
    "zone", ["", "Mars/Base", "../etc/passwd", "/etc/localtime", "Europe/ Berlin"]
)
def test_invalid_time_zones(zone: str) -> None:
    with pytest.raises(CronError, match="time zone"):
        validate_time_zone(zone)
    with pytest.raises(CronError, match="time zone"):
        translate("0 0 * * *", tz=zone)


def test_import_is_cheap() -> None:
    """The generator imports zincati_py.schedule on every boot: no croniter, no zoneinfo."""
    heavy = ("croniter", "zoneinfo", "dateutil", "dataclasses")
    code = (
        "import sys, zincati_py.schedule\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
