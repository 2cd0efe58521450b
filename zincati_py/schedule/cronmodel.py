"""The cron model shared by the reader (:mod:`zincati_py.schedule.cron`, croniter → model) and
the writer (:mod:`zincati_py.schedule.oncalendar`, model → ``OnCalendar=`` lines)."""

from __future__ import annotations

__all__ = ["CronError", "CronFields"]


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message is user-facing."""


class CronFields:
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
