"""The writer half of the cron translation: croniter's expanded model (:class:`CronFields`) as
systemd ``OnCalendar=`` lines whose union fires exactly when the expression does.

Split from :mod:`zincati_py.schedule.cron` (which reads expressions with croniter, validates
zones and remembers translations): this module knows systemd's calendar syntax only. How each
cron feature maps (``L``, ``W``, ``#``, day-of-month OR day-of-week, closed ranges) is in
:mod:`zincati_py.schedule.cron`'s docstring. Pure: the standard library and the model only.
"""

from __future__ import annotations

from collections.abc import Sequence

from zincati_py.schedule.cronmodel import CronError, CronFields

__all__ = ["lines"]


def lines(expr: str, fields: CronFields, zone: str | None) -> list[str]:
    """The calendar lines of ``fields`` (``expr`` only names the expression in errors); raises
    CronError for combinations no union of lines reproduces, or an expression that never fires."""
    time_part = _time_part(fields)
    years = _compress(fields.years, 4)
    return [_render(part, years, time_part, zone) for part in _merge(_date_parts(expr, fields))]


# systemd weekday names indexed by cron's numbering (0 = Sunday).
_DOW_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_WEEK_ORDER = (1, 2, 3, 4, 5, 6, 0)  # systemd ranges run Mon..Sun
_ALL_DOW = frozenset(range(7))
_MON_FRI = frozenset(range(1, 6))
_FRI = frozenset({5})
_MON = frozenset({1})
_ALL_MONTHS = frozenset(range(1, 13))
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class _Part:
    """One calendar line's date: weekdays x months x days (a product, so lines can merge).

    ``dows``/``months`` None mean unrestricted; ``days`` None means every day; ``from_end``
    counts days from the month's end (systemd's ``~``: 1 is the last day). A plain class, not
    a dataclass: the generator imports this module on every boot and dataclasses costs ~7 ms.
    """

    __slots__ = ("days", "dows", "from_end", "months")

    def __init__(
        self,
        dows: frozenset[int] | None,
        months: frozenset[int] | None,
        days: frozenset[int] | None,
        from_end: bool = False,
    ) -> None:
        self.dows = dows
        self.months = months
        self.days = days
        self.from_end = from_end

    def _key(self) -> tuple[object, ...]:
        return (self.dows, self.months, self.days, self.from_end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Part) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _date_parts(expr: str, f: CronFields) -> list[_Part]:
    dom_ints = frozenset(d for d in f.dom or () if isinstance(d, int))
    dom_all = f.dom is None or dom_ints >= frozenset(range(1, 32))
    dow_all = f.dow is None or f.dow == _ALL_DOW
    months = f.months
    if f.nearest_weekday:
        if not dow_all:
            raise CronError(
                f"{expr!r}: 'W' (nearest weekday) cannot be combined with a restricted "
                "day-of-week field"
            )
        (day,) = f.nearest_weekday
        return _nearest_weekday_parts(day, months)
    if f.nth:
        if not dom_all:
            raise CronError(
                f"{expr!r}: '#' and 'L<weekday>' cannot be combined with a restricted "
                "day-of-month field"
            )
        return _nth_parts(f.nth, months)
    if f.dom is not None and f.dow is not None:
        # cron's OR: either field matching fires. An impossible day side adds nothing.
        parts = _dom_parts(f.dom, months)
        # all seven weekdays is every day: let it absorb the day-of-month line when merging
        return [*parts, _Part(None if dow_all else f.dow, months, None)]
    if f.dom is not None:
        parts = _dom_parts(f.dom, months)
        if not parts or (
            f.years is not None and "l" not in f.dom and not _day_exists(f.dom, months, f.years)
        ):
            raise CronError(f"{expr!r} never fires: no selected month has that day")
        return parts
    return [_Part(f.dow, months, None)]


def _day_exists(
    dom: Sequence[int | str], months: frozenset[int] | None, years: frozenset[int]
) -> bool:
    """Whether some listed year has one of these days in a listed month (Feb 29: leap years)."""
    leap = any(y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) for y in years)
    longest = max((29 if leap else 28) if m == 2 else _MAX_DAYS[m] for m in months or _ALL_MONTHS)
    return min(d for d in dom if isinstance(d, int)) <= longest


def _dom_parts(dom: Sequence[int | str], months: frozenset[int] | None) -> list[_Part]:
    longest = max(_MAX_DAYS[m] for m in months or _ALL_MONTHS)
    days = frozenset(d for d in dom if isinstance(d, int) and d <= longest)
    parts = []
    if days:
        parts.append(_Part(None, months, days))
    if "l" in dom:
        parts.append(_Part(None, months, frozenset({1}), from_end=True))
    return parts


def _nth_parts(nth: dict[int, frozenset[int | str]], months: frozenset[int] | None) -> list[_Part]:
    # The nth weekday falls on days 7n-6..7n; a 5th one only where the month is long enough
    # (systemd rejects days past 31 outright).
    longest = max(_MAX_DAYS[m] for m in months or _ALL_MONTHS)
    parts = []
    for dow, which in nth.items():
        days = frozenset(
            d
            for n in which
            if isinstance(n, int)
            for d in range(7 * n - 6, min(7 * n, longest) + 1)
        )
        if days:
            parts.append(_Part(frozenset({dow}), months, days))
        if "l" in which:
            parts.append(_Part(frozenset({dow}), months, frozenset(range(1, 8)), from_end=True))
    return parts


