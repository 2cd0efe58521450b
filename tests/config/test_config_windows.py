"""``[[updates.periodic.window]]``: weekday/start/length windows and our cron windows.

Validated whatever the strategy; a bad window is an error when the strategy is periodic and a
warning otherwise (Zincati ignores windows unless periodic). Each row puts one good window
first, so the row's window is ``window[1]`` and periodic always has a valid window.
"""

from __future__ import annotations

from datetime import time

import pytest

F = "etc/zincati/config.d/50-test.toml"
GOOD = '[[updates.periodic.window]]\ndays = ["Sat"]\nstart_time = "22:00"\nlength_minutes = 60\n'


def _fragment(strategy: str, window: str) -> str:
    return f'[updates]\nstrategy = "{strategy}"\n' + GOOD + "[[updates.periodic.window]]\n" + window


# (id, window body, expected (days, start_time, length_minutes, cron))
VALID = [
    ("three-letter", 'days = ["mon"]\nstart_time = "01:00"\nlength_minutes = 5\n',
     ((0,), time(1, 0), 5, None)),
    ("all-spellings", 'days = ["Mon", "TUESDAY", "wed", "Thursday", "FRI", "saturday", "SUN"]\n'
     'start_time = "00:00"\nlength_minutes = 1\n',
     ((0, 1, 2, 3, 4, 5, 6), time(0, 0), 1, None)),
    ("duplicates-folded", 'days = ["Sun", "Mon", "sunday"]\nstart_time = "23:59"\n'
     "length_minutes = 10080\n", ((0, 6), time(23, 59), 10080, None)),
    ("one-digit-hour", 'days = ["Tue"]\nstart_time = "7:05"\nlength_minutes = 30\n',
     ((1,), time(7, 5), 30, None)),
    # Zincati's time_from_string parses each side as an integer: "07:5" is 07:05 there.
    ("one-digit-minute-as-zincati", 'days = ["Tue"]\nstart_time = "07:5"\nlength_minutes = 30\n',
     ((1,), time(7, 5), 30, None)),
    ("cron-window", 'cron = "0 3 * * 1-5"\nlength_minutes = 45\n', ((), None, 45, "0 3 * * 1-5")),
    ("cron-alias-window", 'cron = "@daily"\nlength_minutes = 60\n', ((), None, 60, "@daily")),
]  # fmt: skip


