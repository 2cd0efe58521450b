"""croniter's next 50 fire times == systemd-analyze's over the translated lines.

Real systemd-analyze (252 here), real croniter; nothing mocked. UTC and a zone without DST.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zincati_py.schedule import CronError, translate
from zincati_py.schedule.preview import next_elapses

HASH_ID = "0123456789abcdef0123456789abcdef"
ITERATIONS = 50
# croniter searches at most 50 years ahead and systemd stops somewhere past 2199; compare both
# only up to here so a sparse schedule (Feb 29, 5th Friday of February) is still compared.
HORIZON = datetime(2100, 1, 1, tzinfo=UTC)


def croniter_times(expr: str, base: datetime, zone: str, count: int = ITERATIONS) -> list[datetime]:
    # @-aliases keep their crontab(5) meaning in translate(); croniter gives them that meaning
    # only without a hash id, so they are compared against croniter without one.
    hash_id = None if expr.startswith("@") else HASH_ID
    it = croniter(expr, base.astimezone(ZoneInfo(zone)), hash_id=hash_id)
    times: list[datetime] = []
    for _ in range(count):
        try:
            t = it.get_next(datetime).astimezone(UTC)
        except CroniterBadDateError:  # nothing within croniter's 50-year search
            break
        if t >= HORIZON:
            break
        times.append(t)
    return times


def systemd_times(lines: list[str], base: datetime, count: int = ITERATIONS) -> list[datetime]:
    return [t for t in next_elapses(lines, count, after=base) if t < HORIZON]


def assert_same_schedule(expr: str, base: datetime, zone: str) -> list[str]:
    lines = translate(expr, tz=zone, hash_id=HASH_ID)
    expected = croniter_times(expr, base, zone)
    got = systemd_times(lines, base)
    assert expected, f"{expr!r} never fires before {HORIZON} (bad test input)"
    assert got == expected, f"{expr!r} in {zone} from {base}: {lines}"
    return lines


ZONES = ("UTC", "Asia/Tokyo")
# Odd second so no expression fires exactly at the base; the second one puts February 2028
# (a leap year) inside fifty monthly fires.
BASES = (
    datetime(2026, 11, 22, 2, 48, 17, tzinfo=UTC),
    datetime(2027, 12, 30, 23, 59, 1, tzinfo=UTC),
)

TABLE = [
    # plain fields, lists, ranges, steps
    "* * * * *",
    "*/15 * * * *",
    "5 4 * * *",
    "0,30 8-18 * * *",
    "7-52/9 */5 * * *",
    "10/20 3 * * *",
    "59/15 * * * *",
    "0 0 1 * *",
    "0 12 1,15 * *",
    "0 0 */10 * *",
    "0 0 31 * *",
    "0 0 30 1-3 *",
    "0 0 29 2 *",
    "15 10 * jan,jul *",
    "0 0 1 */3 *",
    "0 0 1 nov-feb *",
    # day of week, including 7 = Sunday and wrapping ranges
    "0 9 * * 1-5",
    "0 9 * * mon,wed,fri",
    "0 9 * * 7",
    "0 9 * * 5-7",
    "0 9 * * sat-sun",
    "0 9 * * 0-6",
    # day-of-month OR day-of-week
    "0 0 1,15 * 1",
    "30 6 13 * fri",
    "0 0 1-31 * 1",
    "0 0 */2 * 1",
    "0 0 ? * 2",
    "0 0 10 * ?",
    "0 0 31 2,4 1",
    "0 0 1,15 * 0-6",
    "0 0 L * 1",
    # aliases: crontab(5) meanings (@weekly is Sunday)
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    # L: last day, alone and in lists
    "0 3 L * *",
    "0 3 1,L * *",
    "0 3 15-L * *",
    "0 0 L 2 *",
    # L<dow>: last weekday of the month
    "0 0 * * L5",
    "0 0 * * L0",
    "0 0 * * L1,L5",
    # nth weekday
    "0 0 * * 5#2",
    "0 0 * * 1#1",
    "0 0 * * 5#5",
    "0 0 * * mon#2,tue#2",
    "0 0 * * 1#2,1#3",
    "0 0 * * 1#2,L3",
    "0 0 * 2 5#5",
    "0 0 1-31 * 2#3",
    # W: nearest weekday, every interesting day
    "0 0 1W * *",
    "0 0 2W * *",
    "0 0 15W * *",
    "0 0 27W * *",
    "0 0 28W * *",
    "0 0 29W * *",
    "0 0 30W * *",
    "0 0 31W * *",
    "0 0 W30 2-5 *",
    "0 0 31W * 0-6",
    # H with the hash id
    "H H * * *",
    "H/15 * * * *",
    "H(0-29) H(9-17) * * 1-5",
    "H H H * *",
    # seconds (6 fields, seconds last) and years (7 fields)
    "0 0 * * * */15",
    "*/30 * * * * 10,40",
    "0 0 1 1 * 0 2027-2030",
    "0 12 * * * 0 2028",
    "0 0 29 2 * 0 2028,2032",
]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expr", TABLE)
def test_table(expr: str, zone: str) -> None:
    for base in BASES:
        assert_same_schedule(expr, base, zone)


# Hypothesis: cron expressions assembled from croniter's grammar.
def _plain_field(lo: int, hi: int) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi)
    step = st.integers(1, hi - lo + 1)
    item = st.one_of(
        value.map(str),
        st.tuples(value, value).map(lambda t: f"{min(t)}-{max(t)}"),
        st.tuples(value, value, step).map(lambda t: f"{min(t[:2])}-{max(t[:2])}/{t[2]}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(value, step).map(lambda t: f"{t[0]}/{t[1]}"),
    )
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


def _dom() -> st.SearchStrategy[str]:
    return st.one_of(
        _plain_field(1, 31),
        st.lists(st.one_of(st.integers(1, 31).map(str), st.just("L")), min_size=1, max_size=3).map(
            ",".join
        ),
        st.integers(1, 31).map(lambda d: f"{d}W"),
        st.just("?"),
    )


def _dow() -> st.SearchStrategy[str]:
    nth = st.one_of(
        st.tuples(st.integers(0, 7), st.integers(1, 5)).map(lambda t: f"{t[0]}#{t[1]}"),
        st.integers(0, 7).map(lambda d: f"L{d}"),
    )
    return st.one_of(
        _plain_field(0, 7),
        st.lists(nth, min_size=1, max_size=2).map(",".join),
        st.just("?"),
    )


@st.composite
def _cron(draw: st.DrawFn) -> str:
    fields = [
        draw(st.one_of(_plain_field(0, 59), st.just("H"), st.just("H/20"))),
        draw(st.one_of(_plain_field(0, 23), st.just("H"))),
        draw(_dom()),
        draw(_plain_field(1, 12)),
        draw(_dow()),
    ]
    if draw(st.booleans()):
        fields.append(draw(_plain_field(0, 59)))
        if draw(st.booleans()):
            fields.append(draw(_plain_field(2027, 2035)))
    return " ".join(fields)


def test_generated() -> None:
    outcomes: list[bool] = []  # translated or rejected, per example

    @settings(
        max_examples=60,
        derandomize=True,  # CI runs the same examples every time: a failure is reproducible
        database=None,  # keep a read-only checkout clean, as tests/run.sh does for pytest
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(expr=_cron(), zone=st.sampled_from(ZONES), base=st.sampled_from(BASES))
    def agree(expr: str, zone: str, base: datetime) -> None:
        try:
            translate(expr, tz=zone, hash_id=HASH_ID)
        except CronError:
            # Rejections are tested on their own; here only what translates must agree.
            outcomes.append(False)
            return
        if not croniter_times(expr, base, zone):
            # A year field can end before the base (e.g. Sundays of 2027 from 2027-12-30):
            # nothing to compare, so it counts like a rejection.
            outcomes.append(False)
            return
        outcomes.append(True)
        assert_same_schedule(expr, base, zone)

    agree()
    # The property is only worth something if most generated expressions translate.
    assert sum(outcomes) >= len(outcomes) // 2, f"only {sum(outcomes)}/{len(outcomes)} translate"


def test_hash_id_changes_the_resolution() -> None:
    a = translate("H H * * *", hash_id="node-a")
    b = translate("H H * * *", hash_id="node-b")
    assert a == translate("H H * * *", hash_id="node-a")
    assert a != b
    assert translate("H H * * *", hash_id=HASH_ID) == translate(
        "H H * * *", hash_id=HASH_ID.encode()
    )
