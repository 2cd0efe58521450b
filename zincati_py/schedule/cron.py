"""Translate cron expressions (as croniter reads them) into systemd ``OnCalendar=`` values.

croniter parses the expression (its extensions included: ``L``, ``W``, ``#``, ``L<dow>``,
``H`` with a hash id, ``?``, 6 fields with seconds last, 7 fields with a year) and we translate
its normalized, expanded model. The result is a list of calendar values whose union fires
exactly when croniter would:

- day-of-month and day-of-week both restricted: cron fires when EITHER matches, so each gets
  its own line (a single systemd line would require both).
- every repetition is a closed range (``09..17/2``, never ``09/2``): systemd 252 can fail with
  "Infinite loop in calendar calculation" on open-ended repetition across DST changes.
- ``L`` is ``*-*~01``; ``L5`` (last Friday) is ``Fri *-*~07/1``; ``5#2`` is ``Fri *-*-08..14``;
  ``15W`` needs three lines (the day itself on a weekday, the Friday before a Saturday, the
  Monday after a Sunday); 28W..30W get per-month lines because month lengths differ (croniter
  clamps the day to the month's end), and 31W is the last weekday of every month.
- no systemd shorthands are emitted: cron's ``@weekly`` is Sunday, systemd's ``weekly`` Monday.
- ``@hourly`` and friends keep their crontab(5) meaning even when a hash id is passed
  (croniter would then hash them into ``H H * * * H``): callers pass the node id for every
  schedule, and someone who writes ``@daily`` means midnight. Write ``H H * * *`` to spread.

Rejected with :class:`CronError`: ``@reboot`` (no calendar time), ``R`` (random, would change on
every translation: use ``H``), ``#``/``L<dow>``/``W`` together with a restricted other day
field (croniter's semantics there are an intersection on one side only, which no union of
calendar lines reproduces honestly), expressions that never fire, and anything croniter rejects
(e.g. ``5L``: croniter spells the last Friday ``L5``).

Time zones: a zone name is appended to every line (``*-*-* 03:00:00 Europe/Berlin``). In zones
with DST, systemd skips wall-clock times that do not exist (spring forward) and fires a repeated
time once (fall back). croniter's own DST handling differs in places, but systemd is what fires,
so previews come from systemd (:mod:`zincati_py.schedule.preview`), never from croniter.

This module is imported by the generator on every boot: croniter is imported lazily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["CronError", "expand_alias", "translate", "validate_time_zone"]


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message is user-facing."""


# crontab(5) meanings, deliberately not croniter's hashed ones (see the module docstring).
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def expand_alias(expr: str) -> str:
    """``@daily`` and friends as their crontab(5) five-field form; other text stripped as is."""
    text = expr.strip()
    return _ALIASES.get(text.lower(), text)


_RANDOM_RE = re.compile(r"r(\(\d+-\d+\))?(/\d+)?", re.ASCII)

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


def validate_time_zone(name: str) -> str:
    """Return the canonical zone name, or raise CronError. Accepts "UTC" and IANA names."""
    if name == "UTC":
        return name
    if not name or name != name.strip() or any(ch.isspace() for ch in name):
        raise CronError(f"time zone {name!r} is not an IANA time zone name")
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name).key
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            f"time zone {name!r} is not known (use 'UTC' or an IANA name like 'Europe/Berlin')"
        ) from None


# Translations made by this process: (expr, tz, hash_id) -> (True, lines) or (False, the
# CronError message). Validation and rendering translate each expression once between them,
# and the generator keeps the table across boots (zincati_py.generator_cache: invalidated with
# the code, croniter and the time zone database), so an unchanged expression needs no croniter.
MEMO: dict[tuple[str, str | None, str | bytes | None], tuple[bool, tuple[str, ...] | str]] = {}


def translate(expr: str, *, tz: str | None = None, hash_id: str | bytes | None = None) -> list[str]:
    """:func:`translate_uncached`, remembered in :data:`MEMO`."""
    key = (expr, tz, hash_id)
    found = MEMO.get(key)
    if found is None:
        try:
            found = (True, tuple(translate_uncached(expr, tz=tz, hash_id=hash_id)))
        except CronError as exc:
            found = (False, str(exc))
        MEMO[key] = found
    ok, value = found
    if not ok:
        raise CronError(value)
    return list(value)


