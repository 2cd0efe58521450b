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

This module reads (croniter → :class:`~zincati_py.schedule.cronmodel.CronFields`, zones,
:data:`MEMO`); :mod:`zincati_py.schedule.oncalendar` writes the lines. Imported by the generator
on every boot: croniter is imported lazily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from zincati_py.schedule.cronmodel import CronError, CronFields

__all__ = ["CronError", "expand_alias", "translate", "validate_time_zone"]


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
    from zincati_py.schedule import oncalendar

    zone = validate_time_zone(tz) if tz is not None else None
    return oncalendar.lines(expr, _expand(expr, hash_id), zone)


def _expand(expr: str, hash_id: str | bytes | None) -> CronFields:
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
    return CronFields(
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