def _nearest_weekday_parts(day: int, months: frozenset[int] | None) -> list[_Part]:
    """croniter's W: the day itself if Mon-Fri; a Saturday moves to Friday (to Monday the 3rd
    on the 1st); a Sunday to Monday (to Friday when it is the month's last day). Days past the
    month's end are clamped to the last day, so 28W..31W depend on each month's length."""

    def ordinary(d: int, ms: frozenset[int] | None) -> list[_Part]:
        if d == 1:
            return [_Part(_MON_FRI, ms, frozenset({1})), _Part(_MON, ms, frozenset({2, 3}))]
        return [
            _Part(_MON_FRI, ms, frozenset({d})),
            _Part(_FRI, ms, frozenset({d - 1})),
            _Part(_MON, ms, frozenset({d + 1})),
        ]

    def last_day(ms: frozenset[int] | None) -> list[_Part]:
        return [
            _Part(_MON_FRI, ms, frozenset({1}), from_end=True),
            _Part(_FRI, ms, frozenset({2, 3}), from_end=True),
        ]

    if day <= 27:
        return ordinary(day, months)
    parts: list[_Part] = []
    for month in sorted(months or _ALL_MONTHS):
        ms = frozenset({month})
        if month == 2:
            if day >= 29:
                parts += last_day(ms)
            else:
                # 28W: an ordinary day in leap years; in other years the 28th is the last
                # day, and a Sunday there moves back to Friday the 26th (~03).
                parts += [*ordinary(28, ms), _Part(_FRI, ms, frozenset({3}), from_end=True)]
        elif day < _MAX_DAYS[month]:
            parts += ordinary(day, ms)
        else:
            parts += last_day(ms)
    return parts


def _merge(parts: list[_Part]) -> list[_Part]:
    """Merge products that differ in one coordinate (A x B x C u A x B x C' = A x B x (C u C'))."""
    result = list(dict.fromkeys(parts))
    merged = True
    while merged:
        merged = False
        for i in range(len(result)):
            for j in range(i + 1, len(result)):
                combined = _merge_two(result[i], result[j])
                if combined is not None:
                    result[i] = combined
                    del result[j]
                    merged = True
                    break
            if merged:
                break
    return result


def _merge_two(a: _Part, b: _Part) -> _Part | None:
    if a.from_end != b.from_end:
        return None
    same_dows, same_months, same_days = a.dows == b.dows, a.months == b.months, a.days == b.days
    if same_dows and same_months:
        return _Part(a.dows, a.months, _union(a.days, b.days), a.from_end)
    if same_dows and same_days:
        return _Part(a.dows, _union(a.months, b.months), a.days, a.from_end)
    if same_months and same_days:
        return _Part(_union(a.dows, b.dows), a.months, a.days, a.from_end)
    return None


def _union(a: frozenset[int] | None, b: frozenset[int] | None) -> frozenset[int] | None:
    return None if a is None or b is None else a | b


def _time_part(f: CronFields) -> str:
    return ":".join(
        _compress(values, 2) if values is not None else "*"
        for values in (f.hours, f.minutes, f.seconds)
    )


def _render(part: _Part, years: str, time_part: str, zone: str | None) -> str:
    months = _compress(part.months, 2) if part.months not in (None, _ALL_MONTHS) else "*"
    if part.days is None:
        date = f"{years}-{months}-*"
    elif part.from_end:
        date = f"{years}-{months}~{_compress(part.days, 2, from_end=True)}"
    else:
        date = f"{years}-{months}-{_compress(part.days, 2)}"
    words = [date, time_part]
    if part.dows is not None and part.dows != _ALL_DOW:
        words.insert(0, _weekdays(part.dows))
    if zone is not None:
        words.append(zone)
    return " ".join(words)


def _weekdays(dows: frozenset[int]) -> str:
    order = [i for i, d in enumerate(_WEEK_ORDER) if d in dows]
    runs: list[list[int]] = []
    for i in order:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    words = []
    for run in runs:
        names = [_DOW_NAMES[_WEEK_ORDER[i]] for i in run]
        words.append(f"{names[0]}..{names[-1]}" if len(run) >= 3 else ",".join(names))
    return ",".join(words)


def _compress(values: frozenset[int] | None, width: int, *, from_end: bool = False) -> str:
    """Closed ranges and steps where exact (``00..45/15``), else a comma list.

    With ``from_end`` the values count back from the month's end (systemd's ``~``), where
    ranges must be written as ``~07/1`` (start and a step running to the last day).
    """
    if values is None:
        return "*"
    ordered = sorted(values)
    if from_end:
        if ordered == list(range(1, ordered[-1] + 1)) and len(ordered) > 1:
            return f"{ordered[-1]:0{width}d}/1"
        return ",".join(f"{v:0{width}d}" for v in ordered)
    tokens = []
    i = 0
    while i < len(ordered):
        j = i + 1
        if j < len(ordered):
            step = ordered[j] - ordered[i]
            while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] == step:
                j += 1
            if j - i + 1 >= 3:
                first, last = ordered[i], ordered[j]
                suffix = "" if step == 1 else f"/{step}"
                tokens.append(f"{first:0{width}d}..{last:0{width}d}{suffix}")
                i = j + 1
                continue
        tokens.append(f"{ordered[i]:0{width}d}")
        i += 1
    return ",".join(tokens)