def translate_uncached(
    expr: str, *, tz: str | None = None, hash_id: str | bytes | None = None
) -> list[str]:
    """OnCalendar values whose union fires exactly when the cron expression fires.

    ``tz`` (``"UTC"`` or an IANA name) is appended to every line; None means the host's local
    time. ``hash_id`` resolves ``H`` fields (pass the node id so each host gets a stable spread).
    """
    zone = validate_time_zone(tz) if tz is not None else None
    fields = _expand(expr, hash_id)
    time_part = _time_part(fields)
    years = _compress(fields.years, 4)
    return [_render(part, years, time_part, zone) for part in _merge(_date_parts(expr, fields))]


class _Fields:
    """croniter's expanded model; None means the field is ``*``."""

    __slots__ = (
        "dom",
        "dow",
        "hours",
        "minutes",
        "months",
        "nearest_weekday",
        "nth",
        "seconds",
        "years",
    )

    def __init__(
        self,
        *,
        seconds: frozenset[int] | None,
        minutes: frozenset[int] | None,
        hours: frozenset[int] | None,
        dom: tuple[int | str, ...] | None,  # ints and "l"
        months: frozenset[int] | None,
        dow: frozenset[int] | None,
        years: frozenset[int] | None,
        nth: dict[int, frozenset[int | str]],  # weekday -> {1..5, "l"}
        nearest_weekday: frozenset[int],
    ) -> None:
        self.seconds = seconds
        self.minutes = minutes
        self.hours = hours
        self.dom = dom
        self.months = months
        self.dow = dow
        self.years = years
        self.nth = nth
        self.nearest_weekday = nearest_weekday


def _expand(expr: str, hash_id: str | bytes | None) -> _Fields:
    text = expr.strip()
    lowered = text.lower()
    if lowered == "@reboot":
        raise CronError(
            "'@reboot' has no calendar time; use a systemd unit ordered after boot instead"
        )
    if lowered.startswith("@"):
        if lowered not in _ALIASES:
            known = ", ".join(sorted(_ALIASES))
            raise CronError(f"unknown alias {text!r} (known: {known})")
        text = _ALIASES[lowered]
    for token in re.split(r"[\s,]+", lowered):
        if _RANDOM_RE.fullmatch(token):
            raise CronError(
                f"'R' (random) in {expr!r} would change on every translation; "
                "use 'H' (stable per host) instead"
            )
    if hash_id is None and re.search(r"(^|[\s,])h([\s,(/]|$)", lowered):
        raise CronError(f"'H' in {expr!r} needs a hash id (the node id) to resolve")

    from croniter import CroniterError, croniter

    try:
        parsed = croniter(text, hash_id=hash_id)
    except (CroniterError, ValueError, TypeError) as exc:
        raise CronError(_croniter_message(expr, exc)) from None
    expanded = parsed.expanded
    nearest: Iterable[int] = getattr(parsed, "nearest_weekday", ()) or ()

    def ints(values: Sequence[int | str]) -> frozenset[int] | None:
        if list(values) == ["*"]:
            return None
        return frozenset(int(v) for v in values)

    nth: dict[int, frozenset[int | str]] = {
        int(k): frozenset(v) for k, v in parsed.nth_weekday_of_month.items()
    }
    dom = expanded[2]
    return _Fields(
        seconds=ints(expanded[5]) if len(expanded) > 5 else frozenset({0}),
        minutes=ints(expanded[0]),
        hours=ints(expanded[1]),
        dom=None if list(dom) == ["*"] else tuple(dom),
        months=ints(expanded[3]),
        dow=ints(expanded[4]),
        years=ints(expanded[6]) if len(expanded) > 6 else None,
        nth=nth,
        nearest_weekday=frozenset(int(d) for d in nearest),
    )


def _croniter_message(expr: str, exc: Exception) -> str:
    detail = str(exc).strip().splitlines()
    # croniter sometimes wraps a whole traceback; its last line is the useful part.
    reason = detail[-1] if detail else type(exc).__name__
    return f"{expr!r} is not a valid cron expression: {reason}"


def _date_parts(expr: str, f: _Fields) -> list[_Part]:
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


def _time_part(f: _Fields) -> str:
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