@pytest.mark.parametrize("strategy", ["periodic", "immediate"])
@pytest.mark.parametrize(("window", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_window(tree, strategy, window, expected) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", _fragment(strategy, window))
    result = tree.load()
    assert result.problems == ()
    first, second = result.config.updates.periodic.windows
    assert (first.days, first.start_time, first.length_minutes) == ((5,), time(22, 0), 60)
    assert (second.days, second.start_time, second.length_minutes, second.cron) == expected


# (id, window body, keys reported, relative to window[1])
INVALID = [
    ("unknown-day", 'days = ["Funday"]\nstart_time = "01:00"\nlength_minutes = 5\n', ["days"]),
    ("localised-day", 'days = ["Montag"]\nstart_time = "01:00"\nlength_minutes = 5\n', ["days"]),
    ("two-letter-day", 'days = ["Mo"]\nstart_time = "01:00"\nlength_minutes = 5\n', ["days"]),
    ("number-day", 'days = [1]\nstart_time = "01:00"\nlength_minutes = 5\n', ["days"]),
    ("no-days", 'days = []\nstart_time = "01:00"\nlength_minutes = 5\n', ["days"]),
    ("hour-24", 'days = ["Mon"]\nstart_time = "24:00"\nlength_minutes = 5\n', ["start_time"]),
    ("minute-60", 'days = ["Mon"]\nstart_time = "12:60"\nlength_minutes = 5\n', ["start_time"]),
    ("words", 'days = ["Mon"]\nstart_time = "noon"\nlength_minutes = 5\n', ["start_time"]),
    ("no-colon", 'days = ["Mon"]\nstart_time = "1230"\nlength_minutes = 5\n', ["start_time"]),
    ("seconds", 'days = ["Mon"]\nstart_time = "12:30:00"\nlength_minutes = 5\n', ["start_time"]),
    ("empty-time", 'days = ["Mon"]\nstart_time = ""\nlength_minutes = 5\n', ["start_time"]),
    ("length-0", 'days = ["Mon"]\nstart_time = "01:00"\nlength_minutes = 0\n', ["length_minutes"]),
    ("length-negative", 'days = ["Mon"]\nstart_time = "01:00"\nlength_minutes = -1\n',
     ["length_minutes"]),
    ("length-over-a-week", 'days = ["Mon"]\nstart_time = "01:00"\nlength_minutes = 10081\n',
     ["length_minutes"]),
    ("length-missing", 'days = ["Mon"]\nstart_time = "01:00"\n', ["length_minutes"]),
    ("days-missing", 'start_time = "01:00"\nlength_minutes = 5\n', [""]),
    ("start-missing", 'days = ["Mon"]\nlength_minutes = 5\n', [""]),
    ("everything-wrong-reports-each",
     'days = ["Funday"]\nstart_time = "25:00"\nlength_minutes = 0\n',
     ["length_minutes", "days", "start_time"]),
    ("cron-and-days", 'cron = "0 3 * * *"\ndays = ["Mon"]\nlength_minutes = 5\n', [""]),
    ("cron-and-start", 'cron = "0 3 * * *"\nstart_time = "01:00"\nlength_minutes = 5\n', [""]),
    ("cron-invalid", 'cron = "61 * * * *"\nlength_minutes = 5\n', ["cron"]),
    ("cron-garbage", 'cron = "every tuesday"\nlength_minutes = 5\n', ["cron"]),
    ("cron-reboot", 'cron = "@reboot"\nlength_minutes = 5\n', ["cron"]),
    ("cron-without-length", 'cron = "0 3 * * *"\n', ["length_minutes"]),
]  # fmt: skip


def _key(suffix: str) -> str:
    return "updates.periodic.window[1]" + (f".{suffix}" if suffix else "")


@pytest.mark.parametrize(
    ("strategy", "severity"), [("periodic", "error"), ("immediate", "warning"), ("", "warning")]
)
@pytest.mark.parametrize(("window", "keys"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_window(tree, strategy, severity, window, keys) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", _fragment(strategy, window))
    result = tree.load()
    assert tree.problems(result) == [(severity, F, _key(k)) for k in keys]
    assert result.ok == (severity == "warning")
    # The bad window is dropped, the good one kept.
    assert [w.days for w in result.config.updates.periodic.windows] == [(5,)]


def test_fleet_lock_strategy_also_only_warns_for_windows(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write(
        "etc",
        "50-test.toml",
        '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "http://fl/"\n'
        '[[updates.periodic.window]]\ndays = ["Funday"]\nstart_time = "01:00"\n'
        "length_minutes = 5\n",
    )
    result = tree.load()
    assert tree.problems(result) == [("warning", F, "updates.periodic.window[0].days")]
    assert result.ok


def test_only_bad_windows_with_periodic_also_says_none_is_left(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write(
        "etc",
        "50-test.toml",
        '[updates]\nstrategy = "periodic"\n'
        '[[updates.periodic.window]]\ndays = ["Mon"]\nstart_time = "01:00"\nlength_minutes = 0\n',
    )
    result = tree.load()
    assert tree.problems(result) == [
        ("error", F, "updates.periodic.window[0].length_minutes"),
        ("error", F, "updates.periodic.window"),
    ]


def test_wrong_toml_type_in_a_window_is_an_error_even_if_unused(tree) -> None:  # type: ignore[no-untyped-def]
    # Zincati fails to deserialize a mistyped window whatever the strategy; we report it as an
    # error too (the key is dropped, the window then lacks days).
    tree.write(
        "etc",
        "50-test.toml",
        '[[updates.periodic.window]]\ndays = "Mon"\nstart_time = "01:00"\nlength_minutes = 5\n',
    )
    result = tree.load()
    assert tree.problems(result) == [
        ("error", F, "updates.periodic.window[0].days"),
        ("warning", F, "updates.periodic.window[0]"),
    ]


def test_window_index_counts_within_its_file(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-a.toml", GOOD)
    tree.write("etc", "20-b.toml", GOOD + GOOD.replace("Sat", "Caturday"))
    result = tree.load()
    assert tree.problems(result) == [
        ("warning", "etc/zincati/config.d/20-b.toml", "updates.periodic.window[1].days")
    ]


def test_cron_window_uses_the_periodic_time_zone(tree) -> None:  # type: ignore[no-untyped-def]
    # A cron window is translated in the periodic zone; a zone that does not resolve is
    # reported once, on the zone, and the cron itself stays valid.
    tree.write(
        "etc",
        "50-test.toml",
        '[updates]\nstrategy = "periodic"\n[updates.periodic]\ntime_zone = "Europe/Berlin"\n'
        '[[updates.periodic.window]]\ncron = "30 2 * * 0"\nlength_minutes = 60\n',
    )
    result = tree.load()
    assert result.problems == ()
    (window,) = result.config.updates.periodic.windows
    assert window.as_dict() == {"length_minutes": 60, "cron": "30 2 * * 0"}


def test_cron_window_with_unresolvable_zone_reports_only_the_zone(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write(
        "etc",
        "50-test.toml",
        '[updates]\nstrategy = "periodic"\n[updates.periodic]\ntime_zone = "Mars/Olympus_Mons"\n'
        '[[updates.periodic.window]]\ncron = "30 2 * * 0"\nlength_minutes = 60\n',
    )
    result = tree.load()
    assert tree.problems(result) == [("error", F, "updates.periodic.time_zone")]
    assert len(result.config.updates.periodic.windows) == 1
